"""`ami-edge compare A B --source URI`: two bundles (or one bundle on two backends) on the same frames.

In the manner of Polygraphy's `run --onnxrt --trt`: both sides run the real streaming pipeline (`Runtime`) on one
deterministic list of frames read once from the source, every encoder and predictor output is recorded, and a
table per output reports max abs, mean abs and cosine (mean and worst frame); surprise, a scalar per frame, also
gets its Pearson correlation. `--atol` / `--min-cosine` turn the table into a pass/fail check (exit 1).

Runtime side: no torch, no onnx. `export/quantize.py` uses the same functions for its accuracy report.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .bundle import Bundle, load_bundle
from .errors import AmiEdgeError, ConfigError
from .runners import Runner

OUTPUTS = ("latent", "prediction", "surprise")


class CompareError(AmiEdgeError):
    """The two sides differ by more than the tolerance asked for."""


def read_frames(source: str, count: int) -> list[np.ndarray]:
    """`count` RGB frames (H, W, 3) uint8 from a source URI, read once so both sides see the very same pixels."""
    from .sources import open_source

    frames: list[np.ndarray] = []
    with open_source(source) as src:
        for frame in src:
            frames.append(np.array(frame.image, copy=True))
            if len(frames) >= count:
                break
    if not frames:
        raise ConfigError(f"{source} gave no frames")
    return frames


class _Recorder(Runner):
    """Wraps a runner and keeps its latest outputs, so the pipeline's own calls are what gets compared."""

    def __init__(self, inner: Runner):
        super().__init__(inner.path)
        self.inner, self.last = inner, {}
        self.name = inner.name

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.last = self.inner.infer(feeds)
        self.last_inference_s = self.inner.last_inference_s
        return self.last

    def deactivate(self) -> None:
        self.inner.deactivate()

    def describe(self) -> str:
        return self.inner.describe()


@dataclass
class Trace:
    """What one side produced, one row per state (the frames after the clip buffer filled)."""

    label: str
    latent: np.ndarray  # (S, N, D) encoder tokens
    prediction: np.ndarray | None  # (S, H'W', D) predicted tokens of the next step, or None without a predictor
    surprise: np.ndarray  # (S,) raw surprise (prediction error), NaN while warming up
    backend: str


def run_trace(model: str | Path | Bundle, frames: list[np.ndarray], backend: str = "auto") -> Trace:
    """Stream `frames` through `Runtime` on `model` and record every encoder / predictor output and surprise."""
    from .runtime import Runtime

    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    latent, prediction, surprise = [], [], []
    with Runtime(model=bundle, source=frames, backend=backend) as rt:
        rt.encoder = _Recorder(rt.encoder)
        if rt.predictor is not None:
            rt.predictor = _Recorder(rt.predictor)
        for state in rt.stream():
            latent.append(rt.encoder.last["tokens"][0])
            if rt.predictor is not None:
                prediction.append(rt.predictor.last["prediction"][0])
            surprise.append(np.nan if state.raw_surprise is None else state.raw_surprise)
        described = rt.encoder.describe()
    if not latent:
        raise ConfigError(f"{len(frames)} frames do not fill one clip of {bundle.manifest.input.frames} frames; "
                          "pass more --frames")
    return Trace(label=str(bundle.path), latent=np.stack(latent), backend=described,
                 prediction=np.stack(prediction) if prediction else None, surprise=np.array(surprise, np.float64))


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row cosine similarity of (S, ...) arrays, flattened per row. Two zero rows count as identical."""
    a64, b64 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    dot = (a64 * b64).sum(1)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    same = np.all(a64 == b64, axis=1).astype(np.float64)
    return np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), same)


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation over the entries finite in both; None when fewer than 3 or one side is constant."""
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    x, y = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else None


