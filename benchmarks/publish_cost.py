"""Publish cost with 1, 10 and 50 subscribers, and the runtime's frame rate while a subscriber stalls.

    .venv/bin/python benchmarks/publish_cost.py --model build/tiny.amiedge [--states 2000] [--json out.json]

Subscribers are real SUB sockets on loopback, drained by one thread with a poller (50 Python threads would measure
the GIL, not ZeroMQ). Publish cost = time inside ZmqPublisher.publish per state, median. The stall test runs the
runtime on in-memory frames with a publisher and (a) one draining subscriber, (b) the same plus a subscriber that
connects and never reads; the states/s should not change, because PUB drops for the stalled one past its HWM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from ami_edge import Runtime, load_bundle
from ami_edge.publishers import open_publisher


def drain(sockets: list[zmq.Socket], stop: threading.Event, counts: list[int]) -> None:
    poller = zmq.Poller()
    for s in sockets:
        poller.register(s, zmq.POLLIN)
    while not stop.is_set():
        for sock, _ in poller.poll(50):
            while sock.poll(0):
                sock.recv_multipart(copy=False)
                counts[sockets.index(sock)] += 1


def subscribers(ctx: zmq.Context, endpoint: str, n: int) -> list[zmq.Socket]:
    socks = []
    for _ in range(n):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        s.setsockopt(zmq.SUBSCRIBE, b"ami/state/")
        socks.append(s)
    return socks


@contextlib.contextmanager
def wired(rt: Runtime, n_subs: int, drained: int):
    """A zmq publisher on `rt` with `n_subs` subscribers, the first `drained` of them read by a poller thread."""
    ctx = zmq.Context()
    pub = open_publisher("zmq://127.0.0.1:0?zeroconf=0", rt)
    socks = subscribers(ctx, pub.endpoint, n_subs)
    counts, stop = [0] * drained, threading.Event()
    thread = threading.Thread(target=drain, args=(socks[:drained], stop, counts), daemon=True)
    thread.start()
    try:
        yield pub, counts
    finally:
        stop.set()
        thread.join()
        pub.close()
        for sock in socks:
            sock.close()
        ctx.term()


def publish_cost(bundle, n_subs: int, states: int) -> dict:
    frames = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(64)]
    with Runtime(bundle, source=frames) as rt:
        sample = list(rt.stream())
    with Runtime(bundle, source=[]) as rt, wired(rt, n_subs, n_subs) as (pub, counts):
        for i in range(200):  # let every subscription reach the publisher
            pub.publish(sample[i % len(sample)])
        time.sleep(0.5)  # benchmark set-up, not a synchronisation in a test
        costs = []
        for i in range(states):
            t0 = time.perf_counter()
            pub.publish(sample[i % len(sample)])
            costs.append(time.perf_counter() - t0)
        time.sleep(0.5)
    return {"subscribers": n_subs, "publish_us_p50": round(statistics.median(costs) * 1e6, 1),
            "publish_us_p99": round(sorted(costs)[int(0.99 * (len(costs) - 1))] * 1e6, 1),
            "received_min": min(counts), "received_max": max(counts), "sent": states + 200}


def fps_with_stalled(bundle, stalled: bool, frames: int) -> float:
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(frames)]
    with Runtime(bundle, source=images) as rt, wired(rt, 2 if stalled else 1, 1) as (pub, _):  # the 2nd never reads
        time.sleep(0.3)
        t0 = time.perf_counter()
        n = 0
        for state in rt.stream():
            pub.publish(state)
            n += 1
        return n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--states", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    report = {"publish": [publish_cost(bundle, n, args.states) for n in (1, 10, 50)]}
    normal = [fps_with_stalled(bundle, False, 1500) for _ in range(args.repeats)]
    stalled = [fps_with_stalled(bundle, True, 1500) for _ in range(args.repeats)]
    report["fps_one_subscriber"] = round(statistics.median(normal), 1)
    report["fps_plus_stalled_subscriber"] = round(statistics.median(stalled), 1)
    report["fps_ratio"] = round(report["fps_plus_stalled_subscriber"] / report["fps_one_subscriber"], 3)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
