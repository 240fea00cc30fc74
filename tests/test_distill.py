"""`ami-edge distill`: student configs, teacher targets on the student's grid, DDP under torchrun, resumable
checkpoints, and distill -> quantize -> compare end to end on the demo world, CI-sized.

Every run is a fresh `ami-edge` process (or `torchrun`) as a user starts it; teachers are the shipped default bundle
(ONNX Runtime) and built-in presets (torch).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ami_edge import load_bundle

from .conftest import assert_one_line_error, run_cli

torch = pytest.importorskip("torch")

from ami_edge.export.demo.voe import KINDS  # noqa: E402
from ami_edge.export.distill import StudentSpec, resample, student_config  # noqa: E402
from ami_edge.export.models import JEPAModel  # noqa: E402
from ami_edge.export.models.presets import preset_config  # noqa: E402

SMALL = ["--width", "32", "--depth", "2", "--pred-width", "32", "--pred-depth", "1", "--patch", "8"]


def test_student_config_shrinks_what_is_asked_and_keeps_the_rest():
    teacher = preset_config("small")  # 192 x 6, 3 heads, 128 px, 8 frames
    s = student_config(teacher, StudentSpec())
    assert (s.encoder.embed_dim, s.encoder.depth, s.encoder.num_heads) == (96, 3, 1)  # head width 64 kept
    assert (s.predictor.embed_dim, s.predictor.depth) == (48, 2)
    assert s.encoder.img_size == (128, 128) and s.encoder.num_frames == 8 and s.encoder.pos_embed == "rope"
    s = student_config(teacher, StudentSpec(width=48, heads=2, resolution=64, frames=4, patch=8))
    assert s.encoder.grid == (2, 8, 8) and s.encoder.num_heads == 2
    JEPAModel(s)  # buildable
    from ami_edge.errors import ConfigError

    with pytest.raises(ConfigError, match="at most the teacher's 8 frames"):
        student_config(teacher, StudentSpec(frames=16))


def test_resample_takes_the_last_steps_and_averages_space():
    b, d = 2, 3
    tokens = torch.arange(b * 2 * 4 * 4 * d, dtype=torch.float32).reshape(b, 2 * 4 * 4, d)
    out = resample(tokens, (2, 4, 4), (1, 2, 2))
    grid = tokens.reshape(b, 2, 4, 4, d)[:, 1]  # last step
    expected = grid.reshape(b, 2, 2, 2, 2, d).mean((2, 4)).reshape(b, 4, d)  # 2x2 blocks
    torch.testing.assert_close(out, expected)
    assert resample(tokens, (2, 4, 4), (2, 4, 4)).equal(tokens)


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_distill_quantize_compare_end_to_end(tmp_path):
    """The shipped default (ONNX Runtime teacher) into a student with >10x fewer FLOPs (8 px patches: a quarter of
    the teacher's tokens), then INT8 and compare."""
    out = tmp_path / "run"
    proc = run_cli("distill", "--out", str(out), "--steps", "60", "--batch", "8", "--voe-pairs", "3", *SMALL)
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    assert report["flops_ratio"] >= 10 and report["student"]["params"] < report["teacher"]["params"] / 5
    assert report["world_size"] == 1 and report["steps"] == 60
    history = json.loads((out / "history.json").read_text())
    # it learns: held-out feature loss and latent cosine improve from the first evaluation to the last
    assert history[-1]["val_feature"] < 0.8 * history[0]["val_feature"]
    assert history[-1]["latent_cosine"] > history[0]["latent_cosine"] + 0.1
    for who in ("voe_teacher", "voe_student"):
        assert tuple(report[who]["auc"]) == KINDS
        assert all(0.0 <= v <= 1.0 for v in report[who]["auc"].values()) and report[who]["pairs"] == 3
    assert (out / "distill.png").stat().st_size > 10_000
    student = load_bundle(out / "student.amiedge")
    assert student.manifest.latent.dim == 32 and set(student.manifest.graphs) == {"encoder", "predictor",
                                                                                  "ac_predictor"}
    assert student.manifest.training["distillation"]["flops_ratio"] == report["flops_ratio"]
    # the student keeps the teacher bundle's surprise reduction, and both VoEs were scored with it
    teacher_surprise = load_bundle("default-fp32").manifest.latent.surprise
    assert teacher_surprise != "mean" and student.manifest.latent.surprise == teacher_surprise == report["surprise"]
    # the student runs in the runtime like any bundle, surprise included
    from ami_edge import Runtime

    with Runtime(student, source="synthetic://bouncing?seed=9&size=64") as rt:
        states = list(rt.stream(max_frames=14))
    assert len(states) == 14 and states[-1].latent.shape == (32,) and states[-1].raw_surprise is not None
    # quantize it, then compare the two on held-out frames
    q = tmp_path / "student-int8.amiedge"
    proc = run_cli("quantize", str(student.path), "--out", str(q), "--source", "synthetic://bouncing?seed=77&size=64",
                   "--calib-frames", "48", "--eval-frames", "24", "--max-clips", "16", "--voe-pairs", "2",
                   "--max-auc-drop", "1", "--min-cosine", "0.95")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("compare", str(student.path), str(q), "--source", "synthetic://bouncing?seed=21&size=64",
                   "--frames", "12", "--json", "--min-cosine", "0.95")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cmp = json.loads(proc.stdout)
    assert cmp["passed"] and cmp["outputs"]["latent"]["cosine"] > 0.95


def test_torchrun_ddp_on_cpu(tmp_path):
    """Two processes (gloo): both train, rank 0 writes once; the result is a normal student bundle."""
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.fail("torchrun is missing: it ships with torch ([export] extra)")
    out = tmp_path / "ddp"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "--no-python",
                           str(Path(sys.executable).parent / "ami-edge"), "distill", "--out", str(out),
                           "--steps", "12", "--batch", "4", "--voe-pairs", "0", "--save-every", "6", *SMALL],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = _report(out)
    assert report["world_size"] == 2 and report["steps"] == 12
    weights, data = report["rank_digests"]["weights"], report["rank_digests"]["data"]
    assert len(weights) == 2 and weights[0] == weights[1]  # gradients were all-reduced: identical students
    assert data[0] != data[1]  # ...trained on different frames per rank
    assert proc.stdout.count("wrote ") == 1  # only rank 0 exports
    assert load_bundle(out / "student.amiedge").manifest.training["distillation"]["world_size"] == 2


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "resume"
    args = [sys.executable, "-m", "ami_edge", "distill", "preset:tiny", "--out", str(out), "--steps", "400",
            "--batch", "4", "--save-every", "5", "--voe-pairs", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpt = out / "checkpoint.safetensors"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for a file the run writes, not synchronising on time
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert ckpt.exists(), proc.stderr.read()
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        saved = json.loads(f.metadata()["ami_edge_distill"])["step"]
    assert 5 <= saved < 400
    # without --resume an existing run is not overwritten
    again = run_cli("distill", "preset:tiny", "--out", str(out), "--steps", "400")
    assert_one_line_error(again, "checkpoint.safetensors exists", "--resume")
    # a different student is refused
    other = run_cli("distill", "preset:tiny", "--out", str(out), "--steps", "400", "--resume", "--width", "16")
    assert_one_line_error(other, "different student")
    done = run_cli("distill", "preset:tiny", "--out", str(out), "--steps", str(saved + 10), "--batch", "4",
                   "--resume", "--voe-pairs", "0")
    assert done.returncode == 0, done.stderr
    log = " ".join(done.stderr.split())
    assert "resumed" in log and f"at step {saved}" in log, log
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["step"] == saved + 10 and _report(out)["steps"] == saved + 10


@pytest.mark.parametrize("teacher", ["preset:tiny-vjepa", "preset:tiny-ijepa"])
def test_torch_teachers_sincos_and_image(tmp_path, teacher):
    """V-JEPA 1 style (sincos table: context = last T-1 steps) and I-JEPA (image: encoder-only student), from
    frames of an mp4 the test writes (the generic source path with its shuffle buffer)."""
    import cv2

    clip = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"mp4v"), 30, (64, 64))
    rng = np.random.default_rng(0)
    for k in range(40):
        frame = np.full((64, 64, 3), 40, np.uint8)
        cv2.circle(frame, (8 + k, 20 + k // 2), 6, (200, 80, 40), -1)
        frame[rng.integers(64), :] = 255
        writer.write(frame)
    writer.release()
    out = tmp_path / "run"
    proc = run_cli("distill", teacher, "--out", str(out), "--source", str(clip), "--steps", "8", "--batch", "4",
                   "--voe-pairs", "2" if teacher.endswith("vjepa") else "0")
    assert proc.returncode == 0, proc.stderr
    report = _report(out)
    student = load_bundle(out / "student.amiedge")
    if teacher.endswith("ijepa"):
        assert set(student.manifest.graphs) == {"encoder"} and report["prediction_cosine"] is None
    else:
        assert "predictor" in student.manifest.graphs and "voe_student" in report
        assert report["teacher"]["kind"] == "torch (preset)"
        assert student.manifest.latent.surprise == "mean"  # a checkpoint records no reduction


@pytest.mark.parametrize("argv, fragment", [
    (["--source", "bogus://nothing"], "bogus"),
    (["--frames", "8"], "at most the teacher's 4 frames"),
    (["preset:nope"], "unknown preset"),
    (["--surprise", "top100000"], "--surprise: 'top100000' is not a surprise reduction"),  # before training
])
def test_bad_input_is_one_line(tmp_path, argv, fragment):
    teacher = [] if argv[0].startswith("preset:") else ["preset:tiny"]
    proc = run_cli("distill", *teacher, *argv, "--out", str(tmp_path / "x"), "--steps", "2")
    assert_one_line_error(proc, fragment)
