"""LAN publishing on loopback: real ZeroMQ, real zeroconf bound to 127.0.0.1, real processes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import msgpack
import numpy as np
import pytest
import zmq

from ami_edge import Runtime
from ami_edge.client import Subscriber, discover
from ami_edge.publishers import open_publisher

from .conftest import assert_one_line_error, run_cli


def test_states_arrive_with_arrays_equal_to_the_runtime(video_bundle):
    with Runtime(video_bundle, source="synthetic://bouncing?size=64&fps=200") as rt:
        pub = open_publisher("zmq://127.0.0.1:0?zeroconf=0", rt)
        try:
            with Subscriber(pub.endpoint, topics=(b"ami/state/", b"ami/meta/"), timeout=5) as sub:
                # A late joiner misses the first messages; meta repeats every second, so stream until a state and
                # a meta have both arrived (bounded by frames, not by a sleep).
                states, got = {}, []
                for state in rt.stream(max_frames=2000):
                    pub.publish(state)
                    states[state.seq] = state
                    while sub.sock.poll(0):
                        got.append(sub.recv())
                    topics = {m.topic for m in got}
                    if {"ami/state/", "ami/meta/"} <= topics and len(got) > 20:
                        break
        finally:
            pub.close()
    state_msgs = [m for m in got if m.topic == "ami/state/"]
    assert state_msgs, "nothing arrived"
    for m in state_msgs:
        s = states[m.seq]
        np.testing.assert_array_equal(m.arrays["latent"], s.latent.astype("<f4"))
        assert (m.surprise, m.event, m.v) == (s.surprise, s.event, 1)
    n = [m.n for m in state_msgs]
    assert all(b > a for a, b in zip(n, n[1:]))
    assert sub.gaps == sum(b - a - 1 for a, b in zip(n, n[1:]))  # a drop under load is legal, but always counted
    meta = next(m for m in got if m.topic == "ami/meta/")
    assert meta.header["latent_dim"] == video_bundle.manifest.latent.dim and meta.header["state_topic"] == "ami/state/"


def test_topic_separator_keeps_other_topics_out():
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    with Subscriber(f"tcp://127.0.0.1:{port}", timeout=0.2) as sub:
        for _ in range(50):  # until the subscription has propagated
            pub.send_multipart([b"ami/state_debug", msgpack.packb({"x": 1})])
            pub.send_multipart([b"ami/state/", msgpack.packb({"v": 1, "n": 1, "seq": 0, "arrays": []})])
            msg = sub.recv()
            if msg is not None:
                break
        assert msg is not None and msg.topic == "ami/state/"
        while (m := sub.recv()) is not None:
            assert m.topic == "ami/state/"
    pub.close(linger=0)


def test_serve_and_listen_find_each_other_by_zeroconf(video_bundle):
    serve = subprocess.Popen([sys.executable, "-m", "ami_edge", "serve", "--model", str(video_bundle.path),
                              "--source", "synthetic://bouncing?size=64&fps=250", "--max-frames", "6000",
                              "--publish", "zmq://127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    try:
        listen = run_cli("listen", "--count", "1000", "--json", "--timeout", "30", timeout=120)
    finally:
        serve.terminate()
        serve.wait(timeout=30)
    assert listen.returncode == 0, listen.stderr
    lines = [json.loads(x) for x in listen.stdout.splitlines()]
    assert len(lines) == 1000
    n = [m["n"] for m in lines]
    gaps = sum(b - a - 1 for a, b in zip(n, n[1:]))
    assert f"1000 messages, {gaps} missed" in listen.stderr  # every gap is counted, none unexplained
    assert all(b > a for a, b in zip(n, n[1:])) and lines[0]["arrays"]["latent"]["shape"] == [96]


def test_a_client_written_from_the_protocol_doc_alone(video_bundle):
    """Plain pyzmq + msgpack, as docs/protocol.md describes; no ami_edge import in the client."""
    client = textwrap.dedent("""
        import sys, msgpack, numpy as np, zmq
        sock = zmq.Context().socket(zmq.SUB)
        sock.connect(sys.argv[1])
        sock.setsockopt(zmq.SUBSCRIBE, b"ami/state/")
        assert sock.poll(30000)
        for _ in range(50):
            topic, header, *frames = sock.recv_multipart()
            h = msgpack.unpackb(header)
            arrays = {a["name"]: np.frombuffer(f, dtype=a["dtype"]).reshape(a["shape"])
                      for a, f in zip(h["arrays"], frames)}
            assert topic == b"ami/state/" and h["v"] == 1 and arrays["latent"].shape == (96,)
        assert "ami_edge" not in sys.modules
        print("ok", h["seq"], h["t_publish_ns"] >= h["t_capture_ns"])
    """)
    with Runtime(video_bundle, source="synthetic://bouncing?size=64&fps=200") as rt:
        pub = open_publisher("zmq://127.0.0.1:0?zeroconf=0", rt)
        proc = subprocess.Popen([sys.executable, "-c", client, pub.endpoint], stdout=subprocess.PIPE, text=True)
        try:
            for state in rt.stream(max_frames=3000):
                pub.publish(state)
                if proc.poll() is not None:
                    break
            out, _ = proc.communicate(timeout=30)
        finally:
            pub.close()
    assert proc.returncode == 0 and out.startswith("ok") and out.strip().endswith("True"), out


def test_discovery_and_errors(video_bundle):
    with Runtime(video_bundle, source=[]) as rt:
        pub = open_publisher("zmq://127.0.0.1:0", rt)
        try:
            found = discover(timeout=5, name=pub.id, interfaces=["127.0.0.1"])
            assert found and found[0].port == pub.port and found[0].txt["dim"] == "96"
            assert found[0].txt["proto"] == "1" and len(str(found[0].txt)) < 200
        finally:
            pub.close()
    assert_one_line_error(run_cli("listen", "--connect", "tcp://127.0.0.1:1", "--timeout", "0.5"), "no message")
    with pytest.raises(Exception, match="expected zmq://HOST:PORT"):
        with Runtime(video_bundle, source=[]) as rt:
            open_publisher("zmq://127.0.0.1:http", rt)
