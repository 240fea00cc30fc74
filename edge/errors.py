"""One exception base for the project; each subclass also inherits the matching built-in.

Messages name the object at fault and say how to fix it. The CLI prints ``str(error)`` on one line and exits 1.
"""

from __future__ import annotations


class AmiEdgeError(Exception):
    """Base of every error ami-edge raises on purpose (a user-fixable problem, not a bug)."""


class ConfigError(AmiEdgeError, ValueError):
    """A configuration value or flag is invalid."""


class BundleError(AmiEdgeError, ValueError):
    """A model bundle is malformed, corrupted or written by an incompatible schema."""


class BundleNotFoundError(AmiEdgeError, FileNotFoundError):
    """A bundle name or path does not resolve to a bundle directory."""


class CheckpointError(AmiEdgeError, ValueError):
    """A checkpoint cannot be read, recognised or loaded strictly."""


class ExportError(AmiEdgeError, RuntimeError):
    """Export to ONNX failed or its numeric parity check was above tolerance."""


class MissingExtraError(AmiEdgeError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


def require(module: str, extra: str, purpose: str):
    """Import an optional module or raise `MissingExtraError` naming the pip extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{purpose} needs the '{module.split('.')[0]}' package: pip install 'ami-edge[{extra}]'"
        ) from exc
