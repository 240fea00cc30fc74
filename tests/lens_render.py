"""Chessboard views rendered through a known pinhole + Brown-Conrady lens, for camera calibration tests.

Every output pixel's ray is found by inverting the lens model (cv2.undistortPoints, refined to 1e-5 px by fixed-point
steps on the forward model, whose agreement with cv2.projectPoints the tests check), then intersected with the board
plane. Edges are anti-aliased analytically: pixel coverage from the distance to the nearest square edge, in pixels.
Used by tests/test_calibrate.py and benchmarks/calibrate_camera.py.
"""

from __future__ import annotations

import cv2
import numpy as np

W, H = 640, 480
K_TRUE = np.array([[520.0, 0, 323.5], [0, 516.0, 236.0], [0, 0, 1]])
DIST_TRUE = np.array([-0.30, 0.11, 0.0008, -0.0006, 0.0])  # k1 k2 p1 p2 k3: strong barrel, slight decentring
COLS, ROWS, SQUARE = 9, 6, 0.025


# ------------------------------------------------------------------------------------------------ rendering
def _distort(xy: np.ndarray) -> np.ndarray:
    """The forward lens model on normalised coordinates (..., 2), as OpenCV defines it."""
    k1, k2, p1, p2, k3 = DIST_TRUE
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
    return np.stack([x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                     y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y], -1)


def pixel_rays() -> np.ndarray:
    """(H, W, 2) normalised undistorted ray of every pixel centre of the distorted image."""
    uu, vv = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    seen = np.stack([(uu - K_TRUE[0, 2]) / K_TRUE[0, 0], (vv - K_TRUE[1, 2]) / K_TRUE[1, 1]], -1)
    rays = cv2.undistortPoints(np.stack([uu, vv], -1).reshape(-1, 1, 2), K_TRUE, DIST_TRUE).reshape(H, W, 2)
    for _ in range(10):  # OpenCV's default 5 iterations leave ~0.04 px at the corners; refine to convergence
        rays = rays + (seen - _distort(rays))
    return rays


def _coverage(coord: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Pixel coverage (0..1) of the band lo <= coord <= hi, from the distance to its edges in pixels."""
    per_px = np.hypot(*np.gradient(coord))  # board units per pixel across the edge
    return np.clip(0.5 + np.minimum(coord - lo, hi - coord) / per_px, 0, 1)


def render(rays: np.ndarray, rvec: np.ndarray, tvec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) uint8 view of the board (white margin, on grey) at pose (rvec, tvec) through the true lens."""
    R, _ = cv2.Rodrigues(rvec)
    to_board = np.linalg.inv(np.column_stack([R[:, 0], R[:, 1], tvec]))  # camera ray -> board plane (X, Y, 1)
    b = np.concatenate([rays, np.ones((H, W, 1))], -1) @ to_board.T
    X, Y = b[..., 0] / b[..., 2], b[..., 1] / b[..., 2]

    def square_sign(coord: np.ndarray) -> np.ndarray:  # +-1 by square parity, a 1-pixel ramp across each edge
        m = np.round(coord / SQUARE)
        ramp = np.clip(2 * (coord - m * SQUARE) / np.hypot(*np.gradient(coord)), -1, 1)
        return np.where(m % 2 == 0, 1.0, -1.0) * ramp

    white = 0.5 + 0.5 * square_sign(X) * square_sign(Y)
    board = _coverage(X, -SQUARE, COLS * SQUARE) * _coverage(Y, -SQUARE, ROWS * SQUARE)
    paper = _coverage(X, -2 * SQUARE, (COLS + 1) * SQUARE) * _coverage(Y, -2 * SQUARE, (ROWS + 1) * SQUARE)
    value = 110 + 115 * paper - 200 * board * (1 - white) + rng.normal(0, 1.0, (H, W))
    return np.clip(np.round(value), 0, 255).astype(np.uint8)


def true_corners(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    obj = np.array([[i * SQUARE, j * SQUARE, 0] for j in range(ROWS) for i in range(COLS)])
    return cv2.projectPoints(obj, rvec, tvec, K_TRUE, DIST_TRUE)[0].reshape(-1, 2)


def random_pose(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A tilted pose with the whole board and its margin in view, anywhere in the image."""
    centre = np.array([(COLS - 1) * SQUARE / 2, (ROWS - 1) * SQUARE / 2, 0])
    xs, ys = np.linspace(-2, COLS + 1, 12) * SQUARE, np.linspace(-2, ROWS + 1, 9) * SQUARE
    outline = np.array([[x, y, 0] for x in xs for y in ys[[0, -1]]] + [[x, y, 0] for y in ys for x in xs[[0, -1]]])
    while True:
        rvec = rng.uniform([-0.6, -0.6, -0.3], [0.6, 0.6, 0.3])
        z = rng.uniform(0.38, 0.6)
        tvec = np.array([rng.uniform(-0.45, 0.45), rng.uniform(-0.35, 0.35), 1.0]) * z - cv2.Rodrigues(rvec)[0] @ centre
        pts = cv2.projectPoints(outline, rvec, tvec, K_TRUE, DIST_TRUE)[0].reshape(-1, 2)
        if (pts > 4).all() and (pts[:, 0] < W - 5).all() and (pts[:, 1] < H - 5).all():
            return rvec, tvec


def render_views(count: int, seed: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
    """`count` views at distinct random poses (corners 3 % of the image diagonal apart on average; the tool's own
    near-duplicate cut is 1 %). Returns the pixel rays (H, W, 2), the poses (rvec, tvec) and the (H, W) images."""
    rng = np.random.default_rng(seed)
    rays = pixel_rays()
    poses: list[tuple[np.ndarray, np.ndarray]] = []
    images = []
    for _ in range(count):
        pose = random_pose(rng)
        while any(np.linalg.norm(true_corners(*pose) - true_corners(*p), axis=1).mean() < 0.03 * np.hypot(W, H)
                  for p in poses):
            pose = random_pose(rng)
        images.append(render(rays, *pose, rng))
        poses.append(pose)
    return rays, poses, images
