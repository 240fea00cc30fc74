"""`ami-edge calibrate camera`: camera intrinsics from a chessboard seen at many poses, written as camera.json.

    ami-edge calibrate camera --source calib.mp4 --board 9x6 --square 0.025 --out camera.json
    ami-edge serve --camera camera.json ...

Frames come from any source URI (an image folder, a video file, a live camera). Each frame is searched for the
board's inner corners (cv2.findChessboardCorners, refined by cv2.cornerSubPix). A video holds many near-identical
frames, and they would weigh one pose many times over, so a detection is kept only when its corners moved by more
than `MIN_MOVE` of the image diagonal from every view kept so far. When more than --max-views remain, farthest-point
sampling keeps the most varied ones. cv2.calibrateCamera then fits K and the distortion coefficients. Views whose
reprojection error is far above the others (a blurred or misdetected frame) are dropped once and the fit is
repeated. The output is what `CameraModel.load` reads, plus the fit's report (RMS error, per-view errors, standard
deviations), which the loader ignores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import ConfigError

HELP = "camera intrinsics from a chessboard filmed at many poses: camera.json for `serve --camera`"

MIN_MOVE = 0.01  # a view must move its corners by 1 % of the image diagonal (mean) to count as a new pose
DETECT_MAX_SIDE = 1280  # corners are found on a copy at most this large, then refined at full resolution
DISTORTION = {"k1k2": (cv2.CALIB_FIX_K3, 5), "k1k2k3": (0, 5), "rational": (cv2.CALIB_RATIONAL_MODEL, 8)}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="frames showing the board: an image folder, a video file, or a camera (0, v4l2://..., csi://0)")
    p.add_argument("--board", default="9x6", help="inner corners COLSxROWS (default 9x6, a board of 10x7 squares)")
    p.add_argument("--square", default="0.025", help="side of one square in metres (default 0.025)")
    p.add_argument("--out", default="camera.json", help="where to write the intrinsics (default camera.json)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--max-views", type=int, default=40,
                   help="most varied views to calibrate on (default 40); a live camera stops once it has seen this "
                        "many distinct views, unless --frames or --seconds is given")
    p.add_argument("--min-views", type=int, default=10, help="fewest distinct views accepted (default 10)")
    p.add_argument("--distortion", choices=list(DISTORTION), default="k1k2k3",
                   help="lens model: k1k2 (+p1 p2), k1k2k3 (default, OpenCV's 5 coefficients), rational (8; wide "
                        "angle)")
    p.add_argument("--frames", type=int, help="stop after reading this many frames")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (a live camera)")


# ------------------------------------------------------------------------------------------------ arguments
def parse_board(text: str) -> tuple[int, int]:
    """'9x6' -> (9, 6): inner corners per row and per column."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        cols, rows = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--board {text!r} must be COLSxROWS inner corners, e.g. 9x6 (a board of 10x7 squares)"
                          ) from None
    if cols < 3 or rows < 3:
        raise ConfigError(f"--board {text!r}: OpenCV needs at least 3x3 inner corners (a board of 4x4 squares)")
    return cols, rows


