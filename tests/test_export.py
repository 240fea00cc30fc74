"""`ami-edge export` as a user runs it: checkpoint in, verified bundle out, ONNX Runtime equal to the source model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ami_edge import load_bundle

from .conftest import assert_one_line_error, run_cli
from .test_loaders import _official_file, _sub, _vjepa1_model


def _session(bundle, name):
    return ort.InferenceSession(str(bundle.graph_path(name)), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="session")
def hf_bundle(tmp_path_factory, hf_vjepa2):
    path, _ = hf_vjepa2
    out = tmp_path_factory.mktemp("bundles") / "vjepa2-tiny.amiedge"
    proc = run_cli("export", str(path), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    return load_bundle(out)


def test_hf_vjepa2_bundle_matches_transformers(hf_bundle, hf_vjepa2):
    _, hf = hf_vjepa2
    m = hf_bundle.manifest
    assert m.family == "vjepa2" and m.input.layout == "BTCHW" and (m.input.frames, m.input.height) == (4, 32)
    assert m.latent.tokens == 32 and m.latent.dim == 60 and m.latent.grid == (2, 4, 4)
    assert set(m.graphs) == {"encoder", "predictor"}
    for graph in m.parity["graphs"].values():
        assert graph["passed"] and graph["max_abs"] <= 1e-4
    assert m.provenance["loader"] == "hf:vjepa2" and len(m.provenance["source_sha256"]) == 64
    assert {"torch", "onnx", "onnxruntime"} <= set(m.provenance["versions"])

    # batch 3 (not the traced batch of 2), transformers as the reference
    pixels = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(30))
    ids = torch.arange(32)
    ctx, tgt = ids[:16].expand(3, -1), ids[16:].expand(3, -1)
    with torch.no_grad():
        out = hf(pixels, context_mask=[ctx], target_mask=[tgt])
    (tokens,) = _session(hf_bundle, "encoder").run(None, {"pixels": pixels.numpy()})
    np.testing.assert_allclose(tokens, out.last_hidden_state.numpy(), atol=1e-4, rtol=0)
    (pred,) = _session(hf_bundle, "predictor").run(None, {
        "context": tokens[:, :16], "context_ids": ctx.numpy(), "target_ids": tgt.numpy()})
    np.testing.assert_allclose(pred, out.predictor_output.last_hidden_state.numpy(), atol=1e-4, rtol=0)


def test_predictor_graph_takes_any_context_and_target(hf_bundle, hf_vjepa2):
    """Context/target lengths are dynamic axes: a different split than the exported one works."""
    _, hf = hf_vjepa2
    pixels = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(31))
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(32))
    ctx, tgt = perm[:7].unsqueeze(0), perm[7:].unsqueeze(0)
    with torch.no_grad():
        out = hf(pixels, context_mask=[ctx], target_mask=[tgt])
    tokens = out.last_hidden_state.numpy()
    (pred,) = _session(hf_bundle, "predictor").run(None, {
        "context": np.take_along_axis(tokens, ctx.numpy()[..., None], 1), "context_ids": ctx.numpy(),
        "target_ids": tgt.numpy()})
    np.testing.assert_allclose(pred, out.predictor_output.last_hidden_state.numpy(), atol=1e-4, rtol=0)


def test_graphs_are_single_file_and_valid(hf_bundle):
    for name, spec in hf_bundle.manifest.graphs.items():
        path = hf_bundle.graph_path(name)
        assert list(path.parent.glob("*.data")) == []  # no external data
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
        assert spec.opset >= 17
        assert any(n.op_type == "LayerNormalization" for n in model.graph.node)  # one op for TensorRT
        assert [i.name for i in model.graph.input] == [t.name for t in spec.inputs]
    enc = hf_bundle.manifest.graphs["encoder"]
    assert enc.inputs[0].shape == ("batch", 4, 3, 32, 32) and enc.outputs[0].shape == ("batch", 32, 60)


def test_attention_and_gelu_export_in_forms_onnx_runtime_fuses(hf_bundle, tmp_path):
    """Attention is written as MatMul(q, Transpose(k)) * scale (not the exporter's SDPA decomposition with its
    Shape / Slice / Concat plumbing) and GELU as (x * 0.5) * (1 + erf(x / sqrt 2)), so ONNX Runtime's CPU optimizer
    fuses each layer's scores into one FusedMatMul and its GELU into one (Bias)Gelu kernel."""
    for name in ("encoder", "predictor"):
        model = onnx.load(str(hf_bundle.graph_path(name)))
        ops = [n.op_type for n in model.graph.node]
        layers = ops.count("Softmax")
        assert layers > 0 and ops.count("Erf") == layers
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no CPU-layout ops
        ort.InferenceSession(str(hf_bundle.graph_path(name)), sess_options=options,
                             providers=["CPUExecutionProvider"])
        fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        assert "Erf" not in fused and fused.count("Gelu") + fused.count("BiasGelu") == layers, name
        assert fused.count("FusedMatMul") == layers, name
        if name == "encoder":  # fixed token grid: no shape arithmetic left at all
            assert "Shape" not in ops


