"""The demo physics world: deterministic, energy-conserving, contained, and able to break its own laws on demand."""

from __future__ import annotations

import numpy as np
import pytest

from ami_edge.errors import ConfigError
from ami_edge.world import MAX_SPEED, World, WorldConfig


def _energy(w: World) -> float:
    return sum(b.mass * (0.5 * float(b.vel @ b.vel) + w.cfg.gravity * (1.0 - b.pos[1])) for b in w.bodies)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_elastic_world_conserves_energy_and_stays_inside(seed):
    w = World(WorldConfig(seed=seed, objects=6))
    e0 = _energy(w)
    for _ in range(900):  # 30 s of simulated time
        w.step()
        for b in w.bodies:
            assert b.size - 1e-9 <= b.pos[0] <= w.cfg.width - b.size + 1e-9
            assert b.size - 1e-9 <= b.pos[1] <= 1.0 - b.size + 1e-9
        assert 0.95 < _energy(w) / e0 < 1.05
    assert any(np.hypot(*b.vel) > 0.2 for b in w.bodies)  # still moving: the scene does not settle


def test_collisions_exchange_momentum():
    """Two equal balls in a head-on elastic collision swap velocities (no gravity)."""
    w = World(WorldConfig(seed=0, objects=2, gravity=0.0, occluder=False))
    a, b = w.bodies[0], w.bodies[0].__class__("ball", np.array([0.7, 0.5]), np.array([-0.5, 0.0]), 0.05, (0, 0, 0))
    a.shape, a.size, a.pos, a.vel = "ball", 0.05, np.array([0.3, 0.5]), np.array([0.5, 0.0])
    w.bodies[1] = b
    for _ in range(30):
        w.step()
    np.testing.assert_allclose(a.vel, [-0.5, 0.0], atol=1e-9)
    np.testing.assert_allclose(b.vel, [0.5, 0.0], atol=1e-9)


def test_same_seed_same_frames_other_seed_differs():
    def frames(seed):
        w = World(WorldConfig(seed=seed, pan=True))
        out = []
        for _ in range(40):
            out.append(w.render(64))
            w.step()
        return np.stack(out)

    np.testing.assert_array_equal(frames(5), frames(5))
    assert np.abs(frames(5).astype(int) - frames(6).astype(int)).mean() > 1.0


def test_occluder_hides_what_passes_behind():
    w = World(WorldConfig(seed=0, objects=1, gravity=0.0))
    x0, y0, x1, y1 = w.occluder
    body = w.bodies[0]
    body.pos, body.vel = np.array([(x0 + x1) / 2, (y0 + y1) / 2]), np.zeros(2)
    body.size = min(x1 - x0, y1 - y0) / 4
    hidden = w.render(128)
    body.pos = np.array([0.15, 0.5])
    shown = w.render(128)
    cx, cy = int((x0 + x1) / 2 * 128), int((y0 + y1) / 2 * 128)
    assert tuple(hidden[cy, cx]) == (70, 70, 78)  # occluder colour, not the body's
    assert tuple(shown[64, int(0.15 * 128)]) == body.color


@pytest.mark.parametrize("kind", ["teleport", "vanish", "freeze", "pass_through"])
def test_violations_change_the_course_of_events(kind):
    normal, broken = World(WorldConfig(seed=4)), World(WorldConfig(seed=4))
    for _ in range(10):
        normal.step()
        broken.step()
    before = broken.bodies[0].pos.copy()
    broken.violate(kind, 0)
    for _ in range(60):
        normal.step()
        broken.step()
    b = broken.bodies[0]
    if kind == "vanish":
        assert not b.visible
        assert not np.array_equal(normal.render(64), broken.render(64))
    elif kind == "freeze":
        np.testing.assert_array_equal(b.pos, before)
    else:
        assert np.linalg.norm(b.pos - normal.bodies[0].pos) > 0.01 or kind == "pass_through"
    with pytest.raises(ConfigError, match="valid: teleport"):
        broken.violate("levitate", 0)


def test_pusher_moves_by_its_action_and_pushes():
    w = World(WorldConfig(seed=2, objects=1, pusher=True, gravity=0.0, occluder=False))
    box = w.bodies[0]
    box.pos, box.vel = np.array([0.9, 0.85]), np.zeros(2)  # in the pusher's path (pusher starts at 0.5, 0.85)
    start = w.state().copy()
    for _ in range(6):
        w.step(np.array([1.0, 0.0]))
    np.testing.assert_allclose(w.state() - start, [6 / 30, 0.0], atol=1e-6)  # 1 unit/s for 0.2 s
    assert np.array_equal(box.vel, [0.0, 0.0])  # not reached yet
    for _ in range(20):
        w.step(np.array([1.0, 0.0]))
        if box.vel[0] != 0:
            break
    np.testing.assert_allclose(box.vel, [2.0, 0.0])  # elastic hit from an infinitely heavy pusher at 1 unit/s
    for _ in range(60):  # keep pinning it against the wall: its speed stays bounded
        w.step(np.array([1.0, 0.0]))
        assert np.hypot(*box.vel) <= MAX_SPEED + 1e-9
    w.step(np.array([5.0, -5.0]))  # actions are clipped to [-1, 1]
    assert np.abs(w.pusher.vel).max() == 1.0


def test_config_validation():
    with pytest.raises(ConfigError, match="objects"):
        WorldConfig(objects=0)
