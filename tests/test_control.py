"""The control channel: real REQ clients on loopback; actions reach the runtime, bad requests never act."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
import zmq

from ami_edge import ConfigError, Runtime
from ami_edge.control import MAX_REQUEST, ControlServer


def _ask(endpoint: str, payload: bytes, timeout_ms: int = 5000) -> dict | None:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(payload)
        return msgpack.unpackb(sock.recv()) if sock.poll(timeout_ms) else None
    finally:
        sock.close()


def test_actions_reach_the_runtime_and_bad_requests_do_not(video_bundle):
    frames = [np.full((64, 64, 3), 50, np.uint8)] * 8
    with Runtime(video_bundle, source=frames) as rt:
        server = ControlServer("zmq://127.0.0.1:0", rt)
        try:
            ok = _ask(server.endpoint, msgpack.packb({"v": 1, "type": "action", "values": [0.5, -1.0]}))
            assert ok["ok"] is True and ok["model"] == "tiny"
            state = next(rt.stream())
            np.testing.assert_array_equal(state.action, [0.5, -1.0])
            for request, fragment in [
                ({"v": 1, "type": "action", "values": [1.0], "speed": 3}, "unknown field(s) ['speed']"),
                ({"v": 1, "type": "teleport"}, "'type' must be one of action, state, ping"),
                ({"v": 2, "type": "ping"}, "'v' must be 1"),
                ({"v": 1, "type": "action", "values": [float("nan")]}, "finite numbers"),
                ({"v": 1, "type": "action", "values": list(range(65))}, "1 to 64"),
                ({"v": 1, "type": "action", "values": "fast"}, "'values' must be list"),
                ([1, 2, 3], "must be a msgpack map"),
            ]:
                reply = _ask(server.endpoint, msgpack.packb(request))
                assert reply["ok"] is False and fragment in reply["error"], (request, reply)
            reply = _ask(server.endpoint, b"\xc1\xc1 not msgpack")
            assert reply["ok"] is False
            np.testing.assert_array_equal(next(rt.stream()).action, [0.5, -1.0])  # nothing bad was applied
            assert _ask(server.endpoint, b"\x00" * (MAX_REQUEST + 1), timeout_ms=500) is None  # dropped unread
            assert _ask(server.endpoint, msgpack.packb({"v": 1, "type": "ping"}))["ok"] is True  # still serving
        finally:
            server.close()


def test_control_beyond_localhost_needs_a_token(video_bundle):
    with Runtime(video_bundle, source=[]) as rt:
        with pytest.raises(ConfigError, match="pass --control-token"):
            ControlServer("zmq://0.0.0.0:0", rt)
        server = ControlServer("zmq://0.0.0.0:0", rt, token="k3y")
        try:
            ping = {"v": 1, "type": "ping"}
            assert _ask(server.endpoint, msgpack.packb(ping)) == {"ok": False, "error": "missing or wrong token"}
            assert _ask(server.endpoint, msgpack.packb({**ping, "token": "nope"}))["ok"] is False
            assert _ask(server.endpoint, msgpack.packb({**ping, "token": "k3y"}))["ok"] is True
        finally:
            server.close()
