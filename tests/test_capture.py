"""File sources (mp4 files and image folders the tests write) and latest-frame capture."""

from __future__ import annotations

import shutil
import threading

import cv2
import numpy as np
import pytest

from ami_edge import Runtime
from ami_edge.sources import LatestFrame, SourceError, open_source

from .test_runtime import _frames


def _write_mp4(path, frames, fps=30):
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()


def test_mp4_file_by_bare_path_and_uri(tmp_path):
    frames = _frames(24, size=64)
    clip = tmp_path / "clip.mp4"
    _write_mp4(clip, frames)
    for uri in (str(clip), f"file://{clip}"):
        got = list(open_source(uri))
        assert [f.seq for f in got] == list(range(24))
        assert got[0].image.shape == (64, 64, 3)
        # lossy codec: colours survive (RGB order, not BGR)
        assert np.abs(got[5].image.astype(float).mean((0, 1)) - frames[5].astype(float).mean((0, 1))).max() < 6


def test_image_folder_loop_and_vanishing(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    frames = _frames(5, size=32)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    exact = [f.image for f in open_source(str(folder))]
    np.testing.assert_array_equal(np.stack(exact), np.stack(frames))  # PNG: exact pixels, sorted order

    src = open_source(f"file://{folder}?loop=1")
    it = iter(src)
    first = [next(it) for _ in range(12)]  # more than the folder holds: it loops
    assert [f.seq for f in first] == list(range(12))
    np.testing.assert_array_equal(first[5].image, frames[0])
    away = tmp_path / "away"
    folder.rename(away)  # the "camera" vanishes ...
    got = []
    reader = threading.Thread(target=lambda: got.extend(next(it) for _ in range(6)))
    reader.start()
    reader.join(timeout=0.3)
    assert reader.is_alive()  # ... the stream waits for it instead of ending
    away.rename(folder)  # ... and comes back: the stream resumes
    reader.join(timeout=20)
    assert not reader.is_alive() and [f.seq for f in got] == list(range(12, 18))
    src.close()


@pytest.mark.parametrize("name, content, fragment", [
    ("missing.mp4", None, "does not exist"),
    ("notes.txt", b"hello", "is not a video or image file"),
    ("broken.mp4", b"\x00\x01garbage" * 100, "cannot decode"),
])
def test_bad_files(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(SourceError, match=fragment):
        open_source(f"file://{path}")
    with pytest.raises(SourceError):
        open_source(f"file://{tmp_path}?loops=1")  # unknown parameter (and an empty folder)


def test_latest_frame_never_queues(tmp_path):
    """A consumer slower than the camera always gets the newest frame; the skipped ones are counted."""
    src = LatestFrame(open_source("synthetic://bouncing?size=32&fps=400&frames=200"))
    seen = []
    slow = threading.Event()
    for frame in src:
        seen.append((frame.seq, src.captured_at_take))  # snapshot taken under the lock at hand-over
        slow.wait(0.01)  # a slow model
    assert src.dropped > 0 and src.delivered == len(seen) and src.dropped + src.delivered == src.captured
    assert all(seq == captured - 1 for seq, captured in seen)  # always the newest frame, never a backlog
    assert [s for s, _ in seen] == sorted({s for s, _ in seen})


def test_runtime_puts_live_sources_behind_latest_frame(video_bundle):
    with Runtime(video_bundle, source="synthetic://bouncing?size=64&fps=60") as rt:
        assert isinstance(rt.source, LatestFrame)
        states = list(rt.stream(max_frames=5))
    assert len(states) == 5 and all(b.seq > a.seq for a, b in zip(states, states[1:]))
    with Runtime(video_bundle, source="synthetic://bouncing?size=64&frames=8") as rt:  # as fast as read: every frame
        assert not isinstance(rt.source, LatestFrame)
        assert [s.seq for s in rt.stream()] == list(range(3, 8))


def test_runtime_on_an_mp4(tmp_path, video_bundle):
    clip = tmp_path / "walk.mp4"
    _write_mp4(clip, _frames(20, size=96))
    with Runtime(video_bundle, source=str(clip)) as rt:
        states = list(rt.stream())
    assert [s.seq for s in states] == list(range(3, 20))
    shutil.rmtree(tmp_path, ignore_errors=True)
