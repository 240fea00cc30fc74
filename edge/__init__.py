"""ami-edge: JEPA world models (I-JEPA, V-JEPA, V-JEPA 2, V-JEPA 2-AC) on wearables and robots.

The runtime package imports neither torch nor TensorRT: a device installs only what it runs. The workstation
side lives in `ami_edge.export` (pip install 'ami-edge[export]').
"""

from .bundle import Bundle, Manifest, load_bundle
from .errors import (AmiEdgeError, BundleError, BundleNotFoundError, CheckpointError, ConfigError, ExportError,
                     MissingExtraError)

__version__ = "0.1.0"

__all__ = ["AmiEdgeError", "Bundle", "BundleError", "BundleNotFoundError", "CheckpointError", "ConfigError",
           "ExportError", "Manifest", "MissingExtraError", "__version__", "load_bundle"]