def _positive(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{flag} must be a positive number, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------------ detection
def find_corners(gray: np.ndarray, pattern: tuple[int, int]) -> np.ndarray | None:
    """The board's inner corners (N, 2) in pixels, row by row, or None when the whole board is not in view."""
    scale = min(1.0, DETECT_MAX_SIDE / max(gray.shape))
    small = gray if scale == 1.0 else cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
    found, corners = cv2.findChessboardCorners(small, pattern, flags=flags)
    if not found:
        return None
    corners = ((corners + 0.5) / scale - 0.5).astype(np.float32)  # (N, 1, 2) pixel centres at full resolution
    # The refinement window must stay inside one square, or it pulls towards the neighbouring corners.
    grid = corners.reshape(pattern[1], pattern[0], 2)
    spacing = min(np.linalg.norm(np.diff(grid, axis=a), axis=2).min() for a in (0, 1))  # nearest corners, pixels
    win = int(np.clip(spacing * 0.4, 2, 11))
    cv2.cornerSubPix(gray, corners, (win, win), (-1, -1),
                     (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-3))
    return corners.reshape(-1, 2)


def _moves(views: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Mean corner displacement (pixels) from `corners` (N, 2) to each of `views` (V, N, 2). OpenCV may number a
    board from either end (180 degrees apart), so both orders are compared."""
    forward = np.linalg.norm(views - corners, axis=2).mean(1)
    backward = np.linalg.norm(views - corners[::-1], axis=2).mean(1)
    return np.minimum(forward, backward)


def select_views(views: np.ndarray, count: int) -> list[int]:
    """Farthest-point sampling: indices of `count` views (V, N, 2), each as unlike the ones before it as possible."""
    chosen = [0]
    nearest = _moves(views, views[0])
    while len(chosen) < min(count, len(views)):
        i = int(np.argmax(nearest))
        chosen.append(i)
        nearest = np.minimum(nearest, _moves(views, views[i]))
    return sorted(chosen)


@dataclass
class Detections:
    """What the frames gave: the corners of each distinct view, and the frame each came from."""

    size: tuple[int, int] | None = None  # (width, height)
    frames: int = 0
    found: int = 0
    seqs: list[int] = field(default_factory=list)
    _kept: np.ndarray | None = None  # (capacity, N, 2): the first len(seqs) rows are the distinct views

    @property
    def corners(self) -> np.ndarray:
        """(V, N, 2) corners of the distinct views."""
        return np.zeros((0, 0, 2), np.float32) if self._kept is None else self._kept[:len(self.seqs)]

    def offer(self, corners: np.ndarray, seq: int, min_move_px: float) -> bool:
        """Keep the view unless a kept one already has nearly the same corners."""
        self.found += 1
        n = len(self.seqs)
        if n and _moves(self._kept[:n], corners).min() < min_move_px:
            return False
        if self._kept is None or n == len(self._kept):  # grow by doubling: no per-frame copy of every view
            grown = np.empty((max(64, 2 * n), *corners.shape), np.float32)
            if n:
                grown[:n] = self._kept[:n]
            self._kept = grown
        self._kept[n] = corners
        self.seqs.append(seq)
        return True


def collect(source_uri: str, pattern: tuple[int, int], frames: int | None, seconds: float | None,
            max_views: int) -> Detections:
    """Read the source and detect the board in every frame, until it ends or a limit is reached."""
    from ..sources import LatestFrame, open_source

    source = open_source(source_uri)
    live = source.live
    if live:  # a camera: look at the newest frame, never at a backlog
        source = LatestFrame(source)
    det = Detections()
    start = last_report = time.monotonic()
    try:
        for frame in source:
            gray = cv2.cvtColor(frame.image, cv2.COLOR_RGB2GRAY)
            size = (gray.shape[1], gray.shape[0])
            if det.size is None:
                det.size = size
            elif size != det.size:
                raise ConfigError(f"{source_uri}: frame {frame.seq} is {size[0]}x{size[1]} but earlier frames are "
                                  f"{det.size[0]}x{det.size[1]}; calibrate on frames of one size (the size you serve)")
            det.frames += 1
            corners = find_corners(gray, pattern)
            if corners is not None:
                det.offer(corners, frame.seq, MIN_MOVE * math.hypot(*size))
            now = time.monotonic()
            if now - last_report >= 1.0:
                print(f"  frames {det.frames}, board found in {det.found}, distinct views {len(det.seqs)}",
                      file=sys.stderr, flush=True)
                last_report = now
            if (frames is not None and det.frames >= frames) or (seconds is not None and now - start >= seconds) \
                    or (live and frames is None and seconds is None and len(det.seqs) >= max_views):
                break
    finally:
        source.close()
    return det


# ----------------------------------------------------------------------------------------------- calibration
@dataclass
class Fit:
    rms: float
    K: np.ndarray  # (3, 3)
    dist: np.ndarray  # (5,) or (8,)
    std: np.ndarray  # standard deviations of fx, fy, cx, cy, then the coefficients
    per_view: np.ndarray  # (V,) RMS reprojection error of each view, pixels


def board_points(pattern: tuple[int, int], square: float) -> np.ndarray:
    """(N, 3) corner positions on the board plane (z = 0) in metres, in findChessboardCorners' order."""
    cols, rows = pattern
    grid = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2) * square  # x along a row, rows advance in y
    return np.hstack([grid, np.zeros((cols * rows, 1))]).astype(np.float32)


def fit(views: list[np.ndarray], obj: np.ndarray, size: tuple[int, int], distortion: str) -> Fit:
    flags, n_coeffs = DISTORTION[distortion]
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-10)
    try:
        rms, K, dist, _, _, std, _, per_view = cv2.calibrateCameraExtended(
            [obj] * len(views), [v.astype(np.float32) for v in views], size, None, None, flags=flags,
            criteria=criteria)
    except cv2.error as exc:
        raise ConfigError(f"cv2.calibrateCamera failed on {len(views)} views: {exc.err}; use views with the board "
                          "tilted in different directions") from exc
    std = std.ravel()
    return Fit(float(rms), K, dist.ravel()[:n_coeffs].copy(), np.concatenate([std[:4], std[4:4 + n_coeffs]]),
               per_view.ravel())


def calibrate(views: list[np.ndarray], obj: np.ndarray, size: tuple[int, int], distortion: str, min_views: int
              ) -> tuple[Fit, list[int], np.ndarray]:
    """Fit, drop views far worse than the rest (3x the median, and over 0.5 px) once, refit.

    Returns:
        The final fit, the indices of the views it used, and every view's error (V,) in the first fit.
    """
    first = fit(views, obj, size, distortion)
    limit = max(3.0 * float(np.median(first.per_view)), 0.5)
    keep = [i for i, e in enumerate(first.per_view) if e <= limit]
    if len(keep) == len(views) or len(keep) < min_views:
        return first, list(range(len(views))), first.per_view
    return fit([views[i] for i in keep], obj, size, distortion), keep, first.per_view


