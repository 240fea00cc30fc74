"""Runtime: every number it produces is checked against plain ONNX Runtime on independently preprocessed clips."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from ami_edge import ConfigError, Runtime, load_bundle
from ami_edge.runtime import SurpriseBaseline
from ami_edge.sources import open_source


def _frames(n: int, size: int = 80, seed: int = 1) -> list[np.ndarray]:
    return [f.image for f in open_source(f"synthetic://bouncing?seed={seed}&size={size}&frames={n}")]


def _reference_tokens(bundle, clip: list[np.ndarray]) -> np.ndarray:
    """Preprocess by hand (resize, /255, mean/std, BCTHW) and run the encoder graph directly."""
    m = bundle.manifest.input
    x = np.stack([cv2.resize(f, (m.width, m.height), interpolation=cv2.INTER_LINEAR) for f in clip]).astype(
        np.float32) / 255.0
    x = (x - np.array(m.mean, np.float32)) / np.array(m.std, np.float32)  # (F, H, W, C)
    feed = x.transpose(3, 0, 1, 2)[None]  # (1, C, F, H, W)
    session = ort.InferenceSession(str(bundle.graph_path("encoder")), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixels": np.ascontiguousarray(feed)})[0][0]


def _reference_prediction(bundle, tokens: np.ndarray) -> np.ndarray:
    t, h, w = bundle.manifest.latent.grid
    n = t * h * w
    session = ort.InferenceSession(str(bundle.graph_path("predictor")), providers=["CPUExecutionProvider"])
    return session.run(None, {"context": tokens[None], "context_ids": np.arange(n)[None],
                              "target_ids": np.arange(n, n + h * w)[None]})[0][0]


def test_stream_latents_predictions_and_surprise_match_the_graphs(video_bundle):
    frames = _frames(30)
    states = []
    with Runtime(video_bundle, source=frames, on_state=states.append) as rt:  # an iterable: no frame dropped
        streamed = list(rt.stream())
    f, k = video_bundle.manifest.input.frames, video_bundle.manifest.input.tubelet
    assert streamed == states and [s.seq for s in streamed] == list(range(f - 1, 30))
    for s in (streamed[0], streamed[9], streamed[-1]):
        window = frames[s.seq - f + 1:s.seq + 1]
        ref = _reference_tokens(video_bundle, window)
        np.testing.assert_allclose(s.latent, ref.mean(0), atol=1e-5)
        np.testing.assert_allclose(s.prediction, _reference_prediction(video_bundle, ref).mean(0), atol=1e-5)
        assert s.t_done >= s.t_capture
    # surprise at t: the prediction made from the clip ending at t - k against the tokens of the clip ending at t
    s = streamed[12]
    before = _reference_tokens(video_bundle, frames[s.seq - k - f + 1:s.seq - k + 1])
    now = _reference_tokens(video_bundle, frames[s.seq - f + 1:s.seq + 1])
    hw = video_bundle.manifest.latent.grid[1] * video_bundle.manifest.latent.grid[2]
    expected = np.mean((_reference_prediction(video_bundle, before) - now[-hw:]) ** 2)
    assert s.raw_surprise == pytest.approx(float(expected), rel=1e-4)
    assert streamed[0].surprise is None and streamed[-1].surprise is not None  # warm-up, then a z-score


def _with_latent(src, tmp_path, **latent):
    """A copy of bundle `src` whose manifest's `latent` is updated with `latent` (a second call edits the copy)."""
    bundle = tmp_path / "edited.amiedge"
    if not bundle.exists():
        shutil.copytree(src.path, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["latent"].update(latent)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return load_bundle(bundle)


def _state_and_tokens(b, frames: list[np.ndarray], i: int):
    """The i-th streamed state and, from plain ONNX Runtime, what its surprise compares: the prediction made k frames
    earlier, the last step of the clip it was made from, and the tokens of the step ending now (each (HW, D))."""
    with Runtime(b, source=frames) as rt:
        s = list(rt.stream())[i]
    f, k = b.manifest.input.frames, b.manifest.input.tubelet
    before = _reference_tokens(b, frames[s.seq - k - f + 1:s.seq - k + 1])
    now = _reference_tokens(b, frames[s.seq - f + 1:s.seq + 1])
    hw = b.manifest.latent.grid[1] * b.manifest.latent.grid[2]
    return s, _reference_prediction(b, before), before[-hw:], now[-hw:]


def test_top_k_surprise_is_the_mean_of_the_worst_predicted_tokens(video_bundle, tmp_path):
    """A bundle whose `latent.surprise` is topK averages the squared error over its K worst predicted tokens only."""
    s, predicted, _, now = _state_and_tokens(_with_latent(video_bundle, tmp_path, surprise="top3"), _frames(20), 10)
    per_token = ((predicted - now) ** 2).mean(1)
    assert s.raw_surprise == pytest.approx(float(np.sort(per_token)[-3:].mean()), rel=1e-4)
    assert s.raw_surprise > per_token.mean() * 1.01  # not the mean: the test would pass for it otherwise


def test_stall_term_is_the_error_relative_to_each_tokens_change(video_bundle, tmp_path):
    """With `latent.stall`, raw surprise is the larger of the plain top-K error and weight x the top-K of error /
    (the token's change since the context's last step + offset), the context being the clip the prediction came
    from."""
    frames = _frames(20)
    b = _with_latent(video_bundle, tmp_path, surprise="top3", stall={"offset": 0.05, "weight": 40.0})
    s, predicted, last, now = _state_and_tokens(b, frames, 10)
    err = ((predicted - now) ** 2).mean(1)
    change = ((now - last) ** 2).mean(1)
    plain, relative = np.sort(err)[-3:].mean(), 40.0 * np.sort(err / (change + 0.05))[-3:].mean()
    assert relative > plain * 1.01  # the stall term decides here: the test would pass without it otherwise
    assert s.raw_surprise == pytest.approx(float(relative), rel=1e-4)
    # a negligible weight: the plain term wins and raw surprise is the top-3 error again
    b = _with_latent(video_bundle, tmp_path, stall={"offset": 0.05, "weight": 1e-6})
    assert _state_and_tokens(b, frames, 10)[0].raw_surprise == pytest.approx(float(plain), rel=1e-4)


def test_encode_and_predict_apis(video_bundle):
    frames = _frames(4, size=64, seed=5)
    with Runtime(video_bundle, source=[]) as rt:
        tokens = rt.encode(frames)
        np.testing.assert_allclose(tokens, _reference_tokens(video_bundle, frames), atol=1e-5)
        np.testing.assert_allclose(rt.predict(tokens), _reference_prediction(video_bundle, tokens), atol=1e-5)
        with pytest.raises(ConfigError, match="exactly 4 frames"):
            rt.encode(frames[:3])


def test_synthetic_uri_and_max_frames(video_bundle):
    with Runtime(load_bundle(video_bundle.path), source="synthetic://bouncing?size=64") as rt:
        assert "onnxruntime (CPUExecutionProvider)" in rt.describe()
        states = list(rt.stream(max_frames=7))
    assert len(states) == 7 and states[0].latent.shape == (video_bundle.manifest.latent.dim,)


def test_bad_inputs_are_clear(video_bundle):
    with pytest.raises(ConfigError, match="H x W x 3 uint8"):
        list(Runtime(video_bundle, source=[np.zeros((8, 8), np.uint8)] * 4).stream())
    with pytest.raises(ConfigError, match="unknown backend 'tflite'"):
        Runtime(video_bundle, source=[], backend="tflite")
    with pytest.raises(ConfigError, match="TensorrtExecutionProvider"):
        Runtime(video_bundle, source=[], backend="onnxruntime:tensorrt")  # not in the CPU build


def test_surprise_baseline_is_calm_then_flags_events():
    base = SurpriseBaseline(threshold=4.0, warmup=10)
    rng = np.random.default_rng(0)
    zs = [base.update(1.0 + 0.05 * rng.standard_normal()) for _ in range(200)]
    calm = [z for z, _ in zs if z is not None]
    assert zs[0] == (None, False) and abs(np.mean(calm)) < 0.5 and not any(e for _, e in zs)
    mean_before = base.mean
    z, event = base.update(3.0)  # 40 standard deviations
    assert event and z > 4.0 and base.mean == mean_before  # an event does not move the baseline


def test_sincos_predictor_is_asked_for_positions_inside_its_table(tmp_path):
    """A V-JEPA-1-style predictor (fixed sincos table, no extrapolation) gets the clip's last T-1 steps shifted to
    positions [0, N-HW) and predicts position step T-1: the step after the recent past, inside the table."""
    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    bundle = export_bundle(load_preset("tiny-vjepa", seed=2), tmp_path / "sincos.amiedge")
    t, h, w = bundle.manifest.latent.grid
    assert bundle.manifest.model["encoder"]["pos_embed"] != "rope" and t >= 2
    n, hw = t * h * w, h * w
    frames = _frames(12)
    with Runtime(bundle, source=frames) as rt:
        states = list(rt.stream())
    f = bundle.manifest.input.frames
    s = states[-1]
    tokens = _reference_tokens(bundle, frames[s.seq - f + 1:s.seq + 1])
    session = ort.InferenceSession(str(bundle.graph_path("predictor")), providers=["CPUExecutionProvider"])
    ref = session.run(None, {"context": tokens[None, hw:], "context_ids": np.arange(n - hw)[None],
                             "target_ids": np.arange(n - hw, n)[None]})[0][0]
    np.testing.assert_allclose(s.prediction, ref.mean(0), atol=1e-5)
    assert all(np.isfinite(x.raw_surprise) for x in states[2:])


def test_torch_reference_backend_matches_onnxruntime(video_bundle, tmp_path):
    """backend torch rebuilds the model the bundle was exported from (here preset tiny, seed 3) and runs the same
    feeds: it must agree with the ONNX graphs; a bundle whose checkpoint is gone is one clear line."""
    from .conftest import assert_one_line_error, run_cli

    frames = _frames(12)
    with Runtime(video_bundle, source=frames) as rt:
        onnx_states = list(rt.stream())
    with Runtime(video_bundle, source=frames, backend="torch") as rt:
        assert rt.encoder.describe() == "torch (reference, CPU)"
        torch_states = list(rt.stream())
    for a, b in zip(onnx_states, torch_states, strict=True):
        np.testing.assert_allclose(a.latent, b.latent, atol=1e-4)
        np.testing.assert_allclose(a.prediction, b.prediction, atol=1e-4)
    moved = tmp_path / "moved.amiedge"
    shutil.copytree(video_bundle.path, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["provenance"]["source"] = str(tmp_path / "gone.safetensors")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(run_cli("serve", "--model", str(moved), "--backend", "torch", "--max-frames", "3"),
                          "is not there")
