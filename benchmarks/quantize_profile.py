"""Where the time goes in FP32 vs INT8: ONNX Runtime's profiler on encoder + predictor, both precisions interleaved.

    .venv/bin/python benchmarks/quantize_profile.py FP32_BUNDLE INT8_BUNDLE [--runs 400] [--out-dir build/qprof]
    # e.g. the shipped default and its quantized copy from benchmarks/quantize_speed.py:
    .venv/bin/python benchmarks/quantize_profile.py edge/bundles/default.amiedge build/quant-bench/int8.amiedge

Runs every graph of both bundles in turn (one intra-op thread, the same clip as quantize_speed.py) with
`SessionOptions.enable_profiling`, then takes each node's median kernel time (robust to another job's load spikes;
the first 10 runs skipped) and splits it into the weight GEMMs (MatMul with a constant weight, Gemm, Conv, and in
INT8 their MatMulIntegerToFloat / QGemm plus the QuantizeLinear feeding them) and the rest, with the top ops. The
profiler adds a little time to every node, so the sums exceed quantize_speed.py's latencies; use the split, not the
totals. Also writes ONNX Runtime's optimized graphs (`*.opt.onnx`) to show which fusions happened.
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ami_edge import load_bundle
from ami_edge.calibration.reader import Preprocess
from ami_edge.compare import read_frames
from ami_edge.runtime import predictor_extrapolates, predictor_query

GEMM_OPS = {"MatMulIntegerToFloat", "QGemm", "Gemm", "Conv", "QuantizeLinear", "QLinearMatMul", "QLinearConv"}


def weight_matmuls(path: Path) -> set[str]:
    """Names of the MatMul nodes of the ORT-optimized graph whose second input is a constant (the weight GEMMs)."""
    model = onnx.load(str(path))
    constants = {i.name for i in model.graph.initializer}
    return {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in constants}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fp32", help="the FP32 bundle")
    p.add_argument("int8", help="its INT8 copy (ami-edge quantize)")
    p.add_argument("--runs", type=int, default=400)
    p.add_argument("--out-dir", default="build/qprof", help="profiles and optimized graphs go here")
    args = p.parse_args()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reference = load_bundle(args.fp32)
    m = reference.manifest
    pixels = Preprocess(reference).clip(np.stack(read_frames("synthetic://bouncing?seed=99", m.input.frames)))
    sessions: dict[tuple[str, str], ort.InferenceSession] = {}
    for label, path in (("fp32", args.fp32), ("int8", args.int8)):
        bundle = load_bundle(path)
        for graph in ("encoder", "predictor"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.enable_profiling = True
            options.profile_file_prefix = str(out / f"{label}.{graph}")
            options.optimized_model_filepath = str(out / f"{label}.{graph}.opt.onnx")
            sessions[label, graph] = ort.InferenceSession(str(bundle.graph_path(graph)), sess_options=options,
                                                          providers=["CPUExecutionProvider"])
    tokens = sessions["fp32", "encoder"].run(None, {"pixels": pixels})[0]  # (1, N, D)
    skip, ctx_ids, tgt_ids = predictor_query(m.latent.grid, predictor_extrapolates(m))  # the runtime's query
    feeds = {"encoder": {"pixels": pixels},
             "predictor": {"context": np.ascontiguousarray(tokens[:, skip:]), "context_ids": ctx_ids[None],
                           "target_ids": tgt_ids[None]}}
    for _ in range(args.runs):  # interleaved, so load spikes hit both precisions alike
        for (_, graph), session in sessions.items():
            session.run(None, feeds[graph])
    print(f"ONNX Runtime {ort.__version__} CPU EP, 1 thread, {args.runs} runs interleaved; per-node median kernel us")
    for (label, graph), session in sessions.items():
        durations: dict[str, list[float]] = collections.defaultdict(list)
        op: dict[str, str] = {}
        for event in json.loads(Path(session.end_profiling()).read_text()):
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                name = event["name"][: -len("_kernel_time")]
                durations[name].append(event["dur"])
                op[name] = event["args"]["op_name"]
        median = {k: statistics.median(v[10:] or v) for k, v in durations.items()}
        weights = weight_matmuls(out / f"{label}.{graph}.opt.onnx")
        gemm = sum(v for k, v in median.items() if op[k] in GEMM_OPS or k in weights)
        total = sum(median.values())
        by_op: collections.Counter[str] = collections.Counter()
        for k, v in median.items():
            by_op[op[k]] += v
        print(f"{label} {graph}: {total:.0f} us, weight GEMMs{' + Q' if label == 'int8' else ''} {gemm:.0f} us "
              f"({100 * gemm / max(total, 1e-9):.0f} %), rest {total - gemm:.0f} us; {len(median)} nodes")
        print("   " + ", ".join(f"{o} {v:.0f}" for o, v in by_op.most_common(12)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
