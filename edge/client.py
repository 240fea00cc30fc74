"""Subscribe to a runtime on the network: `discover()` finds publishers over zeroconf, `Subscriber` yields
messages whose arrays are numpy views of the received frames. Protocol: docs/protocol.md.

    from ami_edge.client import discover, Subscriber
    for msg in Subscriber(discover(timeout=3)[0]):
        print(msg.seq, msg.surprise, msg.arrays["latent"][:4])
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack
import numpy as np
import zmq

from .errors import AmiEdgeError
from .publishers.zmq import META_TOPIC, SERVICE, STATE_TOPIC

__all__ = ["META_TOPIC", "STATE_TOPIC", "DiscoveryError", "Message", "Service", "Subscriber", "discover"]


class DiscoveryError(AmiEdgeError, LookupError):
    """No publisher was found."""


@dataclass(frozen=True)
class Service:
    name: str
    address: str
    port: int
    txt: dict[str, str]

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.address}:{self.port}"


def discover(timeout: float = 3.0, name: str | None = None, interfaces: list[str] | None = None,
             settle: float = 0.5) -> list[Service]:
    """Publishers advertising `_ami-edge._tcp.local.` (optionally whose name contains `name`).

    Returns `settle` seconds after the first match (to collect others answering at the same time), or after
    `timeout` seconds with whatever was found (possibly nothing)."""
    from zeroconf import ServiceBrowser, ServiceListener, Zeroconf

    zc = Zeroconf(interfaces=interfaces) if interfaces else Zeroconf()
    found: dict[str, Service] = {}
    done = threading.Event()

    class Listener(ServiceListener):
        def add_service(self, zc_: Zeroconf, type_: str, service_name: str) -> None:
            info = zc_.get_service_info(type_, service_name, timeout=2000)
            if info is None or not info.parsed_addresses():
                return
            txt = {k.decode(): (v or b"").decode() for k, v in info.properties.items()}
            if name is None or name in service_name:
                found[service_name] = Service(service_name, info.parsed_addresses()[0], info.port, txt)
                done.set()

        def update_service(self, *args) -> None:
            pass

        def remove_service(self, *args) -> None:
            pass

    browser = ServiceBrowser(zc, SERVICE, Listener())
    try:
        if done.wait(timeout):
            threading.Event().wait(settle)  # siblings answering the same query
    finally:
        browser.cancel()
        zc.close()
    return sorted(found.values(), key=lambda s: s.name)


@dataclass
class Message:
    topic: str
    header: dict
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def __getattr__(self, key: str):
        try:
            return self.header[key]
        except KeyError:
            raise AttributeError(key) from None


class Subscriber:
    """Iterate messages from one publisher (a Service, a `tcp://` endpoint, or a service name to discover).

    `latest_only=True` drains the socket and yields only the newest state (no CONFLATE: it breaks multipart).
    `gaps` counts state messages missed, from the publisher's counter `n`.
    """

    def __init__(self, target: Service | str, topics: tuple[bytes, ...] = (STATE_TOPIC,), latest_only: bool = False,
                 timeout: float = 10.0, context: zmq.Context | None = None):
        if isinstance(target, str) and not target.startswith("tcp://"):
            services = discover(timeout, name=target)
            if not services:
                raise DiscoveryError(f"no ami-edge publisher named like '{target}' found in {timeout:g} s; "
                                     "pass --connect tcp://HOST:PORT where multicast is blocked")
            target = services[0]
        self.endpoint = target.endpoint if isinstance(target, Service) else target
        self.latest_only, self.timeout_ms = latest_only, int(timeout * 1000)
        self.sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)
        for topic in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic)
        self.gaps = 0
        self.received = 0
        self._last_n: int | None = None

    def _track(self, topic: bytes, header: dict) -> None:
        """Count state messages lost on the way (jumps in the publisher's counter n)."""
        n = header.get("n")
        if topic == STATE_TOPIC and isinstance(n, int):
            if self._last_n is not None and n > self._last_n + 1:
                self.gaps += n - self._last_n - 1
            self._last_n = n

    def _decode(self, frames: list[zmq.Frame]) -> Message:
        topic = frames[0].bytes
        header = msgpack.unpackb(frames[1].bytes)
        self._track(topic, header)
        arrays = {}
        if topic == STATE_TOPIC:  # numpy views of the received frames: no copy
            for spec, frame in zip(header.get("arrays", []), frames[2:]):
                arrays[spec["name"]] = np.frombuffer(frame.buffer, dtype=spec["dtype"]).reshape(spec["shape"])
        self.received += 1
        return Message(topic.decode(), header, arrays)

    def recv(self) -> Message | None:
        """The next message (or, latest-only, the newest queued one); None after `timeout` with nothing."""
        if not self.sock.poll(self.timeout_ms):
            return None
        frames = self.sock.recv_multipart(copy=False)
        while self.latest_only and self.sock.poll(0):
            # skipped on purpose, not lost: keep the counter continuous so `gaps` stays about the transport
            self._track(frames[0].bytes, msgpack.unpackb(frames[1].bytes))
            frames = self.sock.recv_multipart(copy=False)
        return self._decode(frames)

    def __iter__(self) -> Iterator[Message]:
        while True:
            msg = self.recv()
            if msg is None:
                return
            yield msg

    def close(self) -> None:
        self.sock.close(linger=0)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
