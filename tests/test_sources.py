"""`ami_edge.open_source`: URI parsing, validation with the fix in the message, and the synthetic camera."""

from __future__ import annotations

import time

import numpy as np
import pytest

from ami_edge.sources import Frame, SourceError, open_source


def test_synthetic_frames_are_rgb_numbered_and_timed():
    with open_source("synthetic://bouncing?seed=3&size=96&frames=20") as src:
        frames = list(src)
    assert len(frames) == 20 and all(isinstance(f, Frame) for f in frames)
    assert [f.seq for f in frames] == list(range(20))
    assert frames[0].image.shape == (96, 96, 3) and frames[0].image.dtype == np.uint8
    t = [f.t_capture for f in frames]
    assert all(b >= a for a, b in zip(t, t[1:])) and abs(t[-1] - time.monotonic()) < 60
    assert frames[0].action is None and frames[0].state is None
    assert len({f.image.tobytes() for f in frames}) > 15  # things move


def test_same_uri_same_stream():
    a = [f.image for f in open_source("synthetic://bouncing?seed=7&size=48&frames=30&pan=1")]
    b = [f.image for f in open_source("synthetic://bouncing?seed=7&size=48&frames=30&pan=1")]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))


def test_fps_paces_like_a_camera():
    with open_source("synthetic://bouncing?size=32&fps=50&frames=6") as src:
        t = [f.t_capture for f in src]
    assert t[-1] - t[0] >= 5 * 0.02 * 0.95  # never faster than 50 fps (a lower bound: noise only adds time)


def test_pusher_frames_carry_action_and_state():
    frames = list(open_source("synthetic://pusher?seed=1&size=48&frames=40"))
    actions = np.stack([f.action for f in frames])
    states = np.stack([f.state for f in frames])
    assert actions.shape == (40, 2) and states.shape == (40, 2)
    assert np.abs(actions).max() <= 1.0 and actions.std() > 0.05
    # the state follows the actions: position(t+1) = position(t) + action(t) * dt, away from walls
    step = states[1:] - states[:-1]
    inside = (states[:-1] > 0.1).all(1) & (states[:-1] < 0.9).all(1)
    np.testing.assert_allclose(step[inside], actions[:-1][inside] / 30, atol=1e-5)


def test_external_actions_drive_the_pusher():
    src = open_source("synthetic://pusher?seed=1&size=32&policy=external&objects=1")
    it = iter(src)
    first = next(it)
    np.testing.assert_array_equal(first.action, [0, 0])
    src.act([0.0, -1.0])  # up
    second = next(it)
    third = next(it)
    np.testing.assert_array_equal(second.action, [0, -1])
    assert third.state[1] < second.state[1]
    src.close()
    assert list(it) == []


@pytest.mark.parametrize("uri, fragment", [
    ("synthetic://bouncing?sise=64", "unknown parameter(s) sise; synthetic:// accepts"),
    ("synthetic://bouncing?size=big", "'size=big' is not an integer"),
    ("synthetic://bouncing?size=4", "'size=4' must be in [16, 1024]"),
    ("synthetic://bouncing?fps=-3", "'fps=-3.0' must be > 0"),
    ("synthetic://bouncing?pan=maybe", "'pan=maybe' is not a boolean"),
    ("synthetic://pusher?policy=greedy", "'policy=greedy' is not one of random, external"),
    ("synthetic://juggling", "unknown scene 'juggling'; available: bouncing, pusher"),
    ("synthetic://bouncing?objects=40", "'objects=40' must be in [1, 12]"),
    ("telepathy://x", "unknown source scheme 'telepathy://'"),
    ("nothing", "has no scheme"),
])
def test_bad_uris_say_what_is_wrong(uri, fragment):
    with pytest.raises(SourceError) as exc:
        open_source(uri)
    assert fragment in str(exc.value)
