"""Runtime -> serial -> the compiled C MCU -> ACTION -> back into the Runtime's action input (issue 6 end to end)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from ami_edge import Runtime
from ami_edge.firmware_bridge.loopback import PtyCable
from ami_edge.publishers import open_publisher

from .test_firmware_c import C_DIR, _build

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")


@pytest.fixture
def cable(tmp_path):
    """The compiled C example MCU on the far end of a pty cable."""
    exe = _build(tmp_path, "mcu", [C_DIR / "ami_bridge.c", C_DIR / "example" / "main.c"])
    with PtyCable() as cable:
        mcu = subprocess.Popen([str(exe), cable.mcu_path])
        try:
            yield cable
        finally:
            mcu.kill()
            mcu.wait(timeout=10)


def test_mcu_actions_reach_the_runtime(cable, video_bundle):
    with Runtime(video_bundle, source="synthetic://bouncing?size=64&fps=100") as rt:
        pub = open_publisher(f"serial://{cable.host_path}?baud=921600&latent_dim=8&dtype=i8", rt)
        try:
            assert pub.link.wait_up(10), "the MCU did not answer HELLO"
            with_action = None
            for state in rt.stream(max_frames=600):  # bounded: 6 s of frames at most
                pub.publish(state)
                if state.action is not None:
                    with_action = state
                    break
            assert with_action is not None, "no ACTION came back from the MCU"
            # the C example answers each SURPRISE with [speed, surprise value]
            assert with_action.action.shape == (2,) and 0.2 <= with_action.action[0] <= 1.0
            counters = pub.link.counters()
            assert counters["tx_frames"] > 10 and counters["rx_crc_errors"] == 0
        finally:
            pub.close()


def test_action_conditioned_prediction_uses_pushed_actions(tmp_path):
    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    bundle = export_bundle(load_preset("tiny", seed=4), tmp_path / "ac")  # has an ac_predictor
    frames = [np.full((32, 32, 3), 90, np.uint8)] * 6  # identical frames: only the action differs
    with Runtime(bundle, source=frames) as rt:
        first = next(rt.stream())
        assert first.action is None and first.action_prediction is None
        rt.push_action(np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]))
        a = next(rt.stream())
        rt.push_action(np.array([-1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0]))
        b = next(rt.stream())
    assert a.action_prediction.shape == (bundle.manifest.latent.dim,)
    np.testing.assert_allclose(a.latent, b.latent, atol=1e-6)  # same scene ...
    assert not np.allclose(a.action_prediction, b.action_prediction)  # ... different action, different prediction


def test_unknown_publisher():
    from ami_edge.sources import SourceError

    with pytest.raises(SourceError, match="unknown publisher scheme 'mqtt://'"):
        open_publisher("mqtt://broker", runtime=None)


def test_serial_link_counters_are_exported_as_metrics(cable, video_bundle):
    from prometheus_client import generate_latest

    from ami_edge.http import Metrics

    with Runtime(video_bundle, source="synthetic://bouncing?size=64&fps=100") as rt:
        pub = open_publisher(f"serial://{cable.host_path}", rt)
        metrics = Metrics()
        metrics.watch_link(pub.link.port_spec, pub.link.counters)
        try:
            assert pub.link.wait_up(10)
            for state in rt.stream(max_frames=30):
                pub.publish(state)
            text = generate_latest(metrics.registry).decode()
        finally:
            pub.close()
    line = next(ln for ln in text.splitlines() if ln.startswith("ami_edge_serial_tx_frames{"))
    assert f'port="{cable.host_path}"' in line and float(line.split()[-1]) >= 30
    assert "ami_edge_serial_up{" in text and "ami_edge_serial_rx_crc_errors{" in text
