"""Export a loaded JEPA model to a bundle of ONNX graphs, then check ONNX Runtime against torch.

Each graph is exported with the dynamo exporter as one file (weights inline; only graphs over protobuf's 2 GB limit
keep them in one external data file), opset >= 17 so LayerNormalization stays one op for TensorRT, validated by
`onnx.checker`, and run in ONNX Runtime (CPU) on seeded inputs next to torch at two batch sizes: max abs diff and
cosine per output go into the manifest, and export fails above tolerance.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import ami_edge
from ami_edge.bundle import (MANIFEST, SCHEMA_VERSION, SUFFIX, Bundle, bundle_out_path, check_surprise_option,
                             load_bundle, sha256_file, staged_bundle_dir)
from ami_edge.errors import ConfigError, ExportError, require

from .loaders.base import LoadedModel
from .models import JEPAModel
from .models.conv_predictor import context_steps

MIN_OPSET = 17
DEFAULT_OPSET = 18
DEFAULT_TOLERANCE = 1e-4
PARITY_BATCH = 2
# Protobuf's limit is 2 GiB for the whole graph; leave headroom for the graph itself.
EXTERNAL_DATA_ABOVE = 1_800_000_000


@dataclass
class GraphPlan:
    """How one graph is exported: the module, named example inputs and which axes are dynamic."""

    name: str
    module: nn.Module
    inputs: dict[str, torch.Tensor]
    outputs: list[str]
    dynamic: dict[str, dict[int, str]]  # input name -> {axis: axis name, or "name*k" for k times that axis}
    variants: dict[str, dict[str, torch.Tensor]] | None = None  # extra parity inputs probing the dynamic axes


def example_pixels(model: JEPAModel, batch: int, gen: torch.Generator) -> torch.Tensor:
    """Seeded normalised pixels in the encoder's layout (standard normal: what mean/std normalisation yields)."""
    e = model.cfg.encoder
    h, w = e.img_size
    shape = {"BCHW": (batch, e.in_chans, h, w), "BCTHW": (batch, e.in_chans, e.num_frames, h, w),
             "BTCHW": (batch, e.num_frames, e.in_chans, h, w)}[e.layout]
    return torch.randn(shape, generator=gen)


