"""Inference backends behind one runner interface (Polygraphy's runners are the model).

A runner loads one ONNX graph, `activate()`s (creates the session / engine), `infer(feeds)` returns named outputs
and records how long the last call took, `deactivate()` frees it. Runners are a registry keyed by name, so a
backend is one class and one decorator.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ConfigError

RUNNERS: dict[str, type[Runner]] = {}


def register_runner(name: str) -> Callable[[type[Runner]], type[Runner]]:
    def wrap(cls: type[Runner]) -> type[Runner]:
        RUNNERS[name] = cls
        cls.name = name
        return cls

    return wrap


class Runner:
    name = "base"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last_inference_s = 0.0
        self.active = False

    def activate(self) -> Runner:
        self.active = True
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def deactivate(self) -> None:
        self.active = False

    def describe(self) -> str:
        return self.name

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()


# Preference order when the backend is "auto": the fastest provider this ONNX Runtime build offers.
ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                 "cpu": "CPUExecutionProvider"}


@register_runner("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with the TensorRT, CUDA or CPU execution provider, by availability or forced by `device`."""

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None,
                 precision: str | None = None):
        super().__init__(path)
        if device not in ("auto", *ORT_PROVIDERS):
            raise ConfigError(f"device={device!r} is not valid; choose one of: auto, {', '.join(ORT_PROVIDERS)}")
        self.device, self.threads = device, threads
        self.precision = precision  # TensorRT EP only; None keeps the graph's own precision
        self.session = None
        self.providers: list[str] = []
        self.trt_options: dict[str, str] = {}

    def activate(self) -> OnnxRuntimeRunner:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.device == "auto":
            providers = [p for p in ORT_PROVIDERS.values() if p in available]
        else:
            wanted = ORT_PROVIDERS[self.device]
            if wanted not in available:
                raise ConfigError(f"backend device '{self.device}' needs {wanted}, which this onnxruntime build "
                                  f"lacks (available: {', '.join(available)}); on a Jetson install onnxruntime-gpu")
            providers = [wanted, "CPUExecutionProvider"] if wanted != "CPUExecutionProvider" else [wanted]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads or default_threads()
        chosen: list = list(providers)
        if ORT_PROVIDERS["tensorrt"] in providers:  # engine + timing caches under the bundle's engine-cache key
            self.trt_options = tensorrt_ep_options(self.path, ort.__version__, self.precision)
            chosen[providers.index(ORT_PROVIDERS["tensorrt"])] = (ORT_PROVIDERS["tensorrt"], self.trt_options)
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=chosen)
        self.providers = self.session.get_providers()
        self._outputs = [o.name for o in self.session.get_outputs()]
        return super().activate()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        values = self.session.run(self._outputs, feeds)
        self.last_inference_s = time.perf_counter() - start
        return dict(zip(self._outputs, values))

    def deactivate(self) -> None:
        self.session = None
        super().deactivate()

    def describe(self) -> str:
        return f"onnxruntime ({', '.join(self.providers) or 'inactive'})"


def tensorrt_ep_options(path: str | Path, ort_version: str, precision: str | None = None) -> dict[str, str]:
    """ONNX Runtime TensorRT EP options whose engine / timing cache directory is derived from the same key as
    `ami-edge build-engine`'s engines (GPU, compute capability, TensorRT version, ONNX sha256, precision, profile).

    Without a bundle around the graph, or when the GPU or TensorRT version cannot be determined, the EP runs without
    an engine cache: an engine that cannot be keyed is never cached, so it can never be loaded stale.
    """
    from .engine_cache import CacheError, EngineCache, EngineKey, graph_context, ort_tensorrt_options, profile_for
    from .gpu import query_device
    from .errors import BundleError

    ctx, device = graph_context(path), query_device()
    if ctx is None or device is None:
        why = "the graph is not in a bundle" if ctx is None else "the GPU or TensorRT version is unknown"
        print(f"ami-edge: TensorRT EP engine cache off for {Path(path).name}: {why}", file=sys.stderr)
        return {}
    spec = ctx.manifest.graphs[ctx.graph]
    try:
        key = EngineKey.make(ctx.graph, ctx.onnx_sha256, device, precision or spec.precision,
                             profile_for(ctx.manifest, ctx.graph), runtime=f"onnxruntime-{ort_version}")
        return ort_tensorrt_options(EngineCache(ctx.bundle_dir), key)
    except (CacheError, BundleError, OSError) as exc:
        print(f"ami-edge: TensorRT EP engine cache off for {Path(path).name}: {exc}", file=sys.stderr)
        return {}


