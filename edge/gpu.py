"""What this machine's GPU and TensorRT are: the device half of an engine-cache key (edge/engine_cache.py).

No TensorRT import at module level: the library version is read through the C API where the loader finds it, and
the GPU through cuda-python or nvidia-smi. Every function answers None rather than failing on a machine without them.
"""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

from .engine_cache import DeviceInfo


def tensorrt_library_version() -> str | None:
    """The version of the libnvinfer the dynamic loader finds (what ONNX Runtime's TensorRT EP links), read without
    importing the Python bindings; else the bindings' version (pip wheels keep libnvinfer off the loader path).

    `getInferLibVersion()` is part of TensorRT's C API: major * 10000 + minor * 100 + patch since TensorRT 10,
    major * 1000 + minor * 100 + patch before.
    """
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        v = int(lib.getInferLibVersion())
        major, rest = (v // 10000, v % 10000) if v >= 100000 else (v // 1000, v % 1000)
        return f"{major}.{rest // 100}.{rest % 100}"
    try:
        import tensorrt

        return str(tensorrt.__version__)
    except ImportError:
        return None


def _cudart():
    """CUDA runtime bindings from NVIDIA's cuda-python (new and old module layouts)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # cuda-python < 12.6
    return cudart


def gpu_identity(device: int = 0) -> tuple[str, str] | None:
    """(GPU name, compute capability "major.minor") from cuda-python, else nvidia-smi; None without a GPU."""
    try:
        cudart = _cudart()
        err, props = cudart.cudaGetDeviceProperties(device)
        if err == cudart.cudaError_t.cudaSuccess:
            name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
            return name.strip("\0 "), f"{props.major}.{props.minor}"
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, f"--id={device}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        line = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
        name, _, cc = line.rpartition(",")
        if name and re.fullmatch(r"\d+\.\d+", cc.strip()):
            return name.strip(), cc.strip()
    return None


def query_device(device: int = 0, tensorrt_version: str | None = None) -> DeviceInfo | None:
    """This machine's GPU and TensorRT, or None when either cannot be determined (then nothing is cached).

    tensorrt_version: the version of the TensorRT that will build the engine, when the caller already has it
    (the native builder passes `tensorrt.__version__`); else the library's.
    """
    gpu, trt_version = gpu_identity(device), tensorrt_version or tensorrt_library_version()
    if gpu is None or trt_version is None:
        return None
    return DeviceInfo(gpu_name=gpu[0], compute_capability=gpu[1], tensorrt_version=trt_version)
