"""A small deterministic 2-D physics world rendered to RGB frames: the built-in demo scene.

Balls and boxes (axis-aligned, no rotation) fall under gravity and collide elastically with the walls and each
other; a static occluder hides what passes behind it; the camera can pan slowly over a textured background. The
pusher variant adds an agent disc whose 2-D velocity is the action and whose position is the proprioceptive state.

Physics-violation hooks (`teleport`, `vanish`, `freeze`, `pass_through`) exist so surprise can be evaluated the
way V-JEPA was on IntPhys: the same seeded scene with and without an impossible event.

World units: the view is 1 x 1 (y down, like images); the world is `1 + pan_range` wide. numpy + OpenCV only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .errors import ConfigError

VIOLATIONS = ("teleport", "vanish", "freeze", "pass_through")
MAX_SPEED = 3.0  # units / s


@dataclass
class WorldConfig:
    seed: int = 0
    objects: int = 4  # number of balls and boxes
    gravity: float = 1.2  # units / s^2, downward
    dt: float = 1 / 30  # seconds per rendered frame
    substeps: int = 4
    occluder: bool = True
    pan: bool = False  # slow sinusoidal camera pan over a wider world
    pusher: bool = False  # agent-controlled disc: action = its velocity, state = its position
    pan_range: float = 0.5

    def __post_init__(self) -> None:
        if not 1 <= self.objects <= 12:
            raise ConfigError(f"objects={self.objects} must be between 1 and 12")
        if self.dt <= 0 or self.substeps < 1:
            raise ConfigError(f"dt={self.dt} must be > 0 and substeps={self.substeps} >= 1")
        if self.gravity < 0:
            raise ConfigError(f"gravity={self.gravity} must be >= 0")

    @property
    def width(self) -> float:
        return 1.0 + (self.pan_range if self.pan else 0.0)


@dataclass
class Body:
    shape: str  # "ball" (size = radius) or "box" (size = half side)
    pos: np.ndarray  # (2,) centre, world units
    vel: np.ndarray  # (2,)
    size: float
    color: tuple[int, int, int]  # RGB
    kinematic: bool = False  # the pusher: moves by its action, is not pushed back
    visible: bool = True
    frozen: bool = False
    ghost: bool = False  # passes through other bodies (a violation)

    @property
    def mass(self) -> float:
        return math.inf if self.kinematic else (math.pi if self.shape == "ball" else 4.0) * self.size**2

    @property
    def inv_mass(self) -> float:
        return 0.0 if self.kinematic or self.frozen else 1.0 / self.mass


PALETTE = [(230, 57, 70), (29, 161, 242), (255, 183, 3), (46, 196, 182), (155, 93, 229), (241, 91, 181),
           (0, 187, 249), (254, 228, 64), (131, 197, 190), (239, 131, 84), (96, 211, 148), (248, 150, 30)]
PUSHER_COLOR = (250, 250, 250)


@dataclass
class World:
    cfg: WorldConfig
    bodies: list[Body] = field(default_factory=list)
    t: float = 0.0
    step_index: int = 0
    contacts: list[tuple[int, int, int]] = field(default_factory=list)  # (step, i, j) of every collision impulse
    bounces: list[tuple[int, int, int]] = field(default_factory=list)  # (step, i, axis) of every wall reflection

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.cfg.seed)
        self.rng = rng
        w = self.cfg.width
        for i in range(self.cfg.objects):
            shape = "ball" if i % 2 == 0 else "box"
            size = float(rng.uniform(0.045, 0.085))
            for _ in range(100):  # place without overlap
                pos = np.array([rng.uniform(size, w - size), rng.uniform(size, 0.6)])
                if all(np.linalg.norm(pos - b.pos) > size + b.size + 0.02 for b in self.bodies):
                    break
            angle = rng.uniform(0, 2 * math.pi)
            speed = rng.uniform(0.25, 0.6)
            vel = np.array([math.cos(angle), math.sin(angle)]) * speed
            color = PALETTE[int(rng.integers(len(PALETTE)))]
            self.bodies.append(Body(shape, pos, vel, size, color))
        if self.cfg.pusher:
            self.bodies.append(Body("ball", np.array([w / 2, 0.85]), np.zeros(2), 0.06, PUSHER_COLOR,
                                    kinematic=True))
        # The occluder: a fixed vertical slab in world coordinates (objects pass behind it).
        self.occluder = (0.42, 0.18, 0.56, 0.78) if self.cfg.occluder else None  # x0, y0, x1, y1
        self.texture = self._background(rng)

    # ------------------------------------------------------------------------------------------------- agent
    @property
    def pusher(self) -> Body | None:
        return next((b for b in self.bodies if b.kinematic), None)

    def state(self) -> np.ndarray:
        """Proprioceptive state: the pusher's position (2,), float32."""
        p = self.pusher
        return (p.pos if p is not None else np.zeros(2)).astype(np.float32)

    # ----------------------------------------------------------------------------------------------- physics
    def step(self, action: np.ndarray | None = None) -> None:
        """Advance one frame. `action` is the pusher's velocity (2,) in units/s, clipped to [-1, 1]."""
        pusher = self.pusher
        if pusher is not None:
            pusher.vel = np.clip(np.asarray(action if action is not None else np.zeros(2), float), -1.0, 1.0)
        h = self.cfg.dt / self.cfg.substeps
        for _ in range(self.cfg.substeps):
            for b in self.bodies:
                if b.frozen:
                    continue
                if not b.kinematic:
                    b.vel[1] += self.cfg.gravity * h
                b.pos = b.pos + b.vel * h
            self._collide()
            self._walls()
            for b in self.bodies:  # a body pinned between the pusher and a wall would otherwise gain speed forever
                speed = float(np.hypot(*b.vel))
                if not b.kinematic and speed > MAX_SPEED:
                    b.vel = b.vel * (MAX_SPEED / speed)
        self.t += self.cfg.dt
        self.step_index += 1

    def _walls(self) -> None:
        w = self.cfg.width
        for i, b in enumerate(self.bodies):
            if b.frozen:
                continue
            for axis, hi in ((0, w), (1, 1.0)):
                lo_edge, hi_edge = b.size, hi - b.size
                # Reflect the overshoot rather than clamp it: clamping drops potential energy at every bounce.
                if b.pos[axis] < lo_edge:
                    if not b.kinematic and b.vel[axis] < 0:
                        self.bounces.append((self.step_index, i, axis))
                    b.pos[axis] = lo_edge if b.kinematic else min(2 * lo_edge - b.pos[axis], hi_edge)
                    b.vel[axis] = abs(b.vel[axis]) if not b.kinematic else 0.0
                elif b.pos[axis] > hi_edge:
                    if not b.kinematic and b.vel[axis] > 0:
                        self.bounces.append((self.step_index, i, axis))
                    b.pos[axis] = hi_edge if b.kinematic else max(2 * hi_edge - b.pos[axis], lo_edge)
                    b.vel[axis] = -abs(b.vel[axis]) if not b.kinematic else 0.0

    def _collide(self) -> None:
        for i, a in enumerate(self.bodies):
            for j, b in enumerate(self.bodies[i + 1:], start=i + 1):
                if a.ghost or b.ghost or not (a.visible and b.visible):
                    continue
                hit = _contact(a, b)
                if hit is None:
                    continue
                normal, depth = hit  # normal points from a to b
                inv = a.inv_mass + b.inv_mass
                if inv == 0:
                    continue
                a.pos = a.pos - normal * depth * a.inv_mass / inv
                b.pos = b.pos + normal * depth * b.inv_mass / inv
                closing = float(np.dot(b.vel - a.vel, normal))
                if closing < 0:  # approaching: elastic impulse (restitution 1)
                    impulse = -2.0 * closing / inv
                    a.vel = a.vel - normal * impulse * a.inv_mass
                    b.vel = b.vel + normal * impulse * b.inv_mass
                    self.contacts.append((self.step_index, i, j))

    # ------------------------------------------------------------------------------------------- violations
    def violate(self, kind: str, index: int) -> None:
        """Make body `index` do something physically impossible from now on (or, for teleport, right now)."""
        if kind not in VIOLATIONS:
            raise ConfigError(f"unknown violation {kind!r}; valid: {', '.join(VIOLATIONS)}")
        b = self.bodies[index]
        if kind == "teleport":
            w = self.cfg.width
            target = np.array([w - b.pos[0], 1.0 - b.pos[1]])  # the mirror point: far away, still in the world
            b.pos = np.clip(target, b.size, np.array([w, 1.0]) - b.size)
        elif kind == "vanish":
            b.visible = False
        elif kind == "freeze":
            b.frozen, b.vel = True, np.zeros(2)
        else:
            b.ghost = True

    # ---------------------------------------------------------------------------------------------- rendering
    def in_view(self, index: int) -> bool:
        """Body `index` is drawn and not hidden by the occluder (centre test) in the current view."""
        b = self.bodies[index]
        x = b.pos[0] - self.view_offset()
        if not b.visible or not (b.size < x < 1.0 - b.size):
            return False
        if self.occluder is None:
            return True
        x0, y0, x1, y1 = self.occluder
        return not (x0 - b.size < x < x1 + b.size and y0 - b.size < b.pos[1] < y1 + b.size)

    def view_offset(self) -> float:
        if not self.cfg.pan:
            return 0.0
        return self.cfg.pan_range * 0.5 * (1.0 - math.cos(2 * math.pi * self.t / 20.0))  # 20 s period

    def render(self, size: int) -> np.ndarray:
        """(size, size, 3) uint8 RGB view of the world."""
        ox = self.view_offset()
        scale = size / 1.0
        x0 = int(round(ox * size))
        img = self._texture_at(size, x0).copy()
        shift = 4  # sub-pixel precision for cv2 drawing
        k = 1 << shift
        for b in self.bodies:
            if not b.visible:
                continue
            cx, cy = (b.pos[0] - ox) * scale, b.pos[1] * scale
            r = b.size * scale
            if b.shape == "ball":
                cv2.circle(img, (int(cx * k), int(cy * k)), max(1, int(r * k)), b.color, -1, cv2.LINE_AA, shift)
            else:
                cv2.rectangle(img, (int((cx - r) * k), int((cy - r) * k)), (int((cx + r) * k), int((cy + r) * k)),
                              b.color, -1, cv2.LINE_AA, shift)
        if self.occluder is not None:
            ox0, oy0, ox1, oy1 = self.occluder
            p0 = (int(((ox0 - ox) * scale) * k), int(oy0 * scale * k))
            p1 = (int(((ox1 - ox) * scale) * k), int(oy1 * scale * k))
            cv2.rectangle(img, p0, p1, (70, 70, 78), -1, cv2.LINE_AA, shift)
        return img

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        """A fixed, seeded background texture for the whole world width (unit = 512 px), so pans are visible."""
        base = 512
        h, w = base, int(round(self.cfg.width * base))
        y = np.linspace(0, 1, h)[:, None, None]
        tint = rng.uniform(0.85, 1.0, size=3)
        img = (np.array([200, 205, 215]) * tint * (0.75 + 0.25 * (1 - y))).repeat(w, axis=1)
        for x in range(0, w, base // 8):  # faint vertical stripes
            img[:, x:x + 3] *= 0.93
        return np.clip(img, 0, 255).astype(np.uint8)

    def _texture_at(self, size: int, x0: int) -> np.ndarray:
        cache = getattr(self, "_scaled", None)
        if cache is None or cache.shape[0] != size:
            tex = self.texture
            width = int(round(tex.shape[1] * size / tex.shape[0]))
            cache = cv2.resize(tex, (width, size), interpolation=cv2.INTER_AREA)
            self._scaled = cache
        return cache[:, x0:x0 + size]


def _contact(a: Body, b: Body) -> tuple[np.ndarray, float] | None:
    """Contact normal (unit, from a to b) and penetration depth, or None when apart."""
    if a.shape == "ball" and b.shape == "ball":
        d = b.pos - a.pos
        dist = float(np.hypot(*d))
        depth = a.size + b.size - dist
        if depth <= 0:
            return None
        return (d / dist if dist > 1e-9 else np.array([0.0, 1.0])), depth
    if a.shape == "box" and b.shape == "box":
        d = b.pos - a.pos
        overlap = a.size + b.size - np.abs(d)
        if (overlap <= 0).any():
            return None
        axis = int(np.argmin(overlap))
        normal = np.zeros(2)
        normal[axis] = 1.0 if d[axis] >= 0 else -1.0
        return normal, float(overlap[axis])
    flip = a.shape == "box"
    ball, box = (b, a) if flip else (a, b)
    closest = np.clip(ball.pos, box.pos - box.size, box.pos + box.size)
    d = ball.pos - closest  # from box surface to ball centre
    dist = float(np.hypot(*d))
    if dist >= ball.size:
        return None
    if dist > 1e-9:
        normal_box_to_ball, depth = d / dist, ball.size - dist
    else:  # centre inside the box: push out along the shallowest axis
        rel = ball.pos - box.pos
        overlap = box.size - np.abs(rel)
        axis = int(np.argmin(overlap))
        normal_box_to_ball = np.zeros(2)
        normal_box_to_ball[axis] = 1.0 if rel[axis] >= 0 else -1.0
        depth = float(overlap[axis]) + ball.size
    # normal must point from a to b
    normal = normal_box_to_ball if flip else -normal_box_to_ball
    return normal, depth
