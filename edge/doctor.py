"""`ami-edge doctor`: what this machine can run, and what to do about what is missing."""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def _ort() -> Check:
    try:
        ort = importlib.import_module("onnxruntime")
    except ImportError:
        return Check("onnxruntime", False, "not installed", "pip install ami-edge (or onnxruntime-gpu on a Jetson)")
    providers = ort.get_available_providers()
    gpu = [p for p in providers if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider")]
    return Check("onnxruntime", True, f"{ort.__version__}: {', '.join(providers)}",
                 "" if gpu else "CPU only: on a Jetson install the onnxruntime-gpu wheel built for your JetPack")


def _gpu() -> Check:
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            return Check("gpu", True, out.stdout.strip().splitlines()[0])
    try:
        with open("/proc/device-tree/model") as fh:  # Jetson: no nvidia-smi, the model is in the device tree
            model = fh.read().strip("\0\n ")
        if "NVIDIA" in model or "Jetson" in model:
            return Check("gpu", True, model)
    except OSError:
        pass
    return Check("gpu", False, "no NVIDIA GPU found", "runs on CPU; for GPU use a Jetson or a CUDA machine")


def _tensorrt() -> Check:
    try:
        trt = importlib.import_module("tensorrt")
        return Check("tensorrt", True, f"{trt.__version__}; {_engine_cache()}")
    except ImportError:
        return Check("tensorrt", False, "not importable", "JetPack ships python3-libnvinfer; elsewhere pip install "
                                                           "'ami-edge[tensorrt]'")


def _engine_cache() -> str:
    """What TensorRT engines are keyed by here, and what the shared fallback engine cache holds."""
    from .engine_cache import default_fallback_dir
    from .gpu import query_device

    fallback = default_fallback_dir()
    count = len(list(fallback.glob("*.engine"))) if fallback.is_dir() else 0
    device = query_device()
    keyed = (f"engines keyed by {device.gpu_name} (sm {device.compute_capability}), TensorRT "
             f"{device.tensorrt_version}" if device else "no GPU found to key engines by")
    return f"{keyed}; fallback engine cache {fallback} ({count} engine{'s' * (count != 1)})"


def _opencv() -> Check:
    import cv2

    from .sources.camera import opencv_has_gstreamer

    gst = opencv_has_gstreamer()
    return Check("opencv", True, f"{cv2.__version__}, GStreamer {'yes' if gst else 'no'}",
                 "" if gst else "csi:// cameras need an OpenCV built with GStreamer (JetPack's, not pip's)")


def _cameras() -> Check:
    devices = sorted(glob.glob("/dev/video*"))
    if devices:
        return Check("cameras", True, ", ".join(devices))
    return Check("cameras", False, "no /dev/video*", "plug a camera, or use --source synthetic:// or a video file")


def _serial() -> Check:
    from serial.tools import list_ports

    ports = [f"{p.device} ({p.vid:04x}:{p.pid:04x})" if p.vid else p.device for p in list_ports.comports()]
    if ports:
        return Check("serial", True, ", ".join(ports))
    return Check("serial", False, "no serial ports", "plug the MCU; ports appear under /dev/serial/by-id/")


def checks() -> list[Check]:
    from . import __version__

    return [Check("python", True, platform.python_version()), Check("ami-edge", True, __version__), _ort(), _gpu(),
            _tensorrt(), _opencv(), _cameras(), _serial()]


def run(args: argparse.Namespace) -> int:
    results = checks()
    if args.json:
        print(json.dumps([asdict(c) for c in results], indent=2))
        return 0
    for c in results:
        print(f"{'ok ' if c.ok else '-- '} {c.name:<12} {c.detail}" + (f"\n     {'':<12} fix: {c.fix}" if c.fix else ""))
    return 0
