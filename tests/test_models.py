"""Model pieces against the official formulas and the properties the architecture promises."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ami_edge.export.models import ACPredictor, JEPAModel, Predictor
from ami_edge.export.models.config import ACPredictorConfig, EncoderConfig, JEPAConfig, PredictorConfig
from ami_edge.export.models.layers import Rope3D, rope_3d_reference, rope_rotate, sincos_2d, sincos_3d
from ami_edge.export.models.presets import PRESETS, preset_config
from ami_edge.errors import ConfigError

from .conftest import randomize


def _official_1d(embed_dim, pos):  # verbatim get_1d_sincos_pos_embed_from_grid
    omega = np.arange(embed_dim // 2, dtype=float)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def test_sincos_2d_is_ijepa_column_first():
    g = 5
    grid = np.stack(np.meshgrid(np.arange(g, dtype=float), np.arange(g, dtype=float)), axis=0).reshape(2, 1, g, g)
    ref = np.concatenate([_official_1d(16, grid[0]), _official_1d(16, grid[1])], axis=1)
    np.testing.assert_allclose(sincos_2d(32, g, g), ref, atol=1e-12)
    # token 1 is (row 0, column 1): the first half must move, the second half (rows) must not
    table = sincos_2d(32, g, g)
    assert not np.allclose(table[0, :16], table[1, :16]) and np.allclose(table[0, 16:], table[1, 16:])


@pytest.mark.parametrize("uniform", [False, True])
def test_sincos_3d_matches_official(uniform):
    dim, t, s = 70, 3, 4
    gh, gd, gw = np.meshgrid(np.arange(s, dtype=float), np.arange(t, dtype=float), np.arange(s, dtype=float))
    dh = dw = int(np.ceil(dim / 6) * 2) if uniform else dim // 4
    dd = dh if uniform else dim // 2
    ref = np.concatenate([_official_1d(dd, gd), _official_1d(dh, gh), _official_1d(dw, gw)], axis=1)[:, :dim]
    np.testing.assert_allclose(sincos_3d(dim, t, s, s, uniform), ref, atol=1e-12)


def test_rope_keeps_vjepa2_tiled_frequency_quirk():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 8)
    pos = torch.arange(5.0).view(1, 1, 5)
    omega = 1.0 / 10000 ** (torch.arange(4) / 4.0)
    freq = pos.unsqueeze(-1) * omega
    tiled = torch.cat([freq, freq], -1)  # [f0 f1 f2 f3 f0 f1 f2 f3]: channel j uses f[j % 4]
    pairs = x.unflatten(-1, (-1, 2))
    rot = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
    expected = x * tiled.cos() + rot * tiled.sin()
    torch.testing.assert_close(rope_rotate(x, pos), expected)
    interleaved = freq.repeat_interleave(2, -1)  # the "textbook" layout differs, on purpose
    assert not torch.allclose(rope_rotate(x, pos), x * interleaved.cos() + rot * interleaved.sin())
    torch.testing.assert_close(rope_rotate(x, torch.zeros(1, 1, 5)), x)  # angle 0 is the identity


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim", [16, 24, 32, 88, 9])  # remainders 4, 0, 2, 4 (ViT-g), odd head
def test_lean_rope_equals_per_axis_formulation_bit_for_bit(head_dim, interleaved):
    """Rope3D (full-width tables, one pair swap) against the official split / rotate / concat form, at random
    float positions that differ per batch row (as the predictor's ids make them), over q and k stacked."""
    gen = torch.Generator().manual_seed(head_dim)
    x = torch.randn(2, 3, 4, 50, head_dim, generator=gen)  # (q|k, B, nh, N, hd)
    pos = tuple(torch.rand(3, 1, 50, generator=gen) * 40 - 5 for _ in range(3))  # each (B, 1, N)
    rope = Rope3D(head_dim, interleaved)
    got = rope(x, rope.tables(pos))
    assert torch.equal(got, rope_3d_reference(x, pos, interleaved))
    s = rope.section
    assert torch.equal(got[..., 3 * s:], x[..., 3 * s:])  # the remainder channels pass unrotated
    assert not torch.allclose(got[..., :3 * s], x[..., :3 * s])


def test_rope_tables_stay_out_of_the_state_dict():
    """The tables' buffers derive from the config: official checkpoints load strictly and save unchanged."""
    model = JEPAModel(preset_config("tiny"))
    assert model.cfg.encoder.pos_embed == "rope"
    assert not [k for k in model.state_dict() if "rope" in k]


def test_exported_rope_graph_is_lean(video_bundle, tmp_path):
    """Regression guard for issue 7: the per-axis RoPE exported as ~70 nodes per layer (Split / Squeeze / Neg /
    Concat per axis, for q and k separately). Now: the encoder's tables are constants, each predictor computes its
    tables once (one Sin, one Cos) and every layer rotates q and k with one Slice / Concat pair swap."""
    import onnx

    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import (DEFAULT_OPSET, DEFAULT_TOLERANCE, check_parity, export_graph,
                                             plan_graphs)

    # the bundle fixture has no AC predictor: export that graph the same way, ONNX Runtime parity included
    [plan] = plan_graphs(load_preset("tiny", seed=3).model.eval(), ["ac_predictor"], 2, seed=0)
    export_graph(plan, tmp_path / "ac_predictor.onnx", DEFAULT_OPSET)
    assert check_parity(plan, tmp_path / "ac_predictor.onnx", DEFAULT_TOLERANCE)["passed"]
    model = video_bundle.manifest.model
    assert model["encoder"]["pos_embed"] == "rope"
    for graph in ("encoder", "predictor", "ac_predictor"):
        layers = model[graph]["depth"]
        path = tmp_path / "ac_predictor.onnx" if graph == "ac_predictor" else video_bundle.graph_path(graph)
        nodes = onnx.load(str(path)).graph.node
        ops = [n.op_type for n in nodes]
        assert ops.count("Neg") == 0 and ops.count("Split") == 0, graph
        assert ops.count("Sin") == ops.count("Cos") == (0 if graph == "encoder" else 1), graph
        # ~48 nodes per layer plus the predictors' id / table preamble; the per-axis form took > 110 per layer
        assert len(ops) < 60 * layers + 80, (graph, len(ops))


def test_ac_predictor_matches_official_transcription():
    from .official_ac_reference import VisionTransformerPredictorAC

    for ext in (False, True):
        # non-square grid (4 x 6) exercises the official column-position scaling
        ref = randomize(VisionTransformerPredictorAC((32, 48), 8, 8, 2, 40, 48, 2, 2, use_extrinsics=ext), seed=3)
        enc = EncoderConfig(img_size=(32, 48), patch_size=8, num_frames=8, embed_dim=40, depth=1, num_heads=4,
                            pos_embed="rope")
        ours = ACPredictor(ACPredictorConfig(embed_dim=48, depth=2, num_heads=2, use_extrinsics=ext), enc).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        gen = torch.Generator().manual_seed(4)
        steps = 3
        x = torch.randn(2, steps * 24, 40, generator=gen)
        a, s, e = (torch.randn(2, steps, n, generator=gen) for n in (7, 7, 6))
        with torch.no_grad():
            torch.testing.assert_close(ours(x, a, s, e), ref(x, a, s, e), atol=1e-5, rtol=1e-5)


def test_ac_predictor_is_block_causal():
    cfg = preset_config("tiny")
    ac = randomize(ACPredictor(cfg.ac_predictor, cfg.encoder), seed=5)
    hw = cfg.encoder.grid[1] * cfg.encoder.grid[2]
    gen = torch.Generator().manual_seed(6)
    x, a, s = torch.randn(1, 3 * hw, 96, generator=gen), torch.randn(1, 3, 7, generator=gen), torch.randn(1, 3, 7)
    with torch.no_grad():
        base = ac(x, a, s)
        a2 = a.clone()
        a2[:, 2] += 5.0  # change only the last step's action
        moved = ac(x, a2, s)
    torch.testing.assert_close(moved[:, : 2 * hw], base[:, : 2 * hw])  # earlier steps cannot see it
    assert (moved[:, 2 * hw:] - base[:, 2 * hw:]).abs().max() > 1e-3


def test_predictor_ignores_context_order():
    cfg = preset_config("tiny")
    pred = randomize(Predictor(cfg.predictor, cfg.encoder), seed=7)
    gen = torch.Generator().manual_seed(8)
    ctx_ids = torch.arange(0, 16).unsqueeze(0)
    tgt_ids = torch.arange(16, 32).unsqueeze(0)
    ctx = torch.randn(1, 16, 96, generator=gen)
    perm = torch.randperm(16, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(pred(ctx, ctx_ids, tgt_ids), pred(ctx[:, perm], ctx_ids[:, perm], tgt_ids),
                                   atol=1e-5, rtol=1e-5)



def test_residual_predictor_adds_its_change_to_the_last_step(tmp_path):
    import dataclasses

    import onnxruntime as ort

    from ami_edge import load_bundle
    from ami_edge.export.loaders import load_preset
    from ami_edge.export.onnx_export import export_bundle

    cfg = preset_config("tiny")
    residual = randomize(Predictor(dataclasses.replace(cfg.predictor, residual=True), cfg.encoder), seed=7)
    plain = Predictor(cfg.predictor, cfg.encoder).eval()
    plain.load_state_dict(residual.state_dict())
    t, h, w = cfg.encoder.grid
    n, hw = t * h * w, h * w
    ctx = torch.randn(2, n, cfg.encoder.embed_dim, generator=torch.Generator().manual_seed(1))
    ctx_ids, tgt_ids = torch.arange(n).expand(2, -1), torch.arange(n, n + hw).expand(2, -1)  # the step after
    with torch.no_grad():
        out = residual(ctx, ctx_ids, tgt_ids)
        torch.testing.assert_close(out, ctx[:, -hw:] + plain(ctx, ctx_ids, tgt_ids))
        assert (out - ctx[:, -hw:]).abs().max() > 1e-2  # it does predict a change
        for bad in ((ctx, ctx_ids, tgt_ids[:, 1:]), (ctx[:, 1:], ctx_ids[:, 1:], tgt_ids)):
            with pytest.raises(ValueError, match="one 4x4 grid step"):
                residual(*bad)
    # exported: the same numbers from ONNX Runtime on the runtime's query (whole clip -> the step after it)
    loaded = load_preset("tiny", seed=3)
    model = loaded.model
    model.cfg = dataclasses.replace(model.cfg, predictor=dataclasses.replace(model.cfg.predictor, residual=True))
    model.predictor.cfg = model.cfg.predictor
    bundle = load_bundle(export_bundle(loaded, tmp_path / "res", graphs=["encoder", "predictor"]).path)
    assert bundle.manifest.model["predictor"]["residual"] is True
    sess = ort.InferenceSession(str(bundle.graph_path("predictor")), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"context": ctx.numpy(), "context_ids": ctx_ids.numpy(), "target_ids": tgt_ids.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model.predictor(ctx, ctx_ids, tgt_ids).numpy(), atol=1e-4)


def _conv_model(seed: int = 3):
    import dataclasses

    from ami_edge.export.loaders import load_preset
    from ami_edge.export.models import make_predictor

    loaded = load_preset("tiny", seed=seed)
    model = loaded.model
    model.cfg = dataclasses.replace(model.cfg, predictor=PredictorConfig(arch="conv", residual=True, embed_dim=16,
                                                                         depth=2))
    model.predictor = randomize(make_predictor(model.cfg.predictor, model.cfg.encoder), seed=seed + 1, std=0.1)
    return loaded


def test_conv_predictor_is_a_local_residual_predictor_on_the_grid():
    from ami_edge.export.models import ConvPredictor, make_predictor

    cfg = preset_config("tiny")
    conv = PredictorConfig(arch="conv", residual=True, embed_dim=16, depth=2)
    fresh = make_predictor(conv, cfg.encoder).eval()
    assert isinstance(fresh, ConvPredictor)
    t, h, w = cfg.encoder.grid
    n, hw = t * h * w, h * w
    ctx = torch.randn(2, n, cfg.encoder.embed_dim, generator=torch.Generator().manual_seed(1))
    ctx_ids, tgt_ids = torch.arange(n).expand(2, -1), torch.arange(n, n + hw).expand(2, -1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(ctx, ctx_ids, tgt_ids), ctx[:, -hw:])  # a fresh one copies the last step
        pred = randomize(make_predictor(conv, cfg.encoder), seed=2, std=0.1)
        out = pred(ctx, ctx_ids, tgt_ids)
        assert out.shape == (2, hw, cfg.encoder.embed_dim) and (out - ctx[:, -hw:]).abs().max() > 1e-2
        # grid-aware: the same tokens shifted one column predict differently (the coordinates and the zero padding
        # tell it where the walls are), and a token's change depends on its neighbours
        shifted = ctx.view(2, t, h, w, -1).roll(1, dims=3).reshape(2, n, -1)
        assert not torch.allclose(pred(shifted, ctx_ids, tgt_ids).view(2, h, w, -1).roll(-1, dims=2).view(2, hw, -1),
                                  out, atol=1e-3)
        moved = ctx.clone()
        moved[:, -hw + w + 1] += 1.0  # one token of the last step, at grid (1, 1)
        delta = (pred(moved, ctx_ids, tgt_ids) - out).abs().amax(-1).view(2, h, w)
        assert (delta[:, :3, :3] > 1e-3).all()
    for bad, fragment in (((ctx[:, hw:], ctx_ids[:, hw:], tgt_ids), "got 16 context tokens and 16 targets"),
                          ((ctx, ctx_ids, tgt_ids[:, 1:]), "got 32 context tokens and 15 targets"),
                          ((ctx, ctx_ids.flip(1), tgt_ids), "consecutive")):
        with pytest.raises(ValueError, match=fragment):
            pred(*bad)
    with pytest.raises(ConfigError, match="needs residual=true"):
        PredictorConfig(arch="conv", embed_dim=16, depth=2)
    with pytest.raises(ConfigError, match="choose one of: vit, conv"):
        PredictorConfig(arch="mlp")
    assert PredictorConfig(arch="conv", residual=True, embed_dim=10, depth=1, num_heads=3)  # heads do not apply


def test_conv_predictor_exports_and_streams(tmp_path):
    """Exported, ONNX Runtime gives the same numbers on the runtime's query, and the runtime streams with it."""
    import onnxruntime as ort

    from ami_edge import Runtime, load_bundle
    from ami_edge.export.onnx_export import export_bundle

    loaded = _conv_model()
    model = loaded.model
    bundle = load_bundle(export_bundle(loaded, tmp_path / "conv").path)
    assert bundle.manifest.model["predictor"]["arch"] == "conv"
    t, h, w = model.cfg.encoder.grid
    n, hw = t * h * w, h * w
    ctx = torch.randn(3, n, model.cfg.encoder.embed_dim, generator=torch.Generator().manual_seed(5))
    ids = torch.arange(n + hw).expand(3, -1)
    sess = ort.InferenceSession(str(bundle.graph_path("predictor")), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"context": ctx.numpy(), "context_ids": ids[:, :n].numpy(),
                          "target_ids": ids[:, n:].numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model.predictor(ctx, ids[:, :n], ids[:, n:]).numpy(), atol=1e-4)
    with Runtime(bundle.path, source="synthetic://bouncing?seed=2&size=32") as rt:
        states = list(rt.stream(max_frames=12))
    scored = [s for s in states if s.raw_surprise is not None]
    assert len(scored) >= 6 and all(np.isfinite(s.raw_surprise) and s.raw_surprise > 0 for s in scored)
    assert all(s.prediction.shape == (model.cfg.encoder.embed_dim,) for s in scored)


SMALL_PRESETS = sorted(n for n in PRESETS if not n.startswith("vjepa2-"))


@pytest.mark.parametrize("name", SMALL_PRESETS)
def test_presets_build_and_run(name):
    model = JEPAModel(preset_config(name)).eval()
    e = model.cfg.encoder
    shape = (1, 3, *e.img_size) if not e.is_video else (1, 3, e.num_frames, *e.img_size)
    with torch.no_grad():
        tokens = model.encoder(torch.randn(shape))
    assert tokens.shape == (1, e.num_tokens, e.embed_dim)
    assert model.cfg == JEPAConfig.from_dict(model.cfg.to_dict())


def test_config_errors_name_the_fix():
    with pytest.raises(ConfigError, match="num_heads"):
        EncoderConfig(embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError, match="valid; choose one of"):
        EncoderConfig(pos_embed="alibi")
    with pytest.raises(ConfigError, match="unknown fields"):
        JEPAConfig.from_dict({"family": "native", "encoder": {"widht": 3}})
    with pytest.raises(ConfigError, match="layout"):
        EncoderConfig(num_frames=4, layout="BCHW")
    with pytest.raises(ConfigError):
        PredictorConfig(embed_dim=0)


@pytest.mark.parametrize("name, width, depth, heads, hidden", [
    ("vjepa2-vitl", 1024, 24, 16, 4096), ("vjepa2-vith", 1280, 32, 16, 5120), ("vjepa2-vitg", 1408, 40, 22, 6144)])
def test_official_geometry_presets(name, width, depth, heads, hidden):
    with torch.device("meta"):  # shapes only: no 4 GB allocation for ViT-g
        model = JEPAModel(preset_config(name))
    blk = model.encoder.blocks[0]
    assert (len(model.encoder.blocks), blk.attn.num_heads, blk.attn.head_dim * heads) == (depth, heads, width)
    assert blk.mlp.fc1.out_features == hidden
    assert model.predictor.cfg.embed_dim == 384 and model.predictor.cfg.num_mask_tokens == 10


def test_inferred_mlp_ratio_rebuilds_exact_width():
    """fc1/width can be a float whose product with width falls just short of the integer (88 * (120/88))."""
    cfg = EncoderConfig(img_size=(16, 16), patch_size=8, embed_dim=88, depth=1, num_heads=4, mlp_ratio=120 / 88,
                        layout="BCHW")
    assert JEPAModel(JEPAConfig(encoder=cfg)).encoder.blocks[0].mlp.fc1.out_features == 120
