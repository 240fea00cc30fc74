"""Frame sources by URI scheme. `open_source(uri)` is the public entry point."""

from . import synthetic  # noqa: F401  (registers synthetic://)
from .base import SOURCES, Frame, Source, SourceError, SourceURI, open_source, register_source

__all__ = ["SOURCES", "Frame", "Source", "SourceError", "SourceURI", "open_source", "register_source"]
