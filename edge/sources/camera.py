"""Cameras: `v4l2:///dev/video0` (and bare `0`), `csi://0` (Jetson, GStreamer), `rtsp://...`, and `auto`.

All are OpenCV captures behind one base: frames come with seq and t_capture, the source is live (the runtime
keeps only the newest frame), and a camera that disappears is reopened with backoff while the stream waits.
Parameters: `width`, `height`, `fps` (requested from the device), e.g. `v4l2:///dev/video0?width=640&height=480`.
"""

from __future__ import annotations

import glob
import threading
import time
from collections.abc import Iterator

import cv2

from .base import Frame, Query, Source, SourceError, SourceURI, open_source, register_source


class CaptureSource(Source):
    """An OpenCV VideoCapture that reconnects with backoff when reads fail."""

    live = True

    def __init__(self, uri: SourceURI, target, api: int = cv2.CAP_ANY, width: int | None = None,
                 height: int | None = None, fps: float | None = None):
        self.uri, self.target, self.api = uri.raw, target, api
        self.width, self.height, self.fps = width, height, fps
        self.reconnects = 0
        self._stop = threading.Event()
        self._cap = self._open()
        if self._cap is None:
            raise SourceError(f"{uri.raw}: cannot open {target!r} (not connected, busy, or no permission: check "
                              "`ami-edge doctor` and that your user is in the 'video' group)")

    def _open(self) -> cv2.VideoCapture | None:
        cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            return None
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, self.width), (cv2.CAP_PROP_FRAME_HEIGHT, self.height),
                            (cv2.CAP_PROP_FPS, self.fps)):
            if value:
                cap.set(prop, value)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where the backend honours it: no queue of stale frames
        return cap

    def __iter__(self) -> Iterator[Frame]:
        seq, delay = 0, 0.05
        while not self._stop.is_set():
            ok, bgr = (False, None) if self._cap is None else self._cap.read()
            if not ok:  # camera lost (or the stream ended): reopen with backoff, the stream resumes
                if self._cap is not None:
                    self._cap.release()
                    self._cap = None
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, 2.0)
                self._cap = self._open()
                if self._cap is not None:
                    self.reconnects += 1
                continue
            delay = 0.05
            yield Frame(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), seq=seq, t_capture=time.monotonic())
            seq += 1

    def close(self) -> None:
        self._stop.set()

    def describe(self) -> str:
        return f"camera {self.uri}"


def _hints(q: Query) -> dict:
    return {"width": q.int("width", None, 1), "height": q.int("height", None, 1), "fps": q.float("fps", None)}


@register_source("v4l2")
def open_v4l2(uri: SourceURI) -> CaptureSource:
    q = Query(uri)
    hints = _hints(q)
    q.finish()
    target = uri.name + uri.path  # v4l2:///dev/video0 -> /dev/video0, v4l2://0 -> 0
    device = int(target) if target.isdigit() else target
    api = cv2.CAP_V4L2 if isinstance(device, int) or str(device).startswith("/dev/video") else cv2.CAP_ANY
    return CaptureSource(uri, device, api, **hints)


def csi_pipeline(sensor: int, width: int, height: int, fps: float, flip: int = 0) -> str:
    """The GStreamer pipeline for a Jetson CSI camera, ending in an appsink that keeps only the newest buffer."""
    return (f"nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),width={width},height={height},"
            f"framerate={int(fps)}/1,format=NV12 ! nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! "
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=1 max-buffers=1 sync=false")


def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    return "GStreamer:" in info and info.split("GStreamer:")[1].split()[0].upper() == "YES"


@register_source("csi")
def open_csi(uri: SourceURI) -> CaptureSource:
    q = Query(uri)
    width, height = q.int("width", 1280, 1), q.int("height", 720, 1)
    fps, flip = q.float("fps", 30.0), q.int("flip", 0, 0, 7)
    q.finish()
    sensor = int(uri.name or 0) if (uri.name or "0").isdigit() else None
    if sensor is None:
        raise SourceError(f"{uri.raw}: the CSI sensor id must be a number, e.g. csi://0")
    if not opencv_has_gstreamer():
        raise SourceError(f"{uri.raw}: this OpenCV has no GStreamer support; CSI cameras need JetPack's OpenCV "
                          "(pip's opencv-python has none; see Dockerfile.jetson)")
    return CaptureSource(uri, csi_pipeline(sensor, width, height, fps, flip), cv2.CAP_GSTREAMER)


@register_source("rtsp")
def open_rtsp(uri: SourceURI) -> CaptureSource:
    return CaptureSource(uri, uri.raw, cv2.CAP_FFMPEG)


@register_source("auto")
def open_auto(uri: SourceURI) -> Source:
    """The first camera that opens, else the synthetic world. `describe()` says which was chosen."""
    for device in sorted(glob.glob("/dev/video*")):
        try:
            return open_source(f"v4l2://{device}")
        except SourceError:
            continue
    return open_source("synthetic://bouncing?fps=30")
