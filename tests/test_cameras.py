"""Camera sources. No camera exists on CI machines, so what is tested is what can be: URI handling, the CSI
pipeline and its GStreamer requirement, `auto` falling back to the synthetic world, and the reconnect loop of the
shared OpenCV capture base, driven by a real capture whose device path vanishes and returns (a link to an mp4)."""

from __future__ import annotations

import glob
import threading

import pytest

from ami_edge.sources import SourceError, open_source
from ami_edge.sources.camera import CaptureSource, csi_pipeline, opencv_has_gstreamer

from .test_capture import _write_mp4
from .test_runtime import _frames


def test_csi_pipeline_keeps_only_the_newest_buffer():
    p = csi_pipeline(1, 1280, 720, 30, flip=2)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ") and "width=1280,height=720,framerate=30/1" in p
    assert "flip-method=2" in p and p.endswith("appsink drop=1 max-buffers=1 sync=false")


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV has GStreamer: the error path cannot happen")
def test_csi_without_gstreamer_says_what_to_install():
    with pytest.raises(SourceError, match="no GStreamer support; CSI cameras need JetPack's OpenCV"):
        open_source("csi://0")


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="a camera is present: auto would pick it")
def test_auto_falls_back_to_the_synthetic_world():
    src = open_source("auto")
    assert src.describe().startswith("synthetic world synthetic://bouncing?fps=30")
    src.close()


@pytest.mark.skipif(bool(glob.glob("/dev/video0")), reason="a camera is present")
def test_missing_camera_is_one_clear_error():
    with pytest.raises(SourceError, match="cannot open 0 .*video' group"):
        open_source("0")
    with pytest.raises(SourceError, match="sensor id must be a number"):
        open_source("csi://front")


def test_capture_reconnects_when_the_device_comes_back(tmp_path):
    clip = tmp_path / "clip.mp4"
    _write_mp4(clip, _frames(6, size=32))
    device = tmp_path / "video0"  # stands in for /dev/video0: a path that can vanish and return
    device.symlink_to(clip)
    src = open_source(f"v4l2://{device}")
    assert isinstance(src, CaptureSource) and src.live
    it = iter(src)
    first = [next(it) for _ in range(6)]  # the whole "stream"; the next read fails like an unplugged camera
    device.unlink()
    got = []
    reader = threading.Thread(target=lambda: got.extend(next(it) for _ in range(3)))
    reader.start()
    reader.join(timeout=0.3)
    assert reader.is_alive() and not got  # waiting with backoff, not ending
    device.symlink_to(clip)  # plugged back in
    reader.join(timeout=20)
    src.close()
    assert not reader.is_alive() and src.reconnects >= 1
    assert [f.seq for f in first + got] == list(range(9))  # the stream resumed where it was
    assert got[0].image.shape == (32, 32, 3) and got[0].image.dtype.name == "uint8"
