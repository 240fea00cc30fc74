"""`ami-edge bench`: bare model latency vs the whole pipeline, in one run, on in-memory frames.

Bare: the bundle's encoder (and predictor) on ready-made inputs, timed per call. Pipeline: Runtime on the same
number of in-memory RGB frames (resize, normalise, clip ring, encoder, predictor, surprise). Efficiency =
pipeline FPS / bare-model FPS: how much of the model's speed the pipeline delivers. Medians of repeated runs.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .bundle import load_bundle
from .runtime import Runtime


def measure(model: str, frames: int = 300, backend: str = "auto", repeats: int = 3, size: int = 256) -> dict:
    bundle = load_bundle(model)
    m = bundle.manifest
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    bare_runs, pipe_runs, lat = [], [], []
    for _ in range(repeats):
        with Runtime(bundle, source=images[: m.input.frames], backend=backend) as rt:
            tokens = rt.encode(images[: m.input.frames])  # warms both graphs
            for img in images[: m.input.frames]:
                rt._push(img)
            feed = {"pixels": rt._clip_feed()}  # a ready input: the bare model does no preprocessing
            # Throughput, timed like the pipeline below (elapsed / frames): a per-call median would drop exactly the
            # scheduler and allocator hiccups that the pipeline's mean includes, and flatter the bare model.
            t0 = time.perf_counter()
            for _ in range(frames):
                rt.encoder.infer(feed)
                if rt.predictor is not None:
                    rt.predict(tokens)
            bare_runs.append((time.perf_counter() - t0) / frames)
        with Runtime(bundle, source=images, backend=backend) as rt:
            t0 = time.perf_counter()
            states = list(rt.stream())
            elapsed = time.perf_counter() - t0
            pipe_runs.append(elapsed / len(states))
            lat += [(s.t_done - s.t_capture) * 1e3 for s in states]
            providers = rt.encoder.describe()
    bare_s, pipe_s = float(np.median(bare_runs)), float(np.median(pipe_runs))
    return {"model": m.name, "backend": providers, "frames": frames, "repeats": repeats,
            "input": f"{size}x{size} RGB -> {m.input.height}x{m.input.width} x {m.input.frames} frames",
            "bare_ms": round(bare_s * 1e3, 3), "bare_fps": round(1 / bare_s, 1),
            "pipeline_ms": round(pipe_s * 1e3, 3), "pipeline_fps": round(1 / pipe_s, 1),
            "efficiency": round(bare_s / pipe_s, 3),
            "capture_to_state_ms_p50": round(float(np.percentile(lat, 50)), 3),
            "capture_to_state_ms_p99": round(float(np.percentile(lat, 99)), 3)}


def run(args: argparse.Namespace) -> int:
    report = measure(args.model, frames=args.frames, backend=args.backend, repeats=args.repeats)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['model']} on {report['backend']}, {report['input']}, {report['frames']} frames x "
          f"{report['repeats']} runs (medians)")
    print(f"  bare model     {report['bare_ms']:8.3f} ms/frame  {report['bare_fps']:8.1f} fps")
    print(f"  pipeline       {report['pipeline_ms']:8.3f} ms/frame  {report['pipeline_fps']:8.1f} fps")
    print(f"  efficiency     {report['efficiency']:8.3f}  (pipeline fps / bare-model fps)")
    print(f"  capture->state p50 {report['capture_to_state_ms_p50']:.3f} ms  p99 "
          f"{report['capture_to_state_ms_p99']:.3f} ms")
    return 0
