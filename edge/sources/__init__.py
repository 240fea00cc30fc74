"""Frame sources by URI scheme. `open_source(uri)` is the public entry point."""

from . import camera, file, synthetic  # noqa: F401  (register camera schemes, file:// and synthetic://)
from .capture import LatestFrame
from .base import SOURCES, Frame, Source, SourceError, SourceURI, open_source, register_source

__all__ = ["SOURCES", "Frame", "LatestFrame", "Source", "SourceError", "SourceURI", "open_source", "register_source"]
