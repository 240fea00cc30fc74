"""`file://clip.mp4`, `file:///abs/dir/` and bare paths: a video file or a folder of images.

Parameters: `loop=1` replays forever, `fps=N` paces like a camera (default: as fast as read). A file that vanishes
is waited for with backoff (when looping, or before the first frame) and the stream resumes when it is back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from .base import Frame, Pacer, Query, Source, SourceError, SourceURI, register_source

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


@register_source("file")
class FileSource(Source):
    def __init__(self, uri: SourceURI):
        q = Query(uri)
        self.loop = q.bool("loop", False)
        self.fps = q.float("fps", None)
        q.finish()
        self.uri = uri.raw
        self.path = Path(uri.name + uri.path).expanduser()
        if not self.path.exists():
            raise SourceError(f"{uri.raw}: {self.path} does not exist")
        if self.path.is_dir():
            if not self._images():
                raise SourceError(f"{uri.raw}: {self.path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif self.path.suffix.lower() not in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
            raise SourceError(f"{uri.raw}: {self.path.suffix or 'no suffix'} is not a video or image file")
        else:
            cap = cv2.VideoCapture(str(self.path))
            ok = cap.isOpened() and cap.read()[0]
            cap.release()
            if not ok:
                raise SourceError(f"{uri.raw}: OpenCV cannot decode {self.path} (corrupt, or a codec it lacks)")
        self.live = self.fps is not None
        self._stop = threading.Event()

    def _images(self) -> list[Path]:
        return sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)

    def _read_once(self) -> Iterator:
        if self.path.is_dir():
            for p in self._images():
                image = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if image is not None:
                    yield image
            return
        cap = cv2.VideoCapture(str(self.path))
        try:
            while not self._stop.is_set():
                ok, image = cap.read()
                if not ok:
                    return
                yield image
        finally:
            cap.release()

    def _wait_for_file(self) -> bool:
        delay = 0.05
        while not self.path.exists():
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, 2.0)
        return True

    def __iter__(self) -> Iterator[Frame]:
        pacer, seq = Pacer(self.fps), 0
        while not self._stop.is_set():
            if not self._wait_for_file():
                return
            for bgr in self._read_once():
                if self._stop.is_set():
                    return
                pacer.wait()
                yield Frame(image=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), seq=seq, t_capture=time.monotonic())
                seq += 1
            if not self.loop:
                return

    def close(self) -> None:
        self._stop.set()

    def describe(self) -> str:
        kind = "image folder" if self.path.is_dir() else "video file"
        return f"{kind} {self.path}" + (" (loop)" if self.loop else "")