def context_target_split(model: JEPAModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids for the default predictor query: the last tubelet step is the target, earlier steps the context.

    Image models (one step) use the left half of the image as context, the right half as target.
    """
    t, h, w = model.cfg.encoder.grid
    ids = torch.arange(t * h * w).view(t, h, w)
    if t > 1:
        return ids[:-1].reshape(-1), ids[-1:].reshape(-1)
    half = max(1, w // 2)
    return ids[:, :, :half].reshape(-1), ids[:, :, half:].reshape(-1)


def plan_graphs(model: JEPAModel, names: list[str], batch: int, seed: int) -> list[GraphPlan]:
    gen = torch.Generator().manual_seed(seed)
    pixels = example_pixels(model, batch, gen)
    with torch.no_grad():
        tokens = model.encoder(pixels)  # (B, N, D): realistic predictor inputs
    plans = []
    for name in names:
        if name == "encoder":
            plans.append(GraphPlan("encoder", model.encoder, {"pixels": pixels}, ["tokens"],
                                   {"pixels": {0: "batch"}}))
        elif name == "predictor" and model.cfg.predictor.arch == "conv":
            plans.append(_conv_plan(model, tokens, batch))
        elif name == "predictor":
            ctx, tgt = context_target_split(model)
            plans.append(GraphPlan(
                "predictor", model.predictor,
                {"context": tokens[:, ctx], "context_ids": ctx.expand(batch, -1).contiguous(),
                 "target_ids": tgt.expand(batch, -1).contiguous()},
                ["prediction"],
                {"context": {0: "batch", 1: "context"}, "context_ids": {0: "batch", 1: "context"},
                 # a residual predictor's target is always one grid step
                 "target_ids": {0: "batch"} if model.cfg.predictor.residual else {0: "batch", 1: "target"}}))
        elif name == "ac_predictor":
            plans.append(_ac_plan(model, tokens, batch, gen))
        else:
            raise ConfigError(f"unknown graph {name!r}; valid: encoder, predictor, ac_predictor")
    return plans


def _conv_plan(model: JEPAModel, tokens: torch.Tensor, batch: int) -> GraphPlan:
    """A conv predictor answers the runtime's query only: its context steps in, the next step out (fixed shapes)."""
    t, h, w = model.cfg.encoder.grid
    n = context_steps(model.cfg.encoder) * h * w
    ids = torch.arange(n + h * w).expand(batch, -1)
    return GraphPlan("predictor", model.predictor,
                     {"context": tokens[:, t * h * w - n:].contiguous(), "context_ids": ids[:, :n].contiguous(),
                      "target_ids": ids[:, n:].contiguous()},
                     ["prediction"], {"context": {0: "batch"}, "context_ids": {0: "batch"}, "target_ids": {0: "batch"}})


def _ac_plan(model: JEPAModel, tokens: torch.Tensor, batch: int, gen: torch.Generator) -> GraphPlan:
    """The AC predictor takes any number of steps: context (B, steps*H'W', D), actions/states (B, steps, .)."""
    ac = model.cfg.ac_predictor
    _, h, w = model.cfg.encoder.grid
    hw = h * w
    steps = max(2, tokens.shape[1] // hw)
    per_step = tokens[:, :hw]  # (B, H'W', D) realistic tokens, repeated over steps with noise
    def make(n: int) -> dict[str, torch.Tensor]:
        ctx = per_step.repeat(1, n, 1) + 0.1 * torch.randn(batch, n * hw, tokens.shape[-1], generator=gen)
        inputs = {"context": ctx, "actions": torch.randn(batch, n, ac.action_dim, generator=gen),
                  "states": torch.randn(batch, n, ac.state_dim, generator=gen)}
        if ac.use_extrinsics:
            inputs["extrinsics"] = torch.randn(batch, n, ac.action_dim - 1, generator=gen)
        return inputs
    dynamic = {"context": {0: "batch", 1: f"steps*{hw}"}, "actions": {0: "batch", 1: "steps"},
               "states": {0: "batch", 1: "steps"}}
    if ac.use_extrinsics:
        dynamic["extrinsics"] = {0: "batch", 1: "steps"}
    return GraphPlan("ac_predictor", model.ac_predictor, make(steps), ["prediction"], dynamic,
                     variants={"steps+1": make(steps + 1)})


def _dynamic_shapes(plan: GraphPlan) -> dict[str, dict[int, Any]]:
    dims: dict[str, Any] = {}
    shapes: dict[str, dict[int, Any]] = {}
    for inp, axes in plan.dynamic.items():
        shapes[inp] = {}
        for axis, spec in axes.items():
            name, _, factor = spec.partition("*")
            if name not in dims:
                dims[name] = torch.export.Dim(name, min=1, max=65536)
            shapes[inp][axis] = dims[name] * int(factor) if factor else dims[name]
    return shapes


def weight_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def strip_node_metadata(onnx: Any, path: Path) -> None:
    """Drop the exporter's per-node debugging metadata (torch stack traces, FX node names): ~20 % of a small
    graph's bytes (480 KB of the default bundle's 3.9 MB), read by nothing, and it varies with source line numbers."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    for function in model.functions:
        for node in function.node:
            del node.metadata_props[:]
    onnx.save(model, str(path))


def export_graph(plan: GraphPlan, path: Path, opset: int, external_data: bool = False) -> Path | None:
    """torch -> ONNX, then onnx.checker. Returns the external data file, if the weights went to one.

    Single-file ONNX unless `external_data`: protobuf cannot hold more than 2 GB, so fp32 ViT-H / ViT-g graphs
    keep their weights in `<file>.data` beside the graph.
    """
    onnx = require("onnx", "export", "ONNX export")
    require("onnxscript", "export", "ONNX export")
    plan.module.eval()
    try:
        torch.onnx.export(plan.module, tuple(plan.inputs.values()), str(path), dynamo=True,
                          external_data=external_data, opset_version=opset, input_names=list(plan.inputs),
                          output_names=plan.outputs, dynamic_shapes=_dynamic_shapes(plan), optimize=True,
                          verbose=False)
    except Exception as exc:  # the exporter raises many types; wrap with the graph name
        raise ExportError(f"torch.onnx.export of the {plan.name} graph failed: {exc}") from exc
    if not external_data:
        strip_node_metadata(onnx, path)
    try:
        onnx.checker.check_model(str(path), full_check=True)  # a path, so external data is checked too
    except Exception as exc:  # ValidationError, or shape_inference.InferenceError with full_check
        raise ExportError(f"onnx.checker rejected {path.name}: {str(exc).strip().splitlines()[0]}") from exc
    data = sorted(p for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)
    if len(data) > 1:
        raise ExportError(f"{path.name}: the exporter wrote several data files {[p.name for p in data]}")
    if data and not external_data:
        raise ExportError(f"{path.name}: the exporter wrote external data {data[0].name} although single-file "
                          "output was requested")
    return data[0] if data else None


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Max abs diff and cosine similarity of two arrays (flattened)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    denom = np.linalg.norm(a64) * np.linalg.norm(b64)
    cosine = float(a64 @ b64 / denom) if denom > 0 else float(np.array_equal(a64, b64))
    return {"max_abs": float(np.max(np.abs(a64 - b64))) if a64.size else 0.0, "cosine": cosine}


def check_parity(plan: GraphPlan, path: Path, tolerance: float) -> dict[str, Any]:
    """Run ONNX Runtime (CPU) and torch on the plan's seeded inputs, and again at another batch size."""
    ort = require("onnxruntime", "export", "The parity check")
    report: dict[str, Any] = {"outputs": {}, "tolerance": tolerance}
    cases = [("batch", plan.inputs), ("batch+1", _grow_batch(plan.inputs)), *(plan.variants or {}).items()]
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runs = [(label, inputs, session.run(plan.outputs, {k: v.numpy() for k, v in inputs.items()}))
                for label, inputs in cases]
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph / RuntimeException types
        raise ExportError(f"ONNX Runtime could not run {path.name}: {str(exc).strip().splitlines()[0]}") from exc
    for label, inputs, got in runs:
        with torch.no_grad():
            expected = plan.module(*inputs.values())
        expected = expected if isinstance(expected, tuple) else (expected,)
        for name, e, g in zip(plan.outputs, expected, got):
            if tuple(e.shape) != tuple(g.shape):
                raise ExportError(f"{plan.name}: ONNX output {name} has shape {tuple(g.shape)}, torch "
                                  f"{tuple(e.shape)} ({label}); the dynamic axes did not export")
            report["outputs"][name if label == "batch" else f"{name}@{label}"] = compare(e.numpy(), g)
    worst = max(s["max_abs"] for s in report["outputs"].values())
    report["max_abs"] = worst
    report["passed"] = bool(worst <= tolerance)
    return report


def _grow_batch(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Same inputs with one more batch row (checks that the batch axis really is dynamic)."""
    return {k: torch.cat([v, v[:1]], dim=0) for k, v in inputs.items()}


def _versions() -> dict[str, str]:
    versions = {"ami_edge": ami_edge.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("onnx", "onnxscript", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return versions


def graph_io(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Names, dtypes and shapes (named dynamic axes as strings) as the exported ONNX graph declares them."""
    onnx = require("onnx", "export", "ONNX export")
    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value) -> dict[str, Any]:
        t = value.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        return {"name": value.name, "dtype": dtype, "shape": [d.dim_param or d.dim_value for d in t.shape.dim]}

    return [spec(v) for v in graph.input], [spec(v) for v in graph.output]


def export_bundle(loaded: LoadedModel, out: str | Path, graphs: list[str] | None = None,
                  opset: int = DEFAULT_OPSET, tolerance: float = DEFAULT_TOLERANCE, seed: int = 0,
                  name: str | None = None, on_stage: Callable[[str], None] | None = None,
                  external_data_above: int = EXTERNAL_DATA_ABOVE, training: dict[str, Any] | None = None,
                  surprise: str = "mean") -> Bundle:
    """Export `loaded` to `out` (a NAME.amiedge directory) and verify ONNX Runtime against torch.

    Args:
        loaded: the model and its provenance, from a loader.
        out: bundle directory; `.amiedge` is appended when missing. Replaced if it exists.
        graphs: subset of the model's graphs (default: all it has).
        opset: ONNX opset (>= 17).
        tolerance: maximum allowed abs difference between ONNX Runtime and torch, per output.
        seed: seed of the parity inputs.
        name: bundle name (default: the directory name).
        on_stage: called with a short description as each stage starts (progress display).
        external_data_above: weight bytes above which a graph stores its weights in an external data file.
        training: recipe, seed and metrics to record in the manifest (models trained by ami-edge).
        surprise: the runtime's surprise reduction over a step's tokens, `mean` or `topK` (`latent.surprise`).
    Returns:
        The written, re-verified Bundle.
    Raises:
        ExportError: export, onnx.checker or parity failed. The partial bundle is removed.
    """
    model = loaded.model.eval()
    available = model.graphs()
    graphs = graphs or available
    missing = [g for g in graphs if g not in available]
    if missing:
        raise ConfigError(f"the model has no {', '.join(missing)} graph; it has: {', '.join(available)}")
    if opset < MIN_OPSET:
        raise ConfigError(f"--opset {opset} is too old: LayerNormalization needs opset >= {MIN_OPSET}")
    check_surprise_option(surprise, loaded.config.encoder.grid)
    out = bundle_out_path(out)
    name = name or out.name[: -len(SUFFIX)]
    stage = on_stage or (lambda _msg: None)
    with staged_bundle_dir(out) as tmp:
        manifest_graphs, parity = {}, {}
        for plan in plan_graphs(model, graphs, PARITY_BATCH, seed):
            path = tmp / f"{plan.name}.onnx"
            external = weight_bytes(plan.module) > external_data_above
            stage(f"exporting {plan.name} to ONNX (opset {opset}{', external data' if external else ''})")
            data = export_graph(plan, path, opset, external)
            stage(f"checking {plan.name}: ONNX Runtime vs torch")
            report = check_parity(plan, path, tolerance)
            parity[plan.name] = report
            if not report["passed"]:
                raise ExportError(f"{plan.name}: ONNX Runtime differs from torch by {report['max_abs']:.3g} "
                                  f"(tolerance {tolerance:g}); per output: "
                                  + json.dumps(report["outputs"]))
            inputs, outputs = graph_io(path)
            manifest_graphs[plan.name] = {"file": path.name, "precision": "fp32", "sha256": sha256_file(path),
                                          "opset": opset, "inputs": inputs, "outputs": outputs}
            if data is not None:
                manifest_graphs[plan.name].update(data_file=data.name, data_sha256=sha256_file(data))
        manifest = _manifest(loaded, name, manifest_graphs, parity, seed, opset, surprise)
        if training:
            manifest["training"] = training
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        bundle = load_bundle(tmp)  # the runtime's own reader must accept what we wrote
    return Bundle(path=out, manifest=bundle.manifest)


def _manifest(loaded: LoadedModel, name: str, graphs: dict, parity: dict, seed: int, opset: int,
              surprise: str) -> dict[str, Any]:
    cfg = loaded.config
    e = cfg.encoder
    t, h, w = e.grid
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "family": cfg.family,
        "input": {"layout": e.layout, "frames": e.num_frames, "tubelet": e.tubelet_size if e.is_video else 1,
                  "height": e.img_size[0], "width": e.img_size[1], "channels": e.in_chans,
                  "mean": list(loaded.mean), "std": list(loaded.std)},
        "latent": {"tokens": e.num_tokens, "dim": e.embed_dim, "grid": [t, h, w], "surprise": surprise},
        "graphs": graphs,
        "parity": {"seed": seed, "batch": PARITY_BATCH, "reference": "torch (fp32, CPU)",
                   "runtime": "onnxruntime CPUExecutionProvider", "graphs": parity},
        "provenance": {"source": loaded.source, "source_sha256": loaded.source_sha256, "loader": loaded.loader,
                       "ignored_keys": loaded.ignored_keys, "notes": loaded.notes,
                       "exporter": f"torch.onnx.export (dynamo, opset {opset})",
                       "external_data": sorted(g for g, spec in graphs.items() if "data_file" in spec),
                       "versions": _versions(),
                       "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "model": cfg.to_dict(),
    }
