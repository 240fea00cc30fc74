"""ami-edge: JEPA world models (I-JEPA, V-JEPA, V-JEPA 2, V-JEPA 2-AC) on wearables and robots.

The runtime package imports neither torch nor TensorRT: a device installs only what it runs. The workstation
side lives in `ami_edge.export` (pip install 'ami-edge[export]').
"""

from .bundle import Bundle, Manifest, load_bundle
from .errors import (AmiEdgeError, BundleError, BundleNotFoundError, CheckpointError, ConfigError, ExportError,
                     MissingExtraError)

__version__ = "0.1.0"

# Imported on first use, so `import ami_edge` stays light (sources pull in OpenCV).
_LAZY = {"open_source": "sources", "Frame": "sources", "Source": "sources", "SourceError": "sources",
         "Runtime": "runtime", "State": "runtime"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'ami_edge' has no attribute {name!r}")


__all__ = ["AmiEdgeError", "Bundle", "BundleError", "BundleNotFoundError", "CheckpointError", "ConfigError",
           "ExportError", "Frame", "Manifest", "MissingExtraError", "Runtime", "Source", "SourceError", "State",
           "__version__", "load_bundle", "open_source"]
