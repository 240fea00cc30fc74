"""Training clips from the synthetic world: a pool of running worlds, rendered window by window.

Each sample is `window` consecutive frames of one world (plus the pusher's actions and states, zero for the
bouncing scenes). Worlds persist between samples and are re-seeded after a while, so a batch mixes many scenes and
moments without paying for long warm-ups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ami_edge.sources.synthetic import RandomPolicy
from ami_edge.world import World, WorldConfig

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def normalize(frames: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) uint8 RGB -> (..., 3, H, W) float32, ImageNet mean/std (what the manifest records)."""
    x = (frames.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return np.moveaxis(x, -1, -3)


@dataclass
class Batch:
    frames: torch.Tensor  # (B, W, 3, H, W) normalised
    actions: torch.Tensor  # (B, W, 2) pusher velocity (0 for bouncing scenes)
    states: torch.Tensor  # (B, W, 2) pusher position (0 for bouncing scenes)
    pusher: torch.Tensor  # (B,) bool: the sample has an agent


class WorldPool:
    """`size` running worlds of `objects` (min, max) balls and boxes; with `pusher`, half of them pusher scenes driven
    by the seeded exploration policy."""

    def __init__(self, size: int, seed: int, image_size: int, window: int, reseed_every: int = 40,
                 objects: tuple[int, int] = (2, 6), pusher: bool = True):
        self.rng = np.random.default_rng(seed)
        self.image_size, self.window, self.reseed_every = image_size, window, reseed_every
        self.objects = objects
        self.worlds: list[World] = []
        self.policies: list[RandomPolicy | None] = []
        self.uses: list[int] = []
        self.next_seed = seed * 100_003
        for i in range(size):
            self.worlds.append(None)  # type: ignore[arg-type]
            self.policies.append(None)
            self.uses.append(0)
            self._reset(i, pusher=pusher and i % 2 == 1)

    def _reset(self, i: int, pusher: bool) -> None:
        self.next_seed += 1
        seed = self.next_seed
        lo, hi = self.objects
        cfg = WorldConfig(seed=seed, objects=int(self.rng.integers(lo, hi + 1)), pusher=pusher,
                          pan=bool(self.rng.random() < 0.2), occluder=bool(self.rng.random() < 0.7))
        self.worlds[i] = World(cfg)
        self.policies[i] = RandomPolicy(seed) if pusher else None
        self.uses[i] = 0
        for _ in range(int(self.rng.integers(0, 30))):  # start at a random moment
            self._advance(i)

    def _advance(self, i: int) -> np.ndarray:
        world, policy = self.worlds[i], self.policies[i]
        action = policy(world.state()) if policy is not None else np.zeros(2, np.float32)
        world.step(action if policy is not None else None)
        return action

    def sample(self, batch: int) -> Batch:
        frames, actions, states, pusher = self.sample_raw(batch)
        return Batch(torch.from_numpy(normalize(frames)), torch.from_numpy(actions), torch.from_numpy(states),
                     torch.from_numpy(pusher))

    def sample_raw(self, batch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(B, W, H, W, 3) uint8 frames, (B, W, 2) actions, (B, W, 2) states, (B,) pusher flags."""
        idx = self.rng.choice(len(self.worlds), size=batch, replace=False)
        frames = np.empty((batch, self.window, self.image_size, self.image_size, 3), np.uint8)
        actions = np.zeros((batch, self.window, 2), np.float32)
        states = np.zeros((batch, self.window, 2), np.float32)
        pusher = np.zeros(batch, bool)
        for b, i in enumerate(idx):
            world = self.worlds[i]
            pusher[b] = world.cfg.pusher
            for k in range(self.window):
                frames[b, k] = world.render(self.image_size)
                states[b, k] = world.state()
                actions[b, k] = self._advance(i)  # the action taken at frame k (leads to frame k + 1)
            self.uses[i] += 1
            if self.uses[i] >= self.reseed_every:
                self._reset(i, pusher=world.cfg.pusher)
        return frames, actions, states, pusher