def test_export_official_ac_and_vjepa1(tmp_path):
    from .conftest import randomize
    from .official_ac_reference import VisionTransformerPredictorAC

    model = _vjepa1_model(33)
    enc = _sub(model.state_dict(), "encoder.")
    f = _official_file(tmp_path / "v1.pt", {"target_encoder": enc, "predictor": _sub(model.state_dict(),
                                                                                       "predictor.")})
    proc = run_cli("export", str(f), "--family", "vjepa", "--num-heads", "4", "--out", str(tmp_path / "v1"))
    assert proc.returncode == 0, proc.stderr
    bundle = load_bundle(tmp_path / "v1.amiedge")
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(34))
    with torch.no_grad():
        want = model.encoder(x).numpy()
    (got,) = _session(bundle, "encoder").run(None, {"pixels": x.numpy()})
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)

    ac = randomize(VisionTransformerPredictorAC((32, 32), 8, 64, 2, 48, 64, 1, 4), seed=35)
    rope_enc = {k: v for k, v in enc.items() if k != "pos_embed"}
    f = _official_file(tmp_path / "ac.pt", {"encoder": rope_enc, "predictor": ac.state_dict()}, prefix="module.")
    proc = run_cli("export", str(f), "--num-heads", "4", "--pred-num-heads", "4", "--resolution", "32",
                   "--out", str(tmp_path / "ac.amiedge"))
    assert proc.returncode == 0, proc.stderr
    bundle = load_bundle(tmp_path / "ac.amiedge")
    assert set(bundle.manifest.graphs) == {"encoder", "ac_predictor"}
    assert bundle.manifest.input.frames == 2  # per-frame encoding, as the official 2-AC world model
    assert bundle.manifest.graphs["ac_predictor"].inputs[1].shape == ("batch", "steps", 7)
    ln = torch.nn.functional.layer_norm
    gen = torch.Generator().manual_seed(36)
    for steps in (1, 3, 5):  # the step count is a dynamic axis
        ctx, a, s = (torch.randn(3, steps * 16, 48, generator=gen), torch.randn(3, steps, 7, generator=gen),
                     torch.randn(3, steps, 7, generator=gen))
        with torch.no_grad():
            want = ln(ac(ln(ctx, (48,)), a, s), (48,)).numpy()
        (got,) = _session(bundle, "ac_predictor").run(None, {"context": ctx.numpy(), "actions": a.numpy(),
                                                              "states": s.numpy()})
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_export_hf_ijepa_graph_subset(tmp_path, hf_ijepa):
    path, hf = hf_ijepa
    proc = run_cli("export", str(path), "--graphs", "encoder", "--opset", "17", "--out", str(tmp_path / "ij"))
    assert proc.returncode == 0, proc.stderr
    bundle = load_bundle(tmp_path / "ij.amiedge")
    assert bundle.manifest.input.layout == "BCHW" and bundle.manifest.graphs["encoder"].opset == 17
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(37))
    with torch.no_grad():
        want = hf(x).last_hidden_state.numpy()
    np.testing.assert_allclose(_session(bundle, "encoder").run(None, {"pixels": x.numpy()})[0], want, atol=1e-4)


def test_parity_failure_exits_1_and_leaves_nothing(tmp_path, hf_ijepa):
    path, _ = hf_ijepa
    out = tmp_path / "strict.amiedge"
    proc = run_cli("export", str(path), "--tolerance", "1e-12", "--out", str(out))
    assert_one_line_error(proc, "differs from torch", "tolerance 1e-12")
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("args, fragment", [
    (["--opset", "16"], "opset >= 17"),
    (["--graphs", "encoder,ac_predictor"], "no ac_predictor graph"),
    (["--family", "vjepa2"], "cannot be loaded"),
])
def test_export_user_errors(tmp_path, hf_ijepa, args, fragment):
    path, _ = hf_ijepa
    src = str(path)
    if args[0] == "--family":
        src = str(path / "config.json")  # a JSON file forced through the official .pt loader
    proc = run_cli("export", src, *args, "--out", str(tmp_path / "x"))
    assert_one_line_error(proc, fragment)


def test_verbose_shows_traceback(tmp_path):
    proc = run_cli("--verbose", "export", str(tmp_path / "missing.pt"))
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "does not exist" in proc.stderr


def test_default_main_job_exports_builtin_tiny(tmp_path):
    """The README's main job: `ami-edge export` with no arguments."""
    proc = run_cli("export", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    bundle = load_bundle(tmp_path / "tiny.amiedge")
    assert set(bundle.manifest.graphs) == {"encoder", "predictor", "ac_predictor"}
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["provenance"]["source"] == "preset:tiny" and len(manifest["provenance"]["source_sha256"]) == 64
    for report in manifest["parity"]["graphs"].values():
        assert report["passed"] and report["max_abs"] <= 1e-4


def test_surprise_beyond_the_models_tokens_is_refused_before_writing(tmp_path):
    out = tmp_path / "x.amiedge"
    proc = run_cli("export", "preset:tiny", "--out", str(out), "--surprise", "top100000")
    assert_one_line_error(proc, "--surprise: 'top100000' is not a surprise reduction", "1 <= K <=")
    assert not out.exists()


def test_out_never_replaces_what_is_not_a_bundle(tmp_path, hf_ijepa):
    path, _ = hf_ijepa
    notes = tmp_path / "victim.amiedge"
    notes.mkdir()
    (notes / "notes.txt").write_text("keep me")
    assert_one_line_error(run_cli("export", str(path), "--out", str(notes)), "refusing to replace it")
    assert (notes / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "file.amiedge"
    afile.write_text("x")
    assert_one_line_error(run_cli("export", str(path), "--out", str(afile)), "is not a bundle directory")
