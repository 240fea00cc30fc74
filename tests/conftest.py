"""Fixtures: tiny real checkpoints in every supported format, built by the tests (no downloads)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the export tests need the [export] extra")

# Head dims chosen so RoPE has unrotated leftover channels (15 -> 3 x 4 + 3; 10 -> 3 x 2 + 4).
TINY_VJEPA2 = dict(crop_size=32, patch_size=8, frames_per_clip=4, tubelet_size=2, hidden_size=60,
                   num_hidden_layers=2, num_attention_heads=4, pred_hidden_size=40, pred_num_hidden_layers=2,
                   pred_num_attention_heads=4, pred_num_mask_tokens=4, pred_zero_init_mask_tokens=False,
                   layer_norm_eps=1e-6)
TINY_IJEPA = dict(image_size=32, patch_size=8, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, layer_norm_eps=1e-6)


def randomize(module: torch.nn.Module, seed: int, std: float = 0.2) -> torch.nn.Module:
    """Non-trivial weights everywhere (biases, norms, mask tokens), so a mis-mapped key cannot go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module.eval()


@pytest.fixture(scope="session")
def hf_vjepa2(tmp_path_factory):
    """A saved transformers VJEPA2Model directory and the live model (the independent reference)."""
    transformers = pytest.importorskip("transformers")
    model = randomize(transformers.VJEPA2Model(transformers.VJEPA2Config(**TINY_VJEPA2)), seed=1)
    path = tmp_path_factory.mktemp("hf") / "vjepa2-tiny"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def hf_ijepa(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    model = randomize(transformers.IJepaModel(transformers.IJepaConfig(**TINY_IJEPA)), seed=2)
    path = tmp_path_factory.mktemp("hf") / "ijepa-tiny"
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="session")
def video_bundle(tmp_path_factory):
    """A small V-JEPA 2 style bundle (encoder + predictor) shared by the runtime, serve, LAN and serial tests."""
    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    return export_bundle(load_preset("tiny", seed=3), tmp_path_factory.mktemp("rt") / "tiny",
                         graphs=["encoder", "predictor"])


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300
            ) -> subprocess.CompletedProcess:
    """Run `ami-edge` the way a user does (a fresh process), capturing output."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "ami_edge", *args], capture_output=True, text=True, cwd=cwd,
                          env=full_env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit 1, no traceback, and exactly one error line (progress lines may precede it), which comes last."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error:" in ln]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
