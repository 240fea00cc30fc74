"""`zmq://HOST:PORT`: states on a ZeroMQ PUB socket, advertised over zeroconf. Protocol: docs/protocol.md.

Port 0 picks a free port. The default host is 127.0.0.1; `zmq://0.0.0.0:5556` publishes to the LAN. The runtime
never waits for a subscriber: SNDHWM is small, LINGER 0, and the per-message counter `n` lets subscribers count
what they missed. Nothing executable on the wire: a msgpack header plus raw array frames sent without copies.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from typing import TYPE_CHECKING

import msgpack
import numpy as np
import zmq

from ..sources.base import Query, SourceError, SourceURI
from . import Publisher, register_publisher

if TYPE_CHECKING:
    from ..runtime import Runtime, State

PROTOCOL = 1
SERVICE = "_ami-edge._tcp.local."
STATE_TOPIC, META_TOPIC = b"ami/state/", b"ami/meta/"
log = logging.getLogger("ami_edge.publish")


def _array(name: str, a: np.ndarray) -> tuple[dict, np.ndarray]:
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return {"name": name, "dtype": a.dtype.str, "shape": list(a.shape)}, a


@register_publisher("zmq")
class ZmqPublisher(Publisher):
    def __init__(self, uri: SourceURI, runtime: Runtime, context: zmq.Context | None = None):
        q = Query(uri)
        self.hwm = q.int("hwm", 4, 1)
        advertise = q.bool("zeroconf", True)
        q.finish()
        host, _, port = uri.name.rpartition(":")
        host = host or "127.0.0.1"
        try:
            port_number = int(port)
        except ValueError:
            raise SourceError(f"{uri.raw}: expected zmq://HOST:PORT (PORT 0 picks a free one)") from None
        self.runtime = runtime
        self.id = secrets.token_hex(4)
        self.ctx = context or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.SNDHWM, self.hwm)
        self.sock.setsockopt(zmq.LINGER, 0)
        try:
            if port_number == 0:
                self.port = self.sock.bind_to_random_port(f"tcp://{host}")
            else:
                self.sock.bind(f"tcp://{host}:{port_number}")
                self.port = port_number
        except zmq.ZMQError as exc:
            self.sock.close()
            raise SourceError(f"{uri.raw}: cannot bind tcp://{host}:{port}: {exc}") from exc
        self.host = host
        self.endpoint = f"tcp://{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{self.port}"
        self.uri = f"zmq://{host}:{self.port}"
        self.n = 0
        self._last_meta = 0.0
        if host.startswith("127."):
            log.info("publishing on %s (localhost only; use zmq://0.0.0.0:%d or an interface address for the "
                     "LAN)", self.endpoint, self.port)
        self.zeroconf = self.service = None
        if advertise:
            self._advertise()

    def _advertise(self) -> None:
        from zeroconf import ServiceInfo, Zeroconf

        m = self.runtime.bundle.manifest
        if self.host in ("0.0.0.0", "*"):
            interfaces, addresses = None, _local_addresses()
        else:
            interfaces, addresses = [self.host], [self.host]
        self.zeroconf = Zeroconf(interfaces=interfaces) if interfaces else Zeroconf()
        name = f"{m.name}-{socket.gethostname()[:20]}-{self.id}"[:60]
        txt = {"txtvers": "1", "proto": str(PROTOCOL), "model": m.name[:40], "dim": str(m.latent.dim), "id": self.id}
        self.service = ServiceInfo(SERVICE, f"{name}.{SERVICE}", port=self.port, properties=txt,
                                   addresses=[socket.inet_aton(a) for a in addresses])
        self.zeroconf.register_service(self.service, allow_name_change=True)

    def meta(self) -> dict:
        m = self.runtime.bundle.manifest
        dim = m.latent.dim
        arrays = [{"name": "latent", "dtype": "<f4", "shape": [dim]}]
        if self.runtime.predictor is not None:
            arrays.append({"name": "prediction", "dtype": "<f4", "shape": [dim]})
        return {"v": PROTOCOL, "id": self.id, "model": m.name, "family": m.family, "latent_dim": dim,
                "frames": m.input.frames, "height": m.input.height, "width": m.input.width,
                "state_topic": STATE_TOPIC.decode(), "arrays": arrays}

    def publish(self, state: State) -> None:
        now = time.monotonic()
        if now - self._last_meta >= 1.0:  # the slow-joiner answer: layout repeated every second
            self.sock.send_multipart([META_TOPIC, msgpack.packb(self.meta())])
            self._last_meta = now
        specs, arrays = [], []
        for name, value in (("latent", state.latent), ("prediction", state.prediction), ("action", state.action)):
            if value is not None:
                spec, arr = _array(name, value)
                specs.append(spec)
                arrays.append(arr)
        self.n += 1
        header = {"v": PROTOCOL, "n": self.n, "seq": state.seq, "t_capture_ns": int(state.t_capture * 1e9),
                  "t_publish_ns": time.monotonic_ns(), "wall_ns": time.time_ns(),
                  "model": self.runtime.bundle.manifest.name, "surprise": state.surprise,
                  "raw_surprise": state.raw_surprise, "event": bool(state.event), "arrays": specs}
        # PUB never blocks: past SNDHWM a slow subscriber simply misses messages (it sees the jump in n)
        self.sock.send_multipart([STATE_TOPIC, msgpack.packb(header), *arrays], copy=False)

    def close(self) -> None:
        if self.zeroconf is not None:
            try:
                self.zeroconf.unregister_service(self.service)
            finally:
                self.zeroconf.close()
                self.zeroconf = None
        self.sock.close(linger=0)

    def describe(self) -> str:
        return f"{self.endpoint} (zeroconf {'on' if self.zeroconf else 'off'}, id {self.id})"


def _local_addresses() -> list[str]:
    addresses = {"127.0.0.1"}
    try:
        addresses.add(socket.gethostbyname(socket.gethostname()))
    except OSError:
        pass
    return sorted(addresses)
