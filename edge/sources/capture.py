"""Latest-frame capture: a live source is drained in its own thread and only the newest frame is kept.

A slow model then never builds lag (0.5-2 s of lag from queued camera frames is the most common camera complaint:
opencv#21446, opencv#13281, JetsonHacksNano/CSI-Camera#45). Frames the consumer never saw are counted as drops.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from .base import Frame, Source


class LatestFrame(Source):
    """Wrap a live source: iterate to get the newest frame each time; `dropped` counts the frames skipped."""

    def __init__(self, source: Source):
        self.source, self.uri = source, source.uri
        self.dropped = 0
        self.delivered = 0
        self.captured = 0
        self.captured_at_take = 0  # frames captured when the last frame was handed over (it was the newest)
        self._frame: Frame | None = None
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._capture, name=f"capture {source.uri}", daemon=True)
        self._thread.start()

    def _capture(self) -> None:
        try:
            for frame in self.source:
                with self._cond:
                    self.captured += 1
                    if self._frame is not None:
                        self.dropped += 1  # the consumer was busy: the older frame is skipped, never queued
                    self._frame = frame
                    self._cond.notify()
                if self._done:
                    break
        except BaseException as exc:  # re-raised in the consumer's thread
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def __iter__(self) -> Iterator[Frame]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._frame is not None or self._done)
                frame, self._frame = self._frame, None
                self.captured_at_take = self.captured
                if frame is None:
                    if self._error is not None:
                        raise self._error
                    return
            self.delivered += 1
            yield frame

    def close(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify_all()
        self.source.close()
        self._thread.join(timeout=5)

    def describe(self) -> str:
        return self.source.describe()