def compare_traces(a: Trace, b: Trace) -> dict[str, dict[str, Any]]:
    """Per output: elements, max_abs, mean_abs, cosine (mean over frames), cosine_min; surprise: pearson."""
    out: dict[str, dict[str, Any]] = {}
    for name in ("latent", "prediction"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            continue
        if x.shape != y.shape:
            raise ConfigError(f"{name}: {a.label} gives shape {x.shape[1:]}, {b.label} gives {y.shape[1:]}; "
                              "only bundles of the same model can be compared")
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        cos = _cosines(x, y)
        out[name] = {"elements": int(x.size), "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                     "cosine": float(cos.mean()), "cosine_min": float(cos.min())}
    ok = np.isfinite(a.surprise) & np.isfinite(b.surprise)
    if ok.any():
        diff = np.abs(a.surprise[ok] - b.surprise[ok])
        out["surprise"] = {"elements": int(ok.sum()), "max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
                           "pearson": pearson(a.surprise, b.surprise)}
    return out


def format_table(results: dict[str, dict[str, Any]]) -> str:
    def num(v: Any, fmt: str) -> str:
        return "--" if v is None else format(v, fmt)

    lines = [f"{'output':<11}{'elements':>10}{'max abs':>12}{'mean abs':>12}{'cosine':>10}{'cos min':>10}"
             f"{'pearson':>10}"]
    for name in OUTPUTS:
        r = results.get(name)
        if r is None:
            continue
        lines.append(f"{name:<11}{r['elements']:>10}{r['max_abs']:>12.3e}{r['mean_abs']:>12.3e}"
                     f"{num(r.get('cosine'), '.6f'):>10}{num(r.get('cosine_min'), '.6f'):>10}"
                     f"{num(r.get('pearson'), '.4f'):>10}")
    return "\n".join(lines)


def check(results: dict[str, dict[str, Any]], atol: float | None, min_cosine: float | None) -> list[str]:
    """What fails `--atol` (max abs of latent / prediction) and `--min-cosine` (their worst-frame cosine)."""
    failures = []
    for name in ("latent", "prediction"):
        r = results.get(name)
        if r is None:
            continue
        if atol is not None and r["max_abs"] > atol:
            failures.append(f"{name} max abs {r['max_abs']:.3g} > --atol {atol:g}")
        if min_cosine is not None and r["cosine_min"] < min_cosine:
            failures.append(f"{name} cosine {r['cosine_min']:.6f} < --min-cosine {min_cosine:g}")
    return failures


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", help="bundle A (path or shipped name)")
    p.add_argument("b", nargs="?", help="bundle B (default: A again, to compare two backends)")
    p.add_argument("--source", default="synthetic://bouncing?seed=11",
                   help="frame source; read once, both sides get the same frames (default synthetic://bouncing"
                        "?seed=11)")
    p.add_argument("--frames", type=int, default=64, help="frames to read (default 64)")
    p.add_argument("--backend-a", default="auto", help="backend of A: auto | onnxruntime[:cpu|cuda|tensorrt]")
    p.add_argument("--backend-b", default="auto", help="backend of B (default auto)")
    p.add_argument("--atol", type=float, help="fail when latent / prediction max abs exceeds this")
    p.add_argument("--min-cosine", type=float, help="fail when latent / prediction cosine (worst frame) is below")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    b = args.b or args.a
    if args.b is None and args.backend_a == args.backend_b:
        raise ConfigError("compare needs two bundles, or one bundle with different --backend-a / --backend-b")
    if args.frames <= 0:
        raise ConfigError(f"--frames must be positive, got {args.frames}")
    bundle_a, bundle_b = load_bundle(args.a), load_bundle(b)
    frames = read_frames(args.source, args.frames)
    ta = run_trace(bundle_a, frames, args.backend_a)
    tb = run_trace(bundle_b, frames, args.backend_b)
    results = compare_traces(ta, tb)
    failures = check(results, args.atol, args.min_cosine)
    if args.json:
        print(json.dumps({"a": {"bundle": ta.label, "backend": ta.backend}, "b": {"bundle": tb.label,
                          "backend": tb.backend}, "frames": len(frames), "outputs": results,
                          "passed": not failures}, indent=2))
    else:
        print(f"A: {ta.label} [{ta.backend}]\nB: {tb.label} [{tb.backend}]\n{len(frames)} frames from "
              f"{args.source}, {len(ta.latent)} states\n{format_table(results)}")
        print("FAILED" if failures else "PASSED", flush=True)
    sys.stdout.flush()
    if failures:
        raise CompareError("; ".join(failures))
    return 0
