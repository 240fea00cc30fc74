"""Training clips for distillation: the built-in demo world, or windows of any frame sources."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


# --------------------------------------------------------------------------------------------------------- data
@dataclass
class Clips:
    frames: np.ndarray  # (B, W, H, W, 3) uint8: the teacher's clip plus one tubelet of future
    actions: np.ndarray  # (B, W, A)
    states: np.ndarray  # (B, W, S)
    pusher: np.ndarray  # (B,) bool: the clip carries actions


class DemoData:
    """The built-in synthetic world (`--source demo`): hundreds of running scenes, half with the pusher agent."""

    def __init__(self, window: int, size: int, seed: int):
        from ..demo.data import WorldPool

        self.pool = WorldPool(192, seed, size, window)
        self.action_dims = (2, 2)  # the pusher's velocity and position

    def sample(self, batch: int) -> Clips:
        return Clips(*self.pool.sample_raw(batch))


class SourceData:
    """Windows of consecutive frames from source URIs (files loop), drawn at random from a shuffle buffer."""

    def __init__(self, uris: list[str], window: int, size: int, seed: int, stride: int = 2, buffer: int = 512):
        from ami_edge.sources import open_source

        self.open = open_source
        self.uris, self.window, self.size, self.stride = uris, window, size, stride
        self.rng = np.random.default_rng(seed)
        self.buffer: list[tuple[np.ndarray, np.ndarray, np.ndarray, bool]] = []
        self.capacity = buffer
        self.iters = [iter(self.open(u)) for u in uris]
        self.recent: list[list] = [[] for _ in uris]

    def _frame(self, i: int):
        try:
            return next(self.iters[i])
        except StopIteration:  # a file ended: loop it
            self.iters[i] = iter(self.open(self.uris[i]))
            self.recent[i].clear()
            return next(self.iters[i])

    def _fill(self, count: int) -> None:
        import cv2

        for _ in range(count):
            i = int(self.rng.integers(len(self.uris)))
            for _ in range(self.stride):
                frame = self._frame(i)
                image = frame.image
                if image.shape[:2] != (self.size, self.size):
                    image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_AREA)
                act = getattr(frame, "action", None)
                state = getattr(frame, "state", None)
                keep = self.recent[i][max(0, len(self.recent[i]) - self.window + 1):]  # the last window - 1
                self.recent[i] = [*keep, (image, act, state)]
            if len(self.recent[i]) == self.window:
                items = self.recent[i]
                pusher = all(a is not None and s is not None for _, a, s in items)
                none = np.zeros((self.window, 2), np.float32)
                acts = np.stack([np.asarray(a, np.float32) for _, a, _ in items]) if pusher else none
                sts = np.stack([np.asarray(s, np.float32) for _, _, s in items]) if pusher else none
                entry = (np.stack([im for im, _, _ in items]), acts, sts, pusher)
                if len(self.buffer) < self.capacity:
                    self.buffer.append(entry)
                else:
                    self.buffer[int(self.rng.integers(self.capacity))] = entry

    def sample(self, batch: int, remove: bool = False) -> Clips:
        self._fill(batch if len(self.buffer) >= batch else 4 * batch + self.window)
        while len(self.buffer) < batch:
            self._fill(batch)
        pick = self.rng.choice(len(self.buffer), size=batch, replace=False)
        rows = [self.buffer[k] for k in pick]
        if remove:
            taken = set(pick.tolist())
            self.buffer = [e for k, e in enumerate(self.buffer) if k not in taken]
        dims = max(r[1].shape[1] for r in rows)
        pad = lambda a: np.pad(a, ((0, 0), (0, dims - a.shape[1])))  # noqa: E731
        return Clips(np.stack([r[0] for r in rows]), np.stack([pad(r[1]) for r in rows]),
                     np.stack([pad(r[2]) for r in rows]), np.array([r[3] for r in rows]))

    def take(self, batch: int) -> Clips:
        """A batch removed from the buffer: held-out clips training never samples (the stream moves on)."""
        return self.sample(batch, remove=True)


def normalise(frames: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """(B, W, H, W, 3) uint8 -> (B, 3, W, size, size) float32, resized like the runtime (INTER_AREA)."""
    import cv2

    b, w = frames.shape[:2]
    if frames.shape[2] != size:
        flat = frames.reshape(b * w, *frames.shape[2:])
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in flat]).reshape(
            b, w, size, size, 3)
    x = (frames.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))


