"""Frame sources chosen by URI scheme: a registry filled by `@register_source("scheme")`.

`open_source("synthetic://bouncing?seed=3&size=128")` parses the URI once, validates its query against what the
scheme accepts, and returns an iterable `Source` of `Frame`s. Adding a scheme is one file and one decorator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from ..errors import AmiEdgeError, ConfigError


class SourceError(AmiEdgeError, ValueError):
    """A source URI is malformed, names an unknown scheme, or cannot be opened."""


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        seq: frame number from the source, starting at 0 (gaps mean dropped frames).
        t_capture: capture time, `time.monotonic()` seconds.
        action: the action taken at this frame, when the source has an agent (pusher: 2-D velocity).
        state: proprioceptive state at this frame, when the source has an agent (pusher: 2-D position).
    """

    image: np.ndarray
    seq: int
    t_capture: float
    action: np.ndarray | None = None
    state: np.ndarray | None = None


class Source:
    """Base of every frame source: iterate for frames; `close()` (or `with`) releases the device."""

    uri: str = ""
    live: bool = False  # frames arrive on their own clock (a camera): the runtime keeps only the latest

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying device or file. Idempotent."""

    def describe(self) -> str:
        return self.uri

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SourceURI:
    """A parsed source URI: `scheme://name/path?key=value&...`."""

    raw: str
    scheme: str
    name: str
    path: str
    query: dict[str, str]


class Query:
    """Typed, validated access to a URI's query; `finish()` rejects keys nobody asked for, listing the valid ones."""

    def __init__(self, uri: SourceURI):
        self.uri = uri
        self.remaining = dict(uri.query)
        self.known: list[str] = []

    def _take(self, key: str, default: Any, convert: Callable[[str], Any], kind: str) -> Any:
        self.known.append(key)
        if key not in self.remaining:
            return default
        text = self.remaining.pop(key)
        try:
            return convert(text)
        except ValueError:
            raise SourceError(f"{self.uri.raw}: '{key}={text}' is not {kind}") from None

    def int(self, key: str, default: int | None, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self._take(key, default, int, "an integer")
        if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            raise SourceError(f"{self.uri.raw}: '{key}={value}' must be in [{lo}, {hi}]")
        return value

    def float(self, key: str, default: float | None, lo: float = 0.0) -> float | None:
        value = self._take(key, default, float, "a number")
        if value is not None and value <= lo:
            raise SourceError(f"{self.uri.raw}: '{key}={value}' must be > {lo}")
        return value

    def bool(self, key: str, default: bool) -> bool:
        def convert(text: str) -> bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)

        return self._take(key, default, convert, "a boolean (0/1)")

    def choice(self, key: str, default: str, valid: tuple[str, ...]) -> str:
        value = self._take(key, default, str, "a string")
        if value not in valid:
            raise SourceError(f"{self.uri.raw}: '{key}={value}' is not one of {', '.join(valid)}")
        return value

    def finish(self) -> None:
        if self.remaining:
            raise SourceError(f"{self.uri.raw}: unknown parameter(s) {', '.join(sorted(self.remaining))}; "
                              f"{self.uri.scheme}:// accepts {', '.join(self.known)}")


SourceFactory = Callable[[SourceURI], Source]
SOURCES: dict[str, SourceFactory] = {}
S = TypeVar("S", bound=SourceFactory)


def register_source(scheme: str) -> Callable[[S], S]:
    """Register a factory (usually a Source subclass taking a SourceURI) for `scheme://` URIs."""

    def wrap(factory: S) -> S:
        SOURCES[scheme] = factory
        return factory

    return wrap


def parse_uri(uri: str) -> SourceURI:
    if "://" not in uri:
        raise SourceError(f"source '{uri}' has no scheme; use one of: "
                          + ", ".join(f"{s}://" for s in sorted(SOURCES)))
    parts = urlsplit(uri)
    try:
        query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise SourceError(f"{uri}: malformed query '{parts.query}' (expected key=value&key=value)") from None
    return SourceURI(raw=uri, scheme=parts.scheme.lower(), name=parts.netloc, path=parts.path, query=query)


def open_source(uri: str | Source) -> Source:
    """Open a frame source by URI (`synthetic://bouncing?seed=3&size=128&fps=30`, ...).

    Raises:
        SourceError: unknown scheme, malformed URI or parameter, or the source cannot be opened.
    """
    if isinstance(uri, Source):
        return uri
    if uri == "auto":
        uri = "auto://"
    elif uri.isdigit():  # a bare camera index, as OpenCV users write it
        uri = f"v4l2://{uri}"
    elif "://" not in uri and Path(uri).expanduser().exists():  # a bare path: a video file or an image folder
        uri = f"file://{Path(uri).expanduser().resolve()}"
    parsed = parse_uri(uri)
    factory = SOURCES.get(parsed.scheme)
    if factory is None:
        raise SourceError(f"unknown source scheme '{parsed.scheme}://' in '{uri}'; available: "
                          + ", ".join(f"{s}://" for s in sorted(SOURCES)))
    try:
        return factory(parsed)
    except ConfigError as exc:
        raise SourceError(f"{uri}: {exc}") from exc


class Pacer:
    """Paces a generated stream like a camera at `fps`; a late reader gets the next frame at once (no burst)."""

    def __init__(self, fps: float | None):
        self.period = 1.0 / fps if fps else 0.0
        self.next_due: float | None = None

    def wait(self) -> None:
        if not self.period:
            return
        now = time.monotonic()
        if self.next_due is None or now - self.next_due > self.period:
            self.next_due = now  # first frame, or the reader fell behind: restart the schedule
        delay = self.next_due - now
        if delay > 0:
            time.sleep(delay)
        self.next_due += self.period
