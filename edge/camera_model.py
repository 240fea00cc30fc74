"""Camera intrinsics for undistortion: `camera.json` as written by `ami-edge calibrate camera`.

    {"width": 1280, "height": 720, "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], "dist": [k1, k2, p1, p2, k3]}

The undistortion maps are computed once; per frame it is one cv2.remap into a preallocated buffer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class CameraModel:
    width: int
    height: int
    K: np.ndarray  # (3, 3)
    dist: np.ndarray  # (k1, k2, p1, p2[, k3[, k4, k5, k6]])

    @classmethod
    def load(cls, path: str | Path) -> CameraModel:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            K = np.array(data["K"], np.float64)
            dist = np.array(data["dist"], np.float64).ravel()
            width, height = int(data["width"]), int(data["height"])
        except OSError as exc:
            raise ConfigError(f"cannot read camera intrinsics {path}: {exc.strerror or exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: expected JSON with width, height, K (3x3) and dist (4, 5 or 8 numbers): "
                              f"{exc}") from exc
        if K.shape != (3, 3) or dist.size not in (4, 5, 8) or width <= 0 or height <= 0 \
                or not (np.isfinite(K).all() and np.isfinite(dist).all()) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ConfigError(f"{path}: K must be 3x3 with positive focal lengths, dist 4, 5 or 8 finite numbers, "
                              "width and height positive")
        return cls(width, height, K, dist)


class Undistorter:
    """Precomputed maps for frames of the calibrated size; `apply(image)` returns a view of its own buffer."""

    def __init__(self, camera: CameraModel, alpha: float = 0.0):
        if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
            raise ConfigError(f"undistort alpha must be in [0, 1], got {alpha}")
        size = (camera.width, camera.height)
        new_k, _ = cv2.getOptimalNewCameraMatrix(camera.K, camera.dist, size, alpha, size)
        self.map1, self.map2 = cv2.initUndistortRectifyMap(camera.K, camera.dist, None, new_k, size, cv2.CV_16SC2)
        self.camera = camera
        self._out = np.empty((camera.height, camera.width, 3), np.uint8)

    def apply(self, image: np.ndarray) -> np.ndarray:
        if image.shape[:2] != (self.camera.height, self.camera.width):
            raise ConfigError(f"frame is {image.shape[1]}x{image.shape[0]} but the camera intrinsics were calibrated "
                              f"at {self.camera.width}x{self.camera.height}; recalibrate or set the camera's size")
        cv2.remap(image, self.map1, self.map2, cv2.INTER_LINEAR, dst=self._out)
        return self._out
