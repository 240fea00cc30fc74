"""`ami-edge quantize`: an INT8 (QDQ) or FP16 copy of an FP32 bundle, with an accuracy report and a gate.

    ami-edge calibrate collect --source synthetic://bouncing?seed=5 --frames 256 --out calib.npz
    ami-edge quantize build/tiny.amiedge --out build/tiny-int8.amiedge --calib calib.npz

INT8, per graph (encoder, predictor, ac_predictor): `quant_pre_process` (shape inference and graph optimisation),
then `quantize_static` in QDQ format - QuantizeLinear / DequantizeLinear pairs around float ops, the explicit
quantization TensorRT consumes - restricted by `nodes_to_quantize` to the MatMul / Gemm nodes whose weight is an
initializer, and in predictor graphs also Conv (the convolutional predictor's weights, `ConvPredictor`). The
encoder's Conv (the patch embedding) stays float: with its output not re-quantized ONNX Runtime has no integer
kernel for it and ran it as a float Conv behind runtime Q / DQ of pixels and weights (measured ~5 % slower than the
float Conv, and less accurate). Tensors that a float node also reads bypass their Q / DQ pair for that node
(`float_consumers_bypass_qdq`). Quantizing every op (Softmax included, which ONNX Runtime then fuses into
QLinearSoftmax) was measured here to cost accuracy (cosine 0.975) and speed; the weight GEMMs alone carry the work
and keep cosine ~0.9999. Activations and weights are symmetric int8 by default (TensorRT needs zero points of 0).
Calibration inputs are the calibration frames preprocessed as the runtime does, and for the predictors the FP32
encoder's tokens (see `ami_edge.calibration.reader`).

FP16: `onnxruntime.transformers.float16` converts weights and ops, keeping float32 graph inputs and outputs so the
runtime feeds the bundle unchanged.

Report (in the manifest's `quantization.report`): on held-out frames (`--eval-source`, never the calibration
frames) both bundles run the real streaming pipeline (`ami_edge.compare`): latent cosine mean / worst clip, max abs,
prediction cosine, Pearson correlation of per-frame surprise, and the VoE-AUC of both (`--voe-pairs`, 0 skips).
`quantize` exits 1 and leaves nothing behind when the latent cosine is below `--min-cosine` or the AUC moved more
than `--max-auc-drop`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      quant_pre_process, quantize_static)

import ami_edge
from ami_edge.bundle import MANIFEST, SUFFIX, Bundle, bundle_out_path, load_bundle, sha256_file, staged_bundle_dir
from ami_edge.calibration.collect import Collected, collect
from ami_edge.calibration.reader import FeedReader, GraphFeeds, load_calibration
from ami_edge.compare import compare_traces, read_frames, run_trace
from ami_edge.errors import ConfigError, ExportError

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}
# Ops quantized when their weight is a constant; Conv only outside the encoder (see the module doc).
WEIGHT_OPS = ("MatMul", "Gemm")
PREDICTOR_WEIGHT_OPS = WEIGHT_OPS + ("Conv",)
DEFAULT_EVAL_SOURCE = "synthetic://bouncing?seed=424242"


class _OrtReader(CalibrationDataReader):
    """The runtime-side FeedReader in ONNX Runtime's CalibrationDataReader ABC."""

    def __init__(self, reader: FeedReader):
        self.reader = reader

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self.reader.get_next()

    def rewind(self) -> None:
        self.reader.rewind()

    def __len__(self) -> int:
        return len(self.reader)


