"""FP32 vs INT8 (vs FP16) bare encoder + predictor latency on this CPU, in one run, with the accuracy report.

    .venv/bin/python benchmarks/quantize_speed.py build/tiny.amiedge [--calib calib.npz | --source URI]
        [--out-dir build/quant-bench] [--rounds 40] [--calls 10] [--threads N] [--no-fp16] [--also NAME=BUNDLE]
        [--json out.json]

Quantizes the FP32 bundle with `ami_edge.export.quantize.quantize_bundle` (the `ami-edge quantize` code; the gate is
not applied here, so a failing variant is still measured and its report shown), then times one encoder call on a
real preprocessed clip plus one predictor call on the FP32 encoder's tokens (what the runtime does per frame),
batch 1, ONNX Runtime CPU EP with identical session options for every variant. Fair on a noisy shared machine:
warm-up first, then `--rounds` rounds in which every variant runs `--calls` calls back to back, the order rotating
each round, so load spikes hit all variants alike; medians over all calls. The speedup is FP32 median / INT8 median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ami_edge import load_bundle
from ami_edge.bundle import Bundle
from ami_edge.calibration.reader import Preprocess
from ami_edge.compare import read_frames
from ami_edge.export.quantize import format_report, quantize_bundle
from ami_edge.runtime import predictor_extrapolates, predictor_query


def sessions(bundle: Bundle, threads: int | None) -> dict[str, ort.InferenceSession]:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return {g: ort.InferenceSession(str(bundle.graph_path(g)), sess_options=options,
                                    providers=["CPUExecutionProvider"]) for g in ("encoder", "predictor")}


def runtime_feeds(bundle: Bundle, s: dict[str, ort.InferenceSession]) -> tuple[dict, dict]:
    """The encoder's and predictor's inputs for one clip of the demo world, as the runtime makes them."""
    m = bundle.manifest
    pixels = Preprocess(bundle).clip(np.stack(read_frames("synthetic://bouncing?seed=99", m.input.frames)))
    tokens = s["encoder"].run(None, {"pixels": pixels})[0]
    skip, ctx_ids, tgt_ids = predictor_query(m.latent.grid, predictor_extrapolates(m))  # the runtime's query
    return {"pixels": pixels}, {"context": np.ascontiguousarray(tokens[:, skip:]), "context_ids": ctx_ids[None],
                                "target_ids": tgt_ids[None]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", help="the FP32 bundle, e.g. build/tiny.amiedge or build/demo/default.amiedge")
    p.add_argument("--calib", help="calib.npz from `ami-edge calibrate collect`")
    p.add_argument("--source", default="synthetic://bouncing?seed=5", help="calibration source when no --calib")
    p.add_argument("--out-dir", default="build/quant-bench", help="where the quantized bundles are written")
    p.add_argument("--method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--activation-type", default="int8", choices=["int8", "uint8"])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--threads", type=int, help="intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--voe-pairs", type=int, default=10, help="VoE pairs per kind in the report (0 skips)")
    p.add_argument("--no-fp16", action="store_true", help="skip the FP16 variant")
    p.add_argument("--also", action="append", default=[], metavar="NAME=BUNDLE",
                   help="time an existing bundle too (e.g. one quantized with other settings), repeatable")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    fp32 = load_bundle(args.bundle)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    common = dict(min_cosine=-1.0, max_auc_drop=1.0, voe_pairs=args.voe_pairs)  # measure, never refuse
    variants: dict[str, Bundle] = {"fp32": fp32}
    variants["int8"] = quantize_bundle(fp32.path, out_dir / "int8", precision="int8", calib=args.calib,
                                       source=None if args.calib else args.source, method=args.method,
                                       activation=args.activation_type, **common)
    if not args.no_fp16:
        variants["fp16"] = quantize_bundle(fp32.path, out_dir / "fp16", precision="fp16", **common)

    for item in args.also:
        name, _, path = item.partition("=")
        variants[name] = load_bundle(path)
    runs = {name: sessions(b, args.threads) for name, b in variants.items()}
    # each variant's own feeds (an --also bundle may have another geometry, e.g. the previous default's grid)
    feeds = {name: runtime_feeds(b, runs[name]) for name, b in variants.items()}

    cpu: dict[str, list[float]] = {name: [] for name in runs}

    def call(name: str, timed: bool = True) -> float:
        s, (pixels, pred_feed) = runs[name], feeds[name]
        start, start_cpu = time.perf_counter(), time.thread_time()
        s["encoder"].run(None, pixels)
        s["predictor"].run(None, pred_feed)
        if timed:
            cpu[name].append(time.thread_time() - start_cpu)
        return time.perf_counter() - start

    for name in runs:  # warm-up: allocations, kernel selection, caches
        for _ in range(10):
            call(name, timed=False)
    times: dict[str, list[float]] = {name: [] for name in runs}
    paired: dict[str, list[float]] = {name: [] for name in runs}  # per round: FP32 median / this variant's
    names = list(runs)
    for r in range(args.rounds):
        this_round = {}
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each round
            this_round[name] = [call(name) for _ in range(args.calls)]
            times[name].extend(this_round[name])
        for name, v in this_round.items():
            paired[name].append(statistics.median(this_round["fp32"]) / statistics.median(v))
    medians = {name: statistics.median(v) * 1e3 for name, v in times.items()}
    cpu_medians = {name: statistics.median(v) * 1e3 for name, v in cpu.items()}

    print(f"{fp32.path}: encoder + predictor, batch 1, ORT {ort.__version__} CPU EP, threads "
          f"{args.threads or 'default'}, {args.rounds} rounds x {args.calls} calls interleaved")
    print(f"{'variant':<10}{'median ms':>11}{'p10 ms':>9}{'p90 ms':>9}{'speedup':>9}{'paired':>9}"
          f"{'cpu ms':>9}{'cpu speedup':>13}")
    for name, v in times.items():
        q = np.percentile(np.array(v) * 1e3, [10, 90])
        print(f"{name:<10}{medians[name]:>11.3f}{q[0]:>9.3f}{q[1]:>9.3f}{medians['fp32'] / medians[name]:>8.2f}x"
              f"{statistics.median(paired[name]):>8.2f}x{cpu_medians[name]:>9.3f}"
              f"{cpu_medians['fp32'] / cpu_medians[name]:>12.2f}x")
    print("speedup: FP32 median / variant median over all calls; paired: median over rounds of the same ratio "
          "within a round (robust to load drift); cpu: the calling thread's CPU time per call (with --threads 1 "
          "ONNX Runtime computes in that thread, so this ignores time spent preempted on a busy machine)")
    result = {"bundle": str(fp32.path), "median_ms": medians, "speedup": {k: medians["fp32"] / v
                                                                          for k, v in medians.items()},
              "paired_speedup": {k: statistics.median(v) for k, v in paired.items()}, "cpu_median_ms": cpu_medians,
              "cpu_speedup": {k: cpu_medians["fp32"] / v for k, v in cpu_medians.items()}, "reports": {}}
    for name, b in variants.items():
        if b.manifest.quantization is not None:
            report = b.manifest.quantization.report
            result["reports"][name] = report
            print(f"{name}: {format_report(report)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
