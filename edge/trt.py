"""Native TensorRT: build engines from a bundle's ONNX graphs and run them (`--backend tensorrt`).

Nothing here imports `tensorrt` or `cuda-python` at module level; they come from the [tensorrt] extra on a
workstation, or from JetPack (python3-libnvinfer) on a Jetson. Engines live in the bundle's engine cache
(`ami_edge.engine_cache`), keyed by GPU, compute capability, TensorRT version, ONNX sha256, precision and profile.

Precision: fp16 builds with FP16 kernels allowed; fp32 with none; int8 expects a QDQ graph (QuantizeLinear /
DequantizeLinear nodes from `ami-edge calibrate`): that is TensorRT's *explicit* quantization, the scales are in the
graph, so no calibrator or calibration cache is involved. Layers outside Q/DQ pairs may run in FP16. TensorRT 11
removed the precision flags (every network is strongly typed), so there an engine computes in the graph's own types
and only int8 (QDQ) or the graph's precision can be asked for.

Device memory goes through NVIDIA's cuda-python (`cudart`), the binding TensorRT's own Python samples use.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .engine_cache import (DeviceInfo, EngineCache, EngineKey, Entry, Profile, atomic_write, default_precision,
                           graph_context, profile_for)
from .errors import AmiEdgeError, ConfigError, MissingExtraError
from .gpu import query_device
from .runners import Runner, register_runner

DEFAULT_WORKSPACE_MIB = 2048
INSTALL_HINT = ("pip install 'ami-edge[tensorrt]' on an x86_64 workstation, or on a Jetson use the JetPack image "
                "(Dockerfile.jetson, which has python3-libnvinfer)")

Log = Callable[[str], None]


class EngineBuildError(AmiEdgeError, RuntimeError):
    """TensorRT could not parse the graph, build the engine or run it."""


def _stderr(line: str) -> None:
    print(f"ami-edge: {line}", file=sys.stderr, flush=True)


def import_tensorrt(purpose: str = "TensorRT engines"):
    """The tensorrt module, or MissingExtraError with the one-line fix."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingExtraError(f"{purpose}: TensorRT's Python bindings ('tensorrt') are not installed; "
                                + INSTALL_HINT) from exc
    return tensorrt


def import_cudart():
    from .gpu import _cudart

    try:
        return _cudart()
    except ImportError as exc:
        raise MissingExtraError("the tensorrt backend needs NVIDIA's cuda-python for device memory: "
                                "pip install 'ami-edge[tensorrt]' (or pip install cuda-python)") from exc


def weakly_typed(trt: Any) -> bool:
    """TensorRT <= 10 picks kernel precisions from builder flags (FP16, INT8). TensorRT 11 removed those flags:
    every network is strongly typed, so an engine computes in the ONNX graph's own types (Q/DQ for int8)."""
    return hasattr(trt.BuilderFlag, "FP16")


def choose_precision(requested: str | None, graph_precision: str, weak: bool, trt_version: str) -> str:
    """The engine precision to build: the request, or the default for this TensorRT; refuses what cannot be built.

    Default: int8 for QDQ graphs, else fp16 where TensorRT still lowers precision by flag (`weak`, TensorRT <= 10),
    else the graph's own.
    """
    if requested is None:
        return default_precision(graph_precision) if weak else graph_precision
    if requested == "int8" or weak or requested == graph_precision:
        return requested
    raise ConfigError(f"TensorRT {trt_version} builds strongly typed networks only: the engine computes in the "
                      f"graph's own precision ({graph_precision}), so --precision {requested} cannot be built; pass "
                      f"--precision {graph_precision}, or export the bundle with {requested} graphs")


def require_device(tensorrt_version: str) -> DeviceInfo:
    device = query_device(tensorrt_version=tensorrt_version)
    if device is None:
        raise ConfigError("no NVIDIA GPU found (cuda-python's cudaGetDeviceProperties and nvidia-smi both failed); "
                          "TensorRT engines are built on the device that runs them")
    return device


