"""`serve --control zmq://127.0.0.1:PORT`: actions and commands coming in. Off by default.

A REP socket in its own thread. Requests are msgpack maps of at most 4 KiB:
    {"v": 1, "type": "action", "values": [floats]}        -> the runtime's action input (like a serial ACTION)
    {"v": 1, "type": "state", "values": [floats]}         -> proprioceptive state
    {"v": 1, "type": "ping"}                              -> {"ok": true, "model": ..., "states": ...}
plus "token" when the socket is bound beyond localhost. Replies: {"ok": true, ...} or {"ok": false, "error": ...}.
Unknown fields, wrong types and oversize requests are refused with an error reply, never acted on.
"""

from __future__ import annotations

import hmac
import math
import threading
from typing import TYPE_CHECKING

import msgpack
import zmq

from .errors import ConfigError
from .http import is_loopback

if TYPE_CHECKING:
    from .runtime import Runtime

MAX_REQUEST = 4096
MAX_VALUES = 64
FIELDS = {"v": int, "type": str, "values": list, "token": str}
TYPES = ("action", "state", "ping")


def validate(request: object, token: str | None) -> dict:
    """The request if it is well formed and authorised, else ValueError with the reason (sent back)."""
    if not isinstance(request, dict):
        raise ValueError("request must be a msgpack map")
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; valid: {sorted(FIELDS)}")
    for key, kind in FIELDS.items():
        if key in request and (not isinstance(request[key], kind) or isinstance(request[key], bool)):
            raise ValueError(f"field '{key}' must be {kind.__name__}")
    if request.get("v") != 1:
        raise ValueError("field 'v' must be 1 (protocol version)")
    if request.get("type") not in TYPES:
        raise ValueError(f"field 'type' must be one of {', '.join(TYPES)}")
    if token is not None and not hmac.compare_digest(str(request.get("token", "")), token):
        raise ValueError("missing or wrong token")
    if request["type"] in ("action", "state"):
        values = request.get("values")
        if not values or len(values) > MAX_VALUES or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in values):
            raise ValueError(f"field 'values' must hold 1 to {MAX_VALUES} finite numbers")
    return request


class ControlServer:
    def __init__(self, uri: str, runtime: Runtime, token: str | None = None, context: zmq.Context | None = None):
        if not uri.startswith("zmq://"):
            raise ConfigError(f"--control {uri!r}: expected zmq://HOST:PORT")
        host, _, port = uri[len("zmq://"):].rpartition(":")
        host = host or "127.0.0.1"
        if not is_loopback(host) and not token:
            raise ConfigError(f"--control {uri} listens beyond localhost: pass --control-token")
        self.runtime, self.token = runtime, token
        self.states_seen = 0
        self.sock = (context or zmq.Context.instance()).socket(zmq.REP)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST)  # larger messages drop the connection, unread
        try:
            self.port = self.sock.bind_to_random_port(f"tcp://{host}") if port == "0" else int(port)
            if port != "0":
                self.sock.bind(f"tcp://{host}:{self.port}")
        except (zmq.ZMQError, ValueError) as exc:
            self.sock.close()
            raise ConfigError(f"--control {uri}: cannot bind ({exc})") from exc
        self.endpoint = f"tcp://{'127.0.0.1' if host in ('0.0.0.0', '*') else host}:{self.port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="ami-edge control", daemon=True)
        self._thread.start()

    def _handle(self, raw: bytes) -> dict:
        try:
            request = validate(msgpack.unpackb(raw, strict_map_key=True), self.token)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            return {"ok": False, "error": str(exc)}
        if request["type"] == "action":
            self.runtime.push_action(request["values"])
        elif request["type"] == "state":
            self.runtime.push_state(request["values"])
        return {"ok": True, "model": self.runtime.bundle.manifest.name, "frames": self.runtime.frames_seen}

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(100):
                continue
            try:
                raw = self.sock.recv()
            except zmq.ZMQError:
                return
            self.sock.send(msgpack.packb(self._handle(raw)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)
