"""`ami-edge calibrate collect`: INT8 calibration frames from any frame source, into one pickle-free .npz.

    ami-edge calibrate collect --source synthetic://bouncing?seed=5 --frames 256 --out calib.npz

Video encoders see clips of F consecutive frames, so frames are kept as windows of `--window` consecutive source
frames (default 8, enough for the 4-frame tiny bundle and for clips up to 8 frames; re-collect with a larger window
for longer clips). Diversity: a new window starts at most every `--stride` source frames, and a window whose last
frame differs from the last kept window's by less than `--min-diff` grey levels (mean absolute difference) is
dropped as a near duplicate, so a robot standing still does not fill the file with one scene.

The file holds `frames` (K, W, H, W', 3) uint8 RGB, `seq` (K, W) source frame numbers, and the settings (`source`,
`window`, `stride`, `min_diff`, `rejected`, `version`): plain arrays only, readable with allow_pickle=False.
Frames larger than `--max-side` are downscaled (INTER_AREA) to keep the file small; the quantizer resizes to the
bundle's input size anyway.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError

HELP = "collect diverse INT8 calibration clips from a frame source into calib.npz"
FORMAT_VERSION = 1
DEFAULT_WINDOW = 8


@dataclass
class Collected:
    """Windows of consecutive frames and how they were chosen."""

    frames: np.ndarray  # (K, W, H, W', 3) uint8 RGB
    seq: np.ndarray  # (K, W) int64 source frame numbers
    source: str
    window: int
    stride: int
    min_diff: float
    rejected: int  # windows dropped as near duplicates
    read: int  # source frames read


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (INTER_AREA, aspect kept) so the longer side is at most `max_side`; never upscales."""
    import cv2

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ConfigError(f"the source gave frames of shape {image.shape} {image.dtype}; expected H x W x 3 uint8")
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(image)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def collect(source: str, frames: int, window: int = DEFAULT_WINDOW, stride: int | None = None,
            min_diff: float = 2.0, max_side: int = 256, max_read: int | None = None) -> Collected:
    """Read `source` until `frames` frames (rounded up to whole windows) are kept.

    Args:
        source: a frame source URI (`ami_edge.open_source`).
        frames: frames to keep in total; ceil(frames / window) windows.
        window: consecutive frames per window (>= the bundle's clip length).
        stride: source frames from one window's start to the next candidate's (default 2 * window).
        min_diff: a window whose last frame is within this mean abs difference (0-255) of the last kept window's
            is a near duplicate and dropped.
        max_side: frames are downscaled so their longer side is at most this.
        max_read: give up after reading this many source frames (default: 50 x the frames wanted + 1000), so a
            static camera cannot keep collect running forever.
    Raises:
        ConfigError: bad settings, or the source yields no complete window.
        SourceError: the source cannot be opened.
    """
    from .. import open_source

    stride = 2 * window if stride is None else stride
    if frames <= 0 or window <= 0 or stride < window:
        raise ConfigError(f"--frames and --window must be positive and --stride >= --window (windows are "
                          f"consecutive frames); got frames={frames}, window={window}, stride={stride}")
    if min_diff < 0 or max_side < 16:
        raise ConfigError(f"--min-diff must be >= 0 and --max-side >= 16; got {min_diff}, {max_side}")
    wanted = -(-frames // window)
    max_read = max_read or 50 * wanted * window + 1000
    kept: list[np.ndarray] = []
    seqs: list[list[int]] = []
    current: list[np.ndarray] = []
    current_seq: list[int] = []
    last: np.ndarray | None = None
    rejected = read = 0
    start = 0  # source index where the window being filled began
    shape: tuple[int, ...] | None = None
    src = open_source(source)
    try:
        for index, frame in enumerate(src):
            read += 1
            if index >= start:
                image = _fit(frame.image, max_side)
                if shape is None:
                    shape = image.shape
                elif image.shape != shape:
                    raise ConfigError(f"{source}: frame {frame.seq} is {image.shape[:2]}, earlier frames "
                                      f"{shape[:2]}; calibration needs one frame size per file")
                current.append(image)
                current_seq.append(frame.seq)
                if len(current) == window:
                    tail = current[-1].astype(np.int16)
                    if last is not None and float(np.abs(tail - last).mean()) < min_diff:
                        rejected += 1
                    else:
                        kept.append(np.stack(current))
                        seqs.append(current_seq)
                        last = tail
                    current, current_seq = [], []
                    start = index - window + 1 + stride
            if len(kept) >= wanted or read >= max_read:
                break
    finally:
        src.close()
    if not kept:
        raise ConfigError(f"{source} gave no complete window of {window} frames ({read} read, {rejected} near "
                          "duplicates); use a longer source, a smaller --window or a lower --min-diff")
    return Collected(frames=np.stack(kept), seq=np.array(seqs, np.int64), source=source, window=window,
                     stride=stride, min_diff=float(min_diff), rejected=rejected, read=read)


def save(data: Collected, out: str | Path) -> Path:
    """Write the .npz atomically (a temporary file renamed into place): a crash never leaves half a file."""
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as calib.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    try:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to a bare name
            np.savez_compressed(fh, frames=data.frames, seq=data.seq, source=np.str_(data.source),
                                window=np.int64(data.window), stride=np.int64(data.stride),
                                min_diff=np.float64(data.min_diff), rejected=np.int64(data.rejected),
                                version=np.int64(FORMAT_VERSION))
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True,
                   help="frame source URI: synthetic://bouncing?seed=5, file://clip.mp4 or a path, v4l2:///dev/video0")
    p.add_argument("--frames", type=int, default=256, help="frames to keep, in whole windows (default 256)")
    p.add_argument("--out", default="calib.npz", help="output file (default calib.npz)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"consecutive frames per window, at least the bundle's clip length (default {DEFAULT_WINDOW})")
    p.add_argument("--stride", type=int, help="source frames between window starts (default 2 x window)")
    p.add_argument("--min-diff", type=float, default=2.0,
                   help="drop a window within this mean abs difference (0-255) of the last kept one (default 2)")
    p.add_argument("--max-side", type=int, default=256, help="downscale frames to this longer side (default 256)")


def run(args: argparse.Namespace) -> int:
    data = collect(args.source, args.frames, args.window, args.stride, args.min_diff, args.max_side)
    out = save(data, args.out)
    k, w, h, wd, _ = data.frames.shape
    print(f"wrote {out}: {k} windows x {w} frames of {h}x{wd} from {data.source} ({data.read} frames read, "
          f"{data.rejected} near-duplicate windows dropped)", file=sys.stderr)
    if k * w < args.frames:
        print(f"warning: only {k * w} of {args.frames} frames: the source ended or repeated itself",
              file=sys.stderr)
    return 0
