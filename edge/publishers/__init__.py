"""Where states go: publishers chosen by URI scheme (`serial://`, and `zmq://` with the LAN issue).

A publisher is built from a parsed URI and the Runtime (so it can feed actions back), gets every State, and is
closed at shutdown. Adding one is one file and one decorator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..sources.base import SourceError, SourceURI, parse_uri

if TYPE_CHECKING:
    from ..runtime import Runtime, State


class Publisher:
    uri: str = ""

    def publish(self, state: State) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release the link. Idempotent."""

    def describe(self) -> str:
        return self.uri


PUBLISHERS: dict[str, Callable[[SourceURI, Runtime], Publisher]] = {}


def register_publisher(scheme: str):
    def wrap(factory):
        PUBLISHERS[scheme] = factory
        return factory

    return wrap


def open_publisher(uri: str, runtime: Runtime) -> Publisher:
    """A publisher for `uri` (e.g. serial:///dev/ttyACM0?baud=921600&latent_dim=16)."""
    from . import serial, zmq  # noqa: F401  (register serial:// and zmq://)

    parsed = parse_uri(uri)
    factory = PUBLISHERS.get(parsed.scheme)
    if factory is None:
        raise SourceError(f"unknown publisher scheme '{parsed.scheme}://' in '{uri}'; available: "
                          + ", ".join(f"{s}://" for s in sorted(PUBLISHERS)))
    return factory(parsed, runtime)


__all__ = ["PUBLISHERS", "Publisher", "open_publisher", "register_publisher"]