def weight_nodes(model: onnx.ModelProto, ops: tuple[str, ...] = WEIGHT_OPS) -> list[str]:
    """Names of the `ops` nodes (MatMul / Gemm, and Conv in predictors) whose second input (the weight) is a
    constant: the ops that do the work. Everything else (Softmax, LayerNorm, activation x activation MatMuls in
    attention, the encoder's Conv) stays float."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in ops and len(n.input) > 1 and n.input[1] in constants]


def _name_nodes(model: onnx.ModelProto) -> None:
    """nodes_to_quantize works by node name; give unnamed nodes unique ones."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def op_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], method: str, per_channel: bool,
                  activation: str, work: Path, ops: tuple[str, ...] = WEIGHT_OPS) -> dict[str, Any]:
    """One graph to QDQ INT8, the `ops` nodes with constant weights; returns what was quantized."""
    src, work = src.resolve(), work.resolve()
    pre = work / f"{src.stem}.pre.onnx"
    symbolic = True
    # When symbolic shape inference gives up, ONNX Runtime dumps sym_shape_infer_temp.onnx and a <uuid>.data file
    # into the working directory: run it inside the scratch directory so the user's directory stays clean.
    with _cwd(work):
        try:
            quant_pre_process(str(src), str(pre))
        except Exception:  # it trips on some exporter patterns; ONNX's own shape inference suffices for the GEMMs
            symbolic = False
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    model = onnx.load(str(pre))
    _name_nodes(model)
    onnx.save(model, str(pre))
    nodes = weight_nodes(model, ops)
    if not nodes:
        raise ExportError(f"{src.name}: no {' / '.join(ops)} with a constant weight to quantize")
    symmetric = activation == "int8"
    try:
        quantize_static(str(pre), str(dst), _OrtReader(FeedReader(feeds)), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_quantize=nodes, calibrate_method=METHODS[method],
                        calibration_providers=["CPUExecutionProvider"],
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                       "OpTypesToExcludeOutputQuantization": list(ops)})
    except Exception as exc:  # ORT raises many types; name the graph
        raise ExportError(f"quantize_static failed on {src.name}: {str(exc).strip().splitlines()[0]}") from exc
    quantized = onnx.load(str(dst))
    bypassed = float_consumers_bypass_qdq(quantized, set(nodes))
    if bypassed:
        onnx.save(quantized, str(dst))
    return {"quantized_nodes": len(nodes), "total_nodes": len(model.graph.node), "symbolic_shapes": symbolic,
            "float_readers_bypassing_qdq": bypassed}