# ------------------------------------------------------------------------------------------------- progress
def _progress_monitor(trt: Any, log: Log, cancel: threading.Event):
    """An IProgressMonitor (TensorRT >= 10) that logs phases as they start and finish; None on older TensorRT."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        # TensorRT calls these from C++ noexcept methods: nothing may escape them, Ctrl-C included (it becomes a
        # cancel request instead, which step_complete passes on by returning False).
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: dict[str, int] = {}
            self.started: dict[str, float] = {}
            self.lock = threading.Lock()  # TensorRT may call from several threads

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            try:
                with self.lock:
                    depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
                    self.depth[phase_name], self.started[phase_name] = depth, time.monotonic()
                if depth <= 1:  # deeper phases (per-layer tactics) would flood the terminal
                    log(f"{'  ' * depth}{phase_name} ({num_steps} step{'s' * (num_steps != 1)})")
            except BaseException as exc:  # noqa: BLE001
                _swallow(exc, cancel)

        def step_complete(self, phase_name: str, step: int) -> bool:
            try:
                return not cancel.is_set()  # False asks TensorRT to cancel the build
            except BaseException as exc:  # noqa: BLE001
                _swallow(exc, cancel)
                return False

        def phase_finish(self, phase_name: str) -> None:
            try:
                with self.lock:
                    depth = self.depth.pop(phase_name, 0)
                    took = time.monotonic() - self.started.pop(phase_name, time.monotonic())
                if depth == 0:
                    log(f"{phase_name} done in {took:.0f} s")
            except BaseException as exc:  # noqa: BLE001
                _swallow(exc, cancel)

    return Monitor()


def _swallow(exc: BaseException, cancel: threading.Event) -> None:
    """Ctrl-C during a build cancels it; a failing log line (closed pipe) does not stop it."""
    if isinstance(exc, KeyboardInterrupt):
        cancel.set()


class _Heartbeat:
    """Older TensorRT has no progress callback: say every `every` seconds that the build is still going."""

    def __init__(self, log: Log, what: str, every: float = 15.0):
        self.log, self.what, self.every = log, what, every
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self.done.wait(self.every):
            self.log(f"still building {self.what} ({time.monotonic() - start:.0f} s)")

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()


# --------------------------------------------------------------------------------------------------- build
def build_engine(onnx_path: str | Path, profile: Profile, precision: str = "fp16",
                 workspace_mib: int = DEFAULT_WORKSPACE_MIB, timing_cache: bytes = b"",
                 log: Log = _stderr) -> tuple[bytes, bytes]:
    """Parse an ONNX graph and build a serialized TensorRT engine.

    Args:
        onnx_path: the graph (external weight files are found next to it).
        profile: input name -> (min, opt, max) shape; one optimization profile.
        precision: fp16 | int8 (QDQ graph, explicit quantization) | fp32.
        workspace_mib: builder workspace memory pool limit.
        timing_cache: a serialized timing cache from an earlier build on this GPU + TensorRT (b"" for none).
    Returns:
        (serialized engine, serialized timing cache to keep for the next build).
    """
    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weak = weakly_typed(trt)
    flags = 0
    if int(trt.__version__.split(".")[0]) < 10:  # explicit batch is the only mode from TensorRT 10 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if not weak and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # always on from 11 (harmless)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path}: {errors or 'unknown error'}")

    names = {network.get_input(i).name for i in range(network.num_inputs)}
    if names != set(profile):
        raise EngineBuildError(f"{onnx_path}: graph inputs {sorted(names)} differ from the manifest's "
                               f"{sorted(profile)}; re-export the bundle")
    if precision == "int8":
        quantized = any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers))
        if not quantized:
            raise ConfigError(f"{onnx_path} has no QuantizeLinear nodes: int8 engines need a QDQ graph (explicit "
                              "quantization; ami-edge uses no TensorRT calibrator). Quantize the bundle first, or "
                              "build with --precision fp16")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if weak and precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8: layers outside Q/DQ pairs may use FP16 (trtexec --int8 --fp16)
    if weak and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # with Q/DQ layers present this is explicit quantization
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache = config.create_timing_cache(timing_cache) if timing_cache else None
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        if timing_cache:
            log("the saved timing cache is unreadable or from another GPU / TensorRT; starting a new one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    cancel = threading.Event()
    monitor = _progress_monitor(trt, log, cancel)
    if monitor is not None:
        config.progress_monitor = monitor
    start = time.monotonic()
    if monitor is not None:
        serialized = builder.build_serialized_network(network, config)
    else:
        with _Heartbeat(log, Path(onnx_path).name):
            serialized = builder.build_serialized_network(network, config)
    if cancel.is_set():
        raise KeyboardInterrupt
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT messages "
                               "above); try a larger --workspace or another --precision")
    log(f"built {Path(onnx_path).name} in {time.monotonic() - start:.0f} s")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())


def ensure_engine(onnx_path: str | Path, precision: str | None = None, workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                  max_batch: int = 1, rebuild: bool = False, cache_dir: str | Path | None = None,
                  log: Log = _stderr) -> tuple[Entry, bool]:
    """The cached engine for a bundle graph on this device, building it first when there is none.

    Entries with any other key (another ONNX, GPU, TensorRT, precision or profile) are reported and never loaded.
    Returns (entry, whether it was built now).
    """
    ctx = graph_context(onnx_path)
    if ctx is None:
        raise ConfigError(f"{onnx_path} is not a graph of a model bundle (no manifest.json beside it that lists it); "
                          "TensorRT engines are built and cached per bundle")
    trt = import_tensorrt()
    device = require_device(trt.__version__)
    spec = ctx.manifest.graphs[ctx.graph]
    precision = choose_precision(precision, spec.precision, weakly_typed(trt), trt.__version__)
    key = EngineKey.make(ctx.graph, ctx.onnx_sha256, device, precision, profile_for(ctx.manifest, ctx.graph, max_batch))
    cache = EngineCache(ctx.bundle_dir, cache_dir)
    found = cache.lookup(key)
    for line in found.report():
        log(line)
    if found.hit is not None and not rebuild:
        return found.hit, False
    log(f"building the {precision} TensorRT engine for {ctx.graph} on {device.gpu_name} (TensorRT "
        f"{device.tensorrt_version}); a first build takes minutes on a Jetson")
    timing_path = cache.timing_cache_path(device)
    timing = timing_path.read_bytes() if timing_path.is_file() else b""
    engine, timing = build_engine(onnx_path, key.profile_dict(), precision, workspace_mib, timing, log)
    entry = cache.store(key, engine, extra={"onnx_file": spec.file, "workspace_mib": workspace_mib,
                                            "built_unix": int(time.time())})
    try:
        atomic_write(cache.write_dir() / timing_path.name, timing)
    except OSError as exc:
        log(f"timing cache not saved ({exc})")
    for path in cache.prune(key):
        log(f"removed stale {path}")
    return entry, True


# --------------------------------------------------------------------------------------------------- runner
@register_runner("tensorrt")
class TensorRTRunner(Runner):
    """A native TensorRT engine from the bundle's engine cache (built on first use), run with execute_async_v3.

    `tensorrt[:fp16|int8|fp32]` as a backend string; the default precision is `choose_precision`'s (int8 for QDQ
    graphs, else fp16 on TensorRT <= 10). Outputs are fresh arrays each call (the runtime keeps predictions).
    """

    def __init__(self, path: str | Path, precision: str | None = None, cache_dir: str | Path | None = None,
                 max_batch: int = 1):
        super().__init__(path)
        if precision not in (None, "fp16", "int8", "fp32"):
            raise ConfigError(f"tensorrt precision {precision!r} is not valid; choose fp16, int8 or fp32")
        self.precision, self.cache_dir, self.max_batch = precision, cache_dir, max_batch
        self.entry: Entry | None = None
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (device pointer, capacity in bytes)

    def activate(self) -> TensorRTRunner:
        trt = import_tensorrt("the tensorrt backend")
        self._cudart = cudart = import_cudart()
        self.entry, _ = ensure_engine(self.path, self.precision, max_batch=self.max_batch, cache_dir=self.cache_dir)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(self.entry.engine.read_bytes())
        if self.engine is None:
            raise EngineBuildError(f"TensorRT could not deserialize {self.entry.engine}; rebuild it with "
                                   "`ami-edge build-engine --rebuild`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if n not in self._inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._stream = self._cuda(cudart.cudaStreamCreate())
        self._h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._version = trt.__version__
        return super().activate()

    def _cuda(self, result: Any) -> Any:
        """cuda-python returns (error, value...): raise on error, return the value(s)."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._cudart.cudaError_t.cudaSuccess:
            name = self._cudart.cudaGetErrorName(err)[1]
            raise EngineBuildError(f"CUDA error {name.decode() if isinstance(name, bytes) else name} in the "
                                   "tensorrt backend")
        return values[0] if len(values) == 1 else values or None

    def _device(self, name: str, nbytes: int) -> int:
        """A device buffer of at least `nbytes` for tensor `name`, grown (never shrunk) as shapes change."""
        ptr, capacity = self._buffers.get(name, (0, 0))
        if nbytes > capacity:
            if ptr:
                self._cuda(self._cudart.cudaFree(ptr))
            capacity = max(nbytes, 1)
            ptr = int(self._cuda(self._cudart.cudaMalloc(capacity)))
            self._buffers[name] = (ptr, capacity)
        return ptr

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        start = time.perf_counter()
        cudart, stream, ctx = self._cudart, self._stream, self.context
        host = []  # keeps the contiguous inputs alive until the stream is synchronized
        for name in self._inputs:
            if name not in feeds:
                raise ConfigError(f"tensorrt backend: input '{name}' is missing (got {', '.join(feeds)})")
            arr = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])  # int64 ids -> int32 on TensorRT 8
            if not ctx.set_input_shape(name, arr.shape):
                raise ConfigError(f"tensorrt backend: input '{name}' shape {arr.shape} is outside the engine's "
                                  "optimization profile; rebuild with `ami-edge build-engine --max-batch N`")
            ptr = self._device(name, arr.nbytes)
            self._cuda(cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, self._h2d, stream))
            ctx.set_tensor_address(name, ptr)
            host.append(arr)
        outputs = {}
        for name in self._outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise EngineBuildError(f"tensorrt backend: output '{name}' has unresolved shape {shape}")
            out = np.empty(shape, self._dtypes[name])  # fresh per call: callers keep outputs across calls
            ctx.set_tensor_address(name, self._device(name, out.nbytes))
            outputs[name] = out
        if not ctx.execute_async_v3(int(stream)):
            raise EngineBuildError(f"TensorRT execution of {self.entry.engine.name if self.entry else self.path} "
                                   "failed (see the TensorRT messages above)")
        for name, out in outputs.items():
            self._cuda(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[name][0], out.nbytes, self._d2h, stream))
        self._cuda(cudart.cudaStreamSynchronize(stream))
        self.last_inference_s = time.perf_counter() - start
        return outputs

    def deactivate(self) -> None:
        if self.active:
            for ptr, _ in self._buffers.values():
                self._cudart.cudaFree(ptr)
            self._buffers.clear()
            self._cudart.cudaStreamDestroy(self._stream)
            self.context = self.engine = None
        super().deactivate()

    def describe(self) -> str:
        if self.entry is None or self.entry.key is None:
            return "tensorrt (inactive)"
        return f"tensorrt {self._version} ({self.entry.key.precision} engine {self.entry.engine.name})"


# ------------------------------------------------------------------------------------------------------ CLI
def run_build_engine(args: Any) -> int:
    """`ami-edge build-engine BUNDLE`: one line per graph saying whether its engine was cached or built."""
    from .bundle import load_bundle

    import_tensorrt("`ami-edge build-engine`")  # before hashing a large bundle: say what is missing first
    bundle = load_bundle(args.bundle)
    graphs = args.graphs or list(bundle.manifest.graphs)
    unknown = [g for g in graphs if not bundle.has(g)]
    if unknown:
        raise ConfigError(f"--graphs {','.join(unknown)}: bundle {bundle.path} has only "
                          f"{', '.join(bundle.manifest.graphs)}")
    for graph in graphs:
        entry, built = ensure_engine(bundle.graph_path(graph), args.precision, args.workspace, args.max_batch,
                                     args.rebuild, args.cache_dir)
        key = entry.key
        print(f"{graph}: {'built' if built else 'cached'} {entry.engine} ({key.precision if key else '?'}, "
              f"{key.gpu_name if key else '?'}, TensorRT {key.tensorrt_version if key else '?'})", flush=True)
    return 0
