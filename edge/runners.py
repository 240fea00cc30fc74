"""Inference backends behind one runner interface (Polygraphy's runners are the model).

A runner loads one ONNX graph, `activate()`s (creates the session / engine), `infer(feeds)` returns named outputs
and records how long the last call took, `deactivate()` frees it. Runners are a registry keyed by name, so a
backend is one class and one decorator.
"""

from __future__ import annotations

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

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        super().__init__(path)
        if device not in ("auto", *ORT_PROVIDERS):
            raise ConfigError(f"device={device!r} is not valid; choose one of: auto, {', '.join(ORT_PROVIDERS)}")
        self.device, self.threads = device, threads
        self.session = None
        self.providers: list[str] = []

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
        if self.threads:
            options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
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


def make_runner(backend: str, path: str | Path) -> Runner:
    """`auto` | `onnxruntime` | `onnxruntime:cpu|cuda|tensorrt` -> an inactive runner for the graph at `path`."""
    name, _, device = backend.partition(":")
    if name == "auto":
        name = "onnxruntime"
    if name not in RUNNERS:
        raise ConfigError(f"unknown backend {backend!r}; available: auto, "
                          + ", ".join(f"{n}[:{'|'.join(ORT_PROVIDERS)}]" if n == "onnxruntime" else n
                                      for n in RUNNERS))
    cls = RUNNERS[name]
    return cls(path, device=device or "auto") if cls is OnnxRuntimeRunner else cls(path)