def float_consumers_bypass_qdq(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Feed the float tensor, not its QuantizeLinear -> DequantizeLinear copy, to nodes that are not quantized.

    quantize_static puts one Q / DQ pair on a tensor that a quantized GEMM reads and routes *every* reader through
    it. For a reader that stays float (a Shape node, say) that is a useless rounding, and it costs more than that in
    ONNX Runtime: a Q with several DQ readers is not converted to the uint8 form x86 kernels need, so the GEMM
    behind it stays a float MatMul with its weights dequantized on every call (measured on the predictor's input
    projection, whose `context` input also feeds Shape). Returns how many inputs were rewired; Q / DQ nodes left
    without readers are removed. The graph stays plain QDQ.
    """
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    rewired = 0
    for node in graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[i] = q.input[0]
                rewired += 1
    while True:  # drop Q / DQ nodes nobody reads any more (DQ first frees its Q)
        read = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            return rewired
        for n in dead:
            graph.node.remove(n)


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    """Run a block in another working directory (process-wide: the CLI is single-threaded here)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """One graph to FP16 weights and ops, with float32 inputs and outputs kept."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    return {"total_nodes": len(model.graph.node)}


def _opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def voe_auc(bundle: Bundle, pairs: int) -> dict[str, Any] | None:
    """Mean VoE ROC-AUC over violation kinds (export/demo/voe.py), or None for bundles it does not apply to."""
    from .demo.voe import bundle_scorer, evaluate

    if pairs <= 0 or bundle.manifest.input.layout != "BCTHW" or not bundle.has("predictor"):
        return None
    per_kind = evaluate(bundle_scorer(bundle), pairs=pairs)
    return {"auc": float(np.mean([r["auc"] for r in per_kind.values()])),
            "per_kind": {k: r["auc"] for k, r in per_kind.items()}}


def accuracy_report(reference: Bundle, candidate: Bundle, eval_source: str, eval_frames: int,
                    voe_pairs: int) -> dict[str, Any]:
    """Candidate vs FP32 reference on the same held-out frames through the runtime pipeline (CPU)."""
    frames = read_frames(eval_source, eval_frames)
    ref = run_trace(reference, frames, "onnxruntime:cpu")
    got = run_trace(candidate, frames, "onnxruntime:cpu")
    outputs = compare_traces(ref, got)
    report: dict[str, Any] = {
        "eval_source": eval_source, "eval_frames": len(frames),
        "latent_cosine_mean": outputs["latent"]["cosine"], "latent_cosine_min": outputs["latent"]["cosine_min"],
        "latent_max_abs": outputs["latent"]["max_abs"],
        "prediction_cosine_mean": outputs.get("prediction", {}).get("cosine"),
        "surprise_correlation": outputs.get("surprise", {}).get("pearson"),
        "outputs": outputs, "voe_pairs": voe_pairs,
    }
    a, b = voe_auc(reference, voe_pairs), voe_auc(candidate, voe_pairs)
    report["voe_auc_fp32"] = a["auc"] if a else None
    report["voe_auc"] = b["auc"] if b else None
    report["voe_auc_delta"] = b["auc"] - a["auc"] if a and b else None
    if a and b:
        report["voe_auc_per_kind"] = {k: {"fp32": a["per_kind"][k], "quantized": b["per_kind"][k]}
                                      for k in a["per_kind"]}
    return report


def gate(report: dict[str, Any], min_cosine: float, max_auc_drop: float) -> list[str]:
    """Reasons the quantized bundle is refused (empty: it passes)."""
    failures = []
    if not np.isfinite(report["latent_cosine_mean"]) or not np.isfinite(report["latent_max_abs"]):
        failures.append("the quantized encoder gives non-finite outputs")
    elif report["latent_cosine_mean"] < min_cosine:
        failures.append(f"latent cosine {report['latent_cosine_mean']:.6f} < --min-cosine {min_cosine:g}")
    delta = report.get("voe_auc_delta")
    if delta is not None and abs(delta) > max_auc_drop:
        failures.append(f"VoE-AUC moved by {delta:+.4f} (|delta| > --max-auc-drop {max_auc_drop:g})")
    return failures


def format_report(report: dict[str, Any]) -> str:
    def num(v: Any, fmt: str) -> str:
        return "--" if v is None else format(v, fmt)

    return (f"latent cosine mean {report['latent_cosine_mean']:.6f} min {report['latent_cosine_min']:.6f} "
            f"max abs {report['latent_max_abs']:.3g}; prediction cosine "
            f"{num(report['prediction_cosine_mean'], '.6f')}; surprise correlation "
            f"{num(report['surprise_correlation'], '.4f')}; VoE-AUC fp32 {num(report['voe_auc_fp32'], '.3f')} "
            f"quantized {num(report['voe_auc'], '.3f')} delta {num(report['voe_auc_delta'], '+.4f')} "
            f"({report['eval_frames']} held-out frames from {report['eval_source']})")


def calibration_windows(calib: str | None, source: str | None, frames: int, window: int) -> tuple[Collected, str]:
    """The calibration windows and a description of where they came from (file + sha256, or the source URI)."""
    if calib and source:
        raise ConfigError("give either --calib FILE or --source URI for calibration data, not both")
    if calib:
        return load_calibration(calib), f"{calib} (sha256 {sha256_file(Path(calib))})"
    if source:
        return collect(source, frames, window=window), source
    raise ConfigError("INT8 needs calibration data: --calib calib.npz (from `ami-edge calibrate collect`) or "
                      "--source URI")


def quantize_bundle(src: str | Path, out: str | Path, precision: str = "int8", calib: str | None = None,
                    source: str | None = None, method: str = "minmax", per_channel: bool = True,
                    activation: str = "int8", calib_frames: int = 128, max_clips: int = 256,
                    eval_source: str = DEFAULT_EVAL_SOURCE, eval_frames: int = 64, voe_pairs: int = 10,
                    min_cosine: float = 0.99, max_auc_drop: float = 0.02, name: str | None = None,
                    log=lambda msg: print(msg, file=sys.stderr, flush=True)) -> Bundle:
    """Write an INT8 or FP16 copy of the FP32 bundle `src` to `out`, with its accuracy report; see the module doc.

    Raises:
        ConfigError: bad arguments or calibration data.
        ExportError: quantization failed, or the result fails the accuracy gate (nothing is left at `out`).
    """
    if precision not in ("int8", "fp16"):
        raise ConfigError(f"--precision {precision!r} is not one of int8, fp16")
    if method not in METHODS or activation not in ("int8", "uint8"):
        raise ConfigError(f"--method must be one of {', '.join(METHODS)} and --activation-type int8 or uint8")
    if eval_frames <= 0 or voe_pairs < 0 or max_clips <= 0:
        raise ConfigError("--eval-frames and --max-clips must be positive, --voe-pairs >= 0")
    reference = load_bundle(src)
    m = reference.manifest
    if m.quantization is not None or any(g.precision != "fp32" for g in m.graphs.values()):
        raise ConfigError(f"{reference.path} is already {m.graphs['encoder'].precision}; quantize its FP32 bundle")
    if any(g.data_file for g in m.graphs.values()):
        raise ConfigError(f"{reference.path} keeps weights in external data files (> 2 GB graphs), which "
                          "quantize does not handle yet")
    out = bundle_out_path(out)
    if out.resolve() == reference.path.resolve():
        raise ConfigError("--out must differ from the FP32 bundle")
    calibration = None
    feeds: dict[str, list] = {}
    if precision == "int8":
        if source is not None and source == eval_source:
            raise ConfigError(f"--source and --eval-source are both {source}: the report must be measured on "
                              "held-out frames; pick another seed or source for one of them")
        data, described = calibration_windows(calib, source, calib_frames, max(8, m.input.frames))
        if data.source == eval_source:
            raise ConfigError(f"{calib} was collected from {eval_source}, the --eval-source; the report must be "
                              "measured on held-out frames, pass another --eval-source")
        built = GraphFeeds.build(reference, data.frames, max_clips=max_clips)
        feeds = built.feeds
        calibration = {"source": described, "windows": int(data.frames.shape[0]), "window": data.window,
                       "clips": built.clips}
        log(f"calibration: {built.clips} clips from {data.frames.shape[0]} windows of {described}")
    with staged_bundle_dir(out) as tmp:
        manifest = json.loads((reference.path / MANIFEST).read_text(encoding="utf-8"))
        settings: dict[str, Any] = {"graphs": {}}
        with tempfile.TemporaryDirectory(prefix="ami-quant-") as work:
            for graph, spec in m.graphs.items():
                dst = tmp / f"{graph}.{precision}.onnx"
                log(f"{graph}: {'QDQ int8 (' + method + ')' if precision == 'int8' else 'fp16'}")
                if precision == "int8":
                    info = quantize_int8(reference.graph_path(graph), dst, feeds[graph], method, per_channel,
                                         activation, Path(work),
                                         WEIGHT_OPS if graph == "encoder" else PREDICTOR_WEIGHT_OPS)
                else:
                    info = convert_fp16(reference.graph_path(graph), dst)
                info["ops"] = {k: v for k, v in op_counts(dst).items()
                               if k in ("QuantizeLinear", "DequantizeLinear", "Cast")}
                settings["graphs"][graph] = info
                entry = manifest["graphs"][graph]
                entry.update(file=dst.name, precision=precision, sha256=sha256_file(dst), opset=_opset(dst))
        candidate_manifest = dict(manifest, name=name or out.name[: -len(SUFFIX)])
        # A provisional section so the runtime's reader accepts the bundle while the report is measured.
        section: dict[str, Any] = {
            "precision": precision, "format": "QDQ" if precision == "int8" else "float16",
            "method": method if precision == "int8" else "float16", "per_channel": bool(per_channel),
            "reference": {"bundle": str(reference.path), "name": m.name,
                          "graphs": {g: s.sha256 for g, s in m.graphs.items()}},
            "report": {"eval_source": eval_source, "eval_frames": eval_frames, "latent_cosine_mean": 0.0,
                       "latent_cosine_min": 0.0, "latent_max_abs": 0.0},
            "settings": {**settings, "activation_type": activation if precision == "int8" else "float16",
                         "weight_type": "int8" if precision == "int8" else "float16",
                         "symmetric_activations": precision == "int8" and activation == "int8",
                         "nodes": ("MatMul/Gemm with constant weights (and Conv outside the encoder)"
                                   if precision == "int8" else "all"),
                         "gate": {"min_cosine": min_cosine, "max_auc_drop": max_auc_drop},
                         "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__,
                                      "ami_edge": ami_edge.__version__},
                         "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        }
        if calibration is not None:
            section["calibration"] = calibration
        candidate_manifest["quantization"] = section
        _write(tmp, candidate_manifest)
        log(f"accuracy vs FP32 on {eval_frames} held-out frames from {eval_source}"
            + (f", VoE {voe_pairs} pairs per kind" if voe_pairs else ""))
        report = accuracy_report(reference, load_bundle(tmp), eval_source, eval_frames, voe_pairs)
        section["report"] = report
        failures = gate(report, min_cosine, max_auc_drop)
        section["settings"]["gate"]["passed"] = not failures
        _write(tmp, candidate_manifest)
        log(format_report(report))
        if failures:
            raise ExportError(f"{precision} bundle refused by the accuracy gate: {'; '.join(failures)} (try "
                              "--method entropy|percentile, more calibration data, or fp16)")
        load_bundle(tmp)
    return load_bundle(out)


def _write(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    bundle = quantize_bundle(args.bundle, args.out, precision=args.precision, calib=args.calib, source=args.source,
                             method=args.method, per_channel=args.per_channel, activation=args.activation_type,
                             calib_frames=args.calib_frames, max_clips=args.max_clips, eval_source=args.eval_source,
                             eval_frames=args.eval_frames, voe_pairs=args.voe_pairs, min_cosine=args.min_cosine,
                             max_auc_drop=args.max_auc_drop, name=args.name)
    print(f"wrote {bundle.path}")
    return 0
