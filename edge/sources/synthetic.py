"""`synthetic://SCENE?...`: the built-in physics world as a camera.

    synthetic://bouncing?seed=3&size=128&fps=30     balls and boxes, gravity, an occluder
    synthetic://pusher?seed=1&policy=random         plus an agent disc: frame.action = its velocity, .state = position

Parameters: seed, size (pixels, square), fps (pace like a camera; omit to run as fast as read), frames (stop after
N), objects, pan (slow camera pan), occluder, policy (pusher: `random` smooth exploration or `external`, actions
via `act()`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np

from ..world import World, WorldConfig
from .base import Frame, Pacer, Query, Source, SourceError, SourceURI, register_source

SCENES = ("bouncing", "pusher")
POLICIES = ("random", "external")


class RandomPolicy:
    """Smooth seeded exploration: an Ornstein-Uhlenbeck process on the pusher velocity, kept inside [-1, 1]."""

    def __init__(self, seed: int, theta: float = 0.15, sigma: float = 0.35):
        self.rng = np.random.default_rng(seed + 7919)
        self.theta, self.sigma = theta, sigma
        self.a = np.zeros(2)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        # Pull towards the centre when near a wall so the agent keeps interacting with the scene.
        home = (np.array([0.5, 0.75]) - state) * 0.8
        self.a += self.theta * (home - self.a) + self.sigma * self.rng.standard_normal(2)
        self.a = np.clip(self.a, -1.0, 1.0)
        return self.a.astype(np.float32)


@register_source("synthetic")
class SyntheticSource(Source):
    def __init__(self, uri: SourceURI):
        q = Query(uri)
        self.uri = uri.raw
        scene = uri.name or "bouncing"
        if scene not in SCENES:
            raise SourceError(f"{uri.raw}: unknown scene '{scene}'; available: {', '.join(SCENES)}")
        self.size = q.int("size", 128, 16, 1024)
        self.fps = q.float("fps", None)
        self.max_frames = q.int("frames", None, 1)
        seed = q.int("seed", 0, 0)
        cfg = WorldConfig(seed=seed, objects=q.int("objects", 4, 1, 12), pan=q.bool("pan", False),
                          occluder=q.bool("occluder", True), pusher=scene == "pusher",
                          dt=1.0 / (self.fps or 30.0))
        policy = q.choice("policy", "random", POLICIES)
        q.finish()
        self.world = World(cfg)
        self.policy = RandomPolicy(seed) if (cfg.pusher and policy == "random") else None
        self._external: np.ndarray | None = None
        self._lock = threading.Lock()
        self._closed = False
        self.live = self.fps is not None  # paced like a camera

    def act(self, action: np.ndarray) -> None:
        """Set the pusher's next action (2-D velocity); overrides the policy for one step. Thread-safe."""
        with self._lock:
            self._external = np.asarray(action, dtype=np.float32).reshape(2)

    def _next_action(self) -> np.ndarray | None:
        if not self.world.cfg.pusher:
            return None
        with self._lock:
            external, self._external = self._external, None
        if external is not None:
            return external
        if self.policy is not None:
            return self.policy(self.world.state())
        return np.zeros(2, np.float32)

    def __iter__(self) -> Iterator[Frame]:
        pacer = Pacer(self.fps)
        seq = 0
        while not self._closed and (self.max_frames is None or seq < self.max_frames):
            pacer.wait()
            image = self.world.render(self.size)
            t_capture = time.monotonic()
            state = self.world.state() if self.world.cfg.pusher else None
            action = self._next_action()
            yield Frame(image=image, seq=seq, t_capture=t_capture, action=action, state=state)
            self.world.step(action)
            seq += 1

    def close(self) -> None:
        self._closed = True

    def describe(self) -> str:
        pace = f"{self.fps:g} fps" if self.fps else "as fast as read"
        return f"synthetic world {self.uri} ({self.size}x{self.size}, {pace})"