@register_runner("torch")
class TorchRunner(Runner):
    """Reference only (Polygraphy's role for a framework runner): the torch model the bundle was exported from, run
    on the same feeds, to check a backend against it (`ami-edge compare A A --backend-b torch`). Needs the [export]
    extra and the checkpoint recorded in the bundle's provenance, unchanged (sha256); presets are rebuilt from their
    seed. Never a deployment backend: a Jetson installs no torch."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.module = None

    def activate(self) -> TorchRunner:
        from .engine_cache import graph_context
        from .errors import MissingExtraError

        ctx = graph_context(self.path)
        if ctx is None:
            raise ConfigError(f"backend torch needs a bundle around {self.path} (its manifest names the checkpoint)")
        try:
            import torch

            from .export.loaders import LoadOptions, load_checkpoint
        except ImportError as exc:
            raise MissingExtraError("backend torch (reference) needs torch, which is not installed: "
                                    "pip install 'ami-edge[export]'") from exc
        m = ctx.manifest
        source, digest, loader = (m.provenance.get(k) for k in ("source", "source_sha256", "loader"))
        if not str(source).startswith("preset:"):
            from .bundle import sha256_file

            path = Path(str(source))
            if not path.is_file() or (digest and sha256_file(path) != digest):
                raise ConfigError(f"backend torch needs the checkpoint {ctx.bundle_dir.name} was exported from, "
                                  f"unchanged: {source} is {'changed' if path.is_file() else 'not there'}")
        family = str(loader).split(":")[-1] if str(loader).startswith(("official:", "hf:")) else "auto"
        family = "hf" if str(loader).startswith("hf:") else family
        opts = LoadOptions(resolution=(m.input.height, m.input.width), frames=m.input.frames)
        notes = [n for n in m.provenance.get("notes") or [] if isinstance(n, str) and n.startswith("seed=")]
        seed = int(notes[0][5:]) if notes else int(m.parity.get("seed", 0))  # presets record their weight seed
        loaded = load_checkpoint(source, family=family, opts=opts, seed=seed)
        same_weights = not digest or loaded.source_sha256 == digest  # a preset's digest is over its weights
        if not same_weights or json.loads(json.dumps(loaded.model.cfg.to_dict())) != m.model:  # manifest: lists
            raise ConfigError(f"backend torch: {source} no longer builds the model in {ctx.bundle_dir.name}")
        self.module = getattr(loaded.model.eval(), ctx.graph)
        self._torch = torch
        self._outputs = [t.name for t in m.graphs[ctx.graph].outputs]
        return super().activate()

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        with self._torch.inference_mode():
            out = self.module(*(self._torch.from_numpy(np.ascontiguousarray(v)) for v in feeds.values()))
        self.last_inference_s = time.perf_counter() - t0
        return {self._outputs[0]: out.numpy()}

    def deactivate(self) -> None:
        self.module = None
        super().deactivate()

    def describe(self) -> str:
        return "torch (reference, CPU)"


def default_threads() -> int:
    """ONNX Runtime intra-op threads: every core but one. The spare core runs the capture thread, preprocessing and
    publishing while the model runs, instead of preempting one of its threads (a parallel op then waits for the
    slowest thread). Measured on 2 cores with the default bundle (`ami-edge bench`, 5 runs): 1 thread vs ORT's
    default of 2 gave the same or better throughput and capture-to-state p99 3.3-4.4 ms instead of 10.6 ms.
    `AMI_EDGE_ORT_THREADS` overrides it."""
    import os

    value = os.environ.get("AMI_EDGE_ORT_THREADS", "")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ConfigError(f"AMI_EDGE_ORT_THREADS={value!r} must be a positive integer")
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def make_runner(backend: str, path: str | Path) -> Runner:
    """`auto` | `onnxruntime[:cpu|cuda|tensorrt]` | `tensorrt[:fp16|int8|fp32]` -> an inactive runner for `path`."""
    name, _, option = backend.partition(":")
    if name == "auto":
        name = "onnxruntime"
    if name not in RUNNERS:
        hints = {"onnxruntime": f"onnxruntime[:{'|'.join(ORT_PROVIDERS)}]", "tensorrt": "tensorrt[:fp16|int8|fp32]"}
        raise ConfigError(f"unknown backend {backend!r}; available: auto, "
                          + ", ".join(hints.get(n, n) for n in RUNNERS))
    cls = RUNNERS[name]
    if cls is OnnxRuntimeRunner:
        return cls(path, device=option or "auto")
    if name == "tensorrt":
        return cls(path, precision=option or None)
    return cls(path)


# The native TensorRT runner registers itself as "tensorrt"; its module imports tensorrt only when activated.
from . import trt as _trt  # noqa: E402,F401
