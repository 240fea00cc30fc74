"""What the web dashboard costs: per state in the serve loop, per request in the HTTP thread, and in frame rate.

    .venv/bin/python benchmarks/dashboard_cost.py --model build/tiny.amiedge [--repeats 3] [--json out.json]

1. `Timeline.observe` per state (the only per-state work serve adds for the dashboard), median over 20,000 calls.
2. `Timeline.snapshot` (what one `/api/state` poll computes: stats + PCA of the last 300 latents) for a full
   timeline with one new state per call, with the bundle's latent size and with D = 1024 (V-JEPA 2 ViT-L),
   median over 200 calls.
3. `Timeline.preview` (one `/preview.jpg`: resize a 640x480 frame to 128 px wide and JPEG-encode), median.
4. Runtime states/s on in-memory frames, plain vs wired like `serve --http` (FrameTap + observe) with one
   client polling /api/state every 250 ms and /preview.jpg every 200 ms over loopback, as the page does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from ami_edge import Runtime, load_bundle
from ami_edge.http import FrameTap, HttpServer, Metrics, Timeline
from ami_edge.runtime import State
from ami_edge.sources import Frame


def median_us(fn, n: int) -> float:
    costs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        costs.append(time.perf_counter() - t0)
    return round(statistics.median(costs) * 1e6, 2)


def snapshot_ms(dim: int, calls: int = 200) -> float:
    """One /api/state poll on a full timeline, one new state before each (else the projection is reused)."""
    rng = np.random.default_rng(0)
    timeline, costs = Timeline(), []
    for i in range(600 + calls):
        timeline.observe(State(seq=i, t_capture=i / 30, t_done=i / 30 + 0.004, latent=rng.standard_normal(dim)
                               .astype(np.float32), prediction=None, surprise=float(rng.standard_normal()),
                               event=False), dropped=0)
        if i >= 600:
            t0 = time.perf_counter()
            timeline.snapshot(since=i - 1)
            costs.append(time.perf_counter() - t0)
    return round(statistics.median(costs) * 1e3, 3)


def states_per_s(bundle, images: list[np.ndarray], wired: bool) -> float:
    with Runtime(bundle, source=images) as rt:
        stop, timeline, http = threading.Event(), None, None
        if wired:
            timeline = Timeline()
            rt.source = timeline.tap = FrameTap(rt.source)
            http = HttpServer("127.0.0.1:0", Metrics(), timeline=timeline)

            def client(path: str, period: float) -> None:  # one open dashboard tab
                while not stop.wait(period):
                    with urllib.request.urlopen(f"{http.address}{path}", timeout=10) as r:
                        r.read()

            clients = [threading.Thread(target=client, args=a, daemon=True)
                       for a in (("/api/state?since=-1", 0.25), ("/preview.jpg?w=128", 0.2))]
        t0, n = time.perf_counter(), 0
        if wired:
            for c in clients:
                c.start()
        for state in rt.stream():
            if timeline is not None:
                timeline.observe(state, 0)
            n += 1
        elapsed = time.perf_counter() - t0
        stop.set()
        if http is not None:
            for c in clients:
                c.join()
            http.close()
    return n / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    bundle = load_bundle(args.model)
    images = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(args.frames)]
    with Runtime(bundle, source=images[:64]) as rt:
        state = next(iter(rt.stream()))
    dim = int(state.latent.shape[0])
    timeline = Timeline()
    report: dict = {"latent_dim": dim, "observe_us_p50": median_us(lambda: timeline.observe(state, 0), 20000)}
    for d in (dim, 1024):
        report[f"snapshot_ms_p50_D{d}"] = snapshot_ms(d)
    camera = Timeline()
    camera.tap = FrameTap(rt.source)
    camera.tap.latest = Frame(np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8), 0, 0.0)
    report["preview_ms_p50_640x480"] = round(median_us(camera.preview, 200) / 1e3, 3)
    plain, wired = [], []
    for _ in range(args.repeats):  # interleaved, so drifting background load hits both alike
        plain.append(states_per_s(bundle, images, False))
        wired.append(states_per_s(bundle, images, True))
    report["states_per_s_plain"] = round(statistics.median(plain), 1)
    report["states_per_s_dashboard"] = round(statistics.median(wired), 1)
    report["ratio"] = round(report["states_per_s_dashboard"] / report["states_per_s_plain"], 3)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
