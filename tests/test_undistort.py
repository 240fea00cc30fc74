"""Undistortion with camera intrinsics: a straight line bent by the lens model is straight again."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from ami_edge import ConfigError, Runtime
from ami_edge.camera_model import CameraModel, Undistorter

W, H = 320, 240
K = np.array([[260.0, 0, W / 2], [0, 260.0, H / 2], [0, 0, 1]])
DIST = np.array([-0.32, 0.12, 0.0, 0.0, 0.0])  # strong barrel distortion


def _distort(ideal: np.ndarray) -> np.ndarray:
    """What the lens shows: for each distorted pixel, sample the ideal image where the lens model sends it."""
    u, v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    pts = np.stack([u.ravel(), v.ravel()], axis=1)[:, None, :]
    ideal_pts = cv2.undistortPoints(pts, K, DIST, P=K).reshape(H, W, 2)
    return cv2.remap(ideal, ideal_pts[..., 0], ideal_pts[..., 1], cv2.INTER_LINEAR)


def _line_rows(image: np.ndarray, cols: range) -> np.ndarray:
    """Brightness-weighted row of the line in each column."""
    gray = image[..., 0].astype(float)
    rows = np.arange(image.shape[0])[:, None]
    col_sum = gray[:, cols].sum(0)
    return (gray[:, cols] * rows).sum(0) / np.maximum(col_sum, 1e-9)


@pytest.fixture
def camera_json(tmp_path):
    path = tmp_path / "camera.json"
    path.write_text(json.dumps({"width": W, "height": H, "K": K.tolist(), "dist": DIST.tolist()}))
    return path


def test_undistortion_straightens_a_bent_line(camera_json):
    ideal = np.zeros((H, W, 3), np.uint8)
    cv2.line(ideal, (0, 45), (W - 1, 45), (255, 255, 255), 3)  # far from the centre: bent the most
    bent = _distort(ideal)
    cols = range(30, 290)
    assert np.ptp(_line_rows(bent, cols)) > 5  # the lens bends it by ~6 px across the frame
    fixed = Undistorter(CameraModel.load(camera_json)).apply(bent)
    assert np.ptp(_line_rows(fixed, cols)) < 0.5  # straight again (~0.1 px, resampling)


def test_runtime_undistorts_and_checks_frame_size(camera_json, video_bundle):
    frames = [np.zeros((H, W, 3), np.uint8)] * 4
    with Runtime(video_bundle, source=frames, camera=camera_json) as rt:
        assert len(list(rt.stream())) == 1
    with pytest.raises(ConfigError, match="calibrated at 320x240"):
        with Runtime(video_bundle, source=[np.zeros((100, 100, 3), np.uint8)] * 4, camera=camera_json) as rt:
            list(rt.stream())


@pytest.mark.parametrize("content, fragment", [
    ("{}", "expected JSON with width, height, K"),
    (json.dumps({"width": W, "height": H, "K": [[1, 0], [0, 1]], "dist": [0, 0, 0, 0]}), "K must be 3x3"),
    (json.dumps({"width": W, "height": H, "K": K.tolist(), "dist": [0, 0, 0]}), "dist 4, 5 or 8"),
])
def test_bad_intrinsics(tmp_path, content, fragment):
    path = tmp_path / "camera.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        CameraModel.load(path)
