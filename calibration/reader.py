"""Calibration data -> the inputs each graph of a bundle sees, for the INT8 quantizer (and the accuracy report).

`load_calibration("calib.npz")` (or `collect(...)` on a source URI) gives windows of consecutive RGB frames;
`GraphFeeds.build(bundle, windows)` turns them into encoder feeds exactly as the runtime preprocesses frames
(resize INTER_LINEAR, (x / 255 - mean) / std, the bundle's layout), then runs the FP32 encoder so the predictor is
calibrated on the tokens it really receives. `FeedReader` walks one graph's feeds with the `get_next()` / `rewind()`
protocol of `onnxruntime.quantization.CalibrationDataReader` (the ABC itself lives in a module that imports onnx,
so the export side wraps this reader in it).

Runtime side: numpy, OpenCV and ONNX Runtime only.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import Bundle
from ..errors import ConfigError
from .collect import FORMAT_VERSION, Collected

Feed = dict[str, np.ndarray]


def load_calibration(path: str | Path) -> Collected:
    """Read and validate a calib.npz written by `ami-edge calibrate collect` (no pickle).

    Raises:
        ConfigError: missing, not an .npz, written by a newer version, or the arrays have the wrong shape/dtype.
    """
    path = Path(path)
    fix = "re-create it with `ami-edge calibrate collect --source URI --out FILE`"
    if not path.is_file():
        raise ConfigError(f"calibration file {path} does not exist; {fix}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted({"frames", "seq", "source", "window", "version"} - set(npz.files))
            if missing:
                raise ConfigError(f"{path} is not a calibration file (no {', '.join(missing)}); {fix}")
            arrays = {k: npz[k] for k in ("frames", "seq", "source", "window", "stride", "min_diff", "rejected",
                                          "version") if k in npz.files}
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise ConfigError(f"{path} cannot be read as a calibration .npz ({exc}); {fix}") from exc
    version = int(arrays["version"])
    if version > FORMAT_VERSION:
        raise ConfigError(f"{path} is calibration format {version}, newer than this ami-edge reads "
                          f"({FORMAT_VERSION}); upgrade ami-edge")
    frames, seq = arrays["frames"], arrays["seq"]
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3 or 0 in frames.shape:
        raise ConfigError(f"{path}: 'frames' must be (windows, window, H, W, 3) uint8, got {frames.shape} "
                          f"{frames.dtype}; {fix}")
    window = int(arrays["window"])
    if window != frames.shape[1] or seq.shape != frames.shape[:2]:
        raise ConfigError(f"{path}: 'window'={window} and 'seq' {seq.shape} do not match 'frames' "
                          f"{frames.shape}; {fix}")
    return Collected(frames=frames, seq=seq.astype(np.int64), source=str(arrays["source"]), window=window,
                     stride=int(arrays.get("stride", window)), min_diff=float(arrays.get("min_diff", 0.0)),
                     rejected=int(arrays.get("rejected", 0)), read=int(frames.shape[0] * window))


class Preprocess:
    """The runtime's per-frame preprocessing for one bundle (resize INTER_LINEAR, normalise, layout)."""

    def __init__(self, bundle: Bundle):
        i = bundle.manifest.input
        self.layout, self.frames, self.height, self.width = i.layout, i.frames, i.height, i.width
        std = np.array(i.std, np.float32).reshape(3, 1, 1)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)  # (3, 1, 1)
        self.offset = (np.array(i.mean, np.float32).reshape(3, 1, 1) / std).astype(np.float32)

    def frame(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (3, height, width) float32, as `Runtime._normalize` computes it."""
        import cv2

        resized = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_LINEAR)
        return resized.transpose(2, 0, 1).astype(np.float32) * self.scale - self.offset

    def clip(self, images: np.ndarray) -> np.ndarray:
        """(F, H, W, 3) uint8, oldest first -> the encoder's `pixels` feed with batch 1, in the bundle's layout."""
        x = np.stack([self.frame(im) for im in images], axis=1)  # (3, F, h, w)
        feed = {"BCTHW": x, "BTCHW": x.transpose(1, 0, 2, 3), "BCHW": x[:, 0]}[self.layout]
        return np.ascontiguousarray(feed[None])


def clip_starts(window: int, frames: int, step: int) -> list[int]:
    """Offsets of the clips taken from one window: every `step` frames (the tubelet), as the stream shifts."""
    if window < frames:
        raise ConfigError(f"calibration windows hold {window} frames but the bundle's clips need {frames}; "
                          f"re-collect with `ami-edge calibrate collect --window {frames}` or more")
    return list(range(0, window - frames + 1, max(1, step)))


@dataclass
class GraphFeeds:
    """Per graph, the list of feeds (batch 1) built from the calibration windows."""

    feeds: dict[str, list[Feed]]
    clips: int

    @classmethod
    def build(cls, bundle: Bundle, windows: np.ndarray, max_clips: int | None = None, seed: int = 0,
              backend: str = "onnxruntime:cpu") -> GraphFeeds:
        """Encoder feeds from `windows` (K, W, H, W', 3) uint8, then predictor / AC-predictor feeds from the FP32
        encoder's tokens, in the form the runtime feeds them (`ami_edge.runtime.predictor_query`).

        The AC predictor gets seeded standard-normal actions and states (the export parity inputs): calibration
        files hold frames, not a robot's commands.
        """
        from ..runners import make_runner
        from ..runtime import predictor_extrapolates, predictor_query

        m = bundle.manifest
        pre = Preprocess(bundle)
        step = m.input.tubelet if m.input.layout != "BCHW" else 1
        starts = clip_starts(windows.shape[1], m.input.frames, step)
        encoder = [{"pixels": pre.clip(w[s:s + m.input.frames])} for w in windows for s in starts]
        if max_clips is not None and len(encoder) > max_clips:  # spread evenly over the file
            keep = np.linspace(0, len(encoder) - 1, max_clips).round().astype(int)
            encoder = [encoder[i] for i in keep]
        feeds: dict[str, list[Feed]] = {"encoder": encoder}
        wants_tokens = [g for g in ("predictor", "ac_predictor") if bundle.has(g)] if m.input.layout != "BCHW" else []
        if wants_tokens:
            with make_runner(backend, bundle.graph_path("encoder")) as runner:
                tokens = [runner.infer(f)["tokens"] for f in encoder]  # each (1, N, D)
            t, h, w = m.latent.grid
            n, hw = t * h * w, h * w
            if "predictor" in wants_tokens:  # the runtime's query: sincos-table predictors see the last T-1 steps
                skip, ctx_ids, tgt_ids = predictor_query((t, h, w), predictor_extrapolates(m))
                feeds["predictor"] = [{"context": np.ascontiguousarray(z[:, skip:]), "context_ids": ctx_ids[None],
                                       "target_ids": tgt_ids[None]} for z in tokens]
            if "ac_predictor" in wants_tokens:
                rng = np.random.default_rng(seed)
                specs = {s.name: s for s in m.graphs["ac_predictor"].inputs}
                steps = n // hw
                feeds["ac_predictor"] = [
                    {"context": z, **{name: rng.standard_normal((1, steps, int(specs[name].shape[-1]))
                                                                ).astype(np.float32)
                                      for name in specs if name != "context"}}
                    for z in tokens]
        return cls(feeds=feeds, clips=len(encoder))


class FeedReader:
    """One graph's feeds with the CalibrationDataReader protocol: get_next() until None, rewind() to reuse."""

    def __init__(self, feeds: list[Feed]):
        self.feeds = feeds
        self.index = 0

    def get_next(self) -> Feed | None:
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index = 0

    def __len__(self) -> int:
        return len(self.feeds)