def coverage(views: list[np.ndarray], size: tuple[int, int], cells: tuple[int, int] = (8, 6)) -> float:
    """Fraction of an 8 x 6 grid over the image holding at least one detected corner: distortion is only measured
    where the board has been."""
    pts = np.concatenate(views)
    cx = np.clip((pts[:, 0] / size[0] * cells[0]).astype(int), 0, cells[0] - 1)
    cy = np.clip((pts[:, 1] / size[1] * cells[1]).astype(int), 0, cells[1] - 1)
    return len(set(zip(cx.tolist(), cy.tolist()))) / (cells[0] * cells[1])


# ------------------------------------------------------------------------------------------------- command
def run(args: argparse.Namespace) -> int:
    from .. import __version__

    pattern = parse_board(args.board)
    square = _positive(args.square, "--square")
    for flag, value in (("--max-views", args.max_views), ("--min-views", args.min_views)):
        if value < 3:
            raise ConfigError(f"{flag} must be at least 3, got {value}")
    if args.min_views > args.max_views:
        raise ConfigError(f"--min-views {args.min_views} is more than --max-views {args.max_views}")
    if args.frames is not None and args.frames <= 0:
        raise ConfigError(f"--frames must be a positive integer, got {args.frames}")
    if args.seconds is not None:
        _positive(str(args.seconds), "--seconds")
    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it or choose another --out")
    board = f"{pattern[0]}x{pattern[1]}"

    print(f"ami-edge calibrate camera: looking for a {board} chessboard in {args.source}", file=sys.stderr,
          flush=True)
    det = collect(args.source, pattern, args.frames, args.seconds, args.max_views)
    distinct = len(det.seqs)
    if det.size is None:
        raise ConfigError(f"{args.source} gave no frames")
    if not det.found:
        raise ConfigError(f"no {board} chessboard found in any of the {det.frames} frames of {args.source}; check "
                          f"--board counts inner corners ({pattern[0] + 1}x{pattern[1] + 1} squares), the whole "
                          "board is in view with a white margin, in focus and evenly lit")
    if distinct < args.min_views:
        raise ConfigError(f"only {distinct} distinct views of the board (found in {det.found} of {det.frames} "
                          f"frames); calibration needs at least {args.min_views} (--min-views): show the board at "
                          "more positions and tilts, into the image corners")
    chosen = select_views(det.corners, args.max_views)
    views, seqs = [det.corners[i] for i in chosen], [det.seqs[i] for i in chosen]
    result, kept, first_errors = calibrate(views, board_points(pattern, square), det.size, args.distortion,
                                           args.min_views)
    dropped = [(seqs[i], float(e)) for i, e in enumerate(first_errors) if i not in kept]
    views, seqs = [views[i] for i in kept], [seqs[i] for i in kept]
    cover = coverage(views, det.size)

    K, dist = result.K, result.dist
    record = {
        "width": det.size[0], "height": det.size[1], "K": K.tolist(), "dist": dist.tolist(),
        "rms_px": result.rms, "views": len(views), "distortion_model": args.distortion,
        "board": {"cols": pattern[0], "rows": pattern[1], "square_m": square},
        "std": dict(zip(["fx", "fy", "cx", "cy"], result.std[:4].tolist()), dist=result.std[4:].tolist()),
        "per_view": [{"frame": s, "rms_px": float(e)} for s, e in zip(seqs, result.per_view)],
        "coverage": cover, "source": args.source,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "ami_edge": __version__,
    }
    tmp = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # One key per line (K and the per-view list stay compact), so the file reads well and diffs well.
        body = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in record.items())
        tmp.write_text("{\n" + body + "\n}\n", encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from exc

    worst = int(np.argmax(result.per_view))
    names = ["k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6"]
    print(f"ami-edge calibrate camera: {det.frames} frames, board found in {det.found}, {distinct} distinct views, "
          f"{len(views)} used" + (f" ({len(dropped)} dropped as outliers: "
                                  + ", ".join(f"frame {s} {e:.2f} px" for s, e in dropped) + ")" if dropped else ""))
    print(f"  RMS reprojection error {result.rms:.3f} px (per view median {np.median(result.per_view):.3f}, "
          f"worst {result.per_view[worst]:.3f} px at frame {seqs[worst]})")
    print("  " + "  ".join(f"{n} {v:.2f} ± {s:.2f}" for n, v, s in
                           zip(["fx", "fy", "cx", "cy"], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]], result.std[:4])) + " px")
    print("  " + "  ".join(f"{n} {v:+.4f}" for n, v in zip(names, dist)))
    print(f"  corners seen in {cover:.0%} of the image" + (
        "; distortion near the edges is extrapolated: show the board in the image corners too" if cover < 0.6
        else ""))
    print(f"wrote {out} ({det.size[0]}x{det.size[1]}); use it with: ami-edge serve --camera {out}")
    return 0

