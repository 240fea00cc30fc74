"""`serial:///dev/ttyACM0?baud=921600&latent_dim=16&dtype=f16`: LATENT and SURPRISE to a microcontroller.

The latent is projected to `latent_dim` with a fixed seeded Gaussian projection (the same on every run, so the
MCU sees a stable feature space) and quantised (`dtype` f32, f16 or i8). ACTION and PROPRIO frames from the MCU
are fed to the runtime's action input. The port may also be `usb:VID:PID[:SERIAL]` (`serial://usb:2e8a:000a`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..firmware_bridge.link import SerialLink
from ..firmware_bridge.messages import DTYPE_F16, DTYPE_F32, DTYPE_I8, Action, Latent, Proprio, Surprise
from ..sources.base import Query, SourceURI
from . import Publisher, register_publisher

if TYPE_CHECKING:
    from ..runtime import Runtime, State

DTYPES = {"f32": DTYPE_F32, "f16": DTYPE_F16, "i8": DTYPE_I8}


@register_publisher("serial")
class SerialPublisher(Publisher):
    def __init__(self, uri: SourceURI, runtime: Runtime):
        q = Query(uri)
        baud = q.int("baud", 921600, 1)
        self.latent_dim = q.int("latent_dim", 16, 1, 120)
        self.dtype = DTYPES[q.choice("dtype", "f16", tuple(DTYPES))]
        heartbeat = q.float("peer_heartbeat", 0.1)
        q.finish()
        self.uri = uri.raw
        port = uri.name + uri.path  # serial:///dev/ttyACM0 -> /dev/ttyACM0; serial://usb:2e8a:000a -> usb:2e8a:000a
        dim = runtime.bundle.manifest.latent.dim
        rng = np.random.default_rng(0xA111)  # fixed: the MCU's feature space must not change between runs
        self.projection = (rng.standard_normal((dim, min(self.latent_dim, dim))) / np.sqrt(dim)).astype(np.float32)
        self.runtime = runtime
        self.link = SerialLink(port, baud=baud, peer_heartbeat_s=heartbeat, on_message=self._on_message).start()

    def _on_message(self, msg, frame) -> None:
        if isinstance(msg, Action):
            self.runtime.push_action(msg.values)
        elif isinstance(msg, Proprio):
            self.runtime.push_state(msg.values)

    def publish(self, state: State) -> None:
        """Never blocks the runtime: while the link is down the link drops (and counts) these frames."""
        step = state.seq & 0xFFFFFFFF
        self.link.send(Latent.quantize(step, state.latent @ self.projection, self.dtype))
        if state.surprise is not None:
            self.link.send(Surprise(step, float(state.surprise), float(self.runtime.baseline.threshold),
                                    int(state.event)))

    def close(self) -> None:
        self.link.close()

    def describe(self) -> str:
        return f"serial {self.link.port_spec} (latent_dim {self.latent_dim})"
