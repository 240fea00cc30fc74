"""Every checkpoint format round-trips to outputs of an independent reference; strict loading refuses the rest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

import pytest
import torch

from ami_edge.errors import CheckpointError
from ami_edge.export.loaders import LoadOptions, load_checkpoint, save_native
from ami_edge.export.models import JEPAModel
from ami_edge.export.models.config import EncoderConfig, JEPAConfig, PredictorConfig

from .conftest import TINY_VJEPA2, randomize

ATOL = 1e-5


def _video(seed: int, frames: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(2, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))  # (B, T, C, H, W)


def _hf_predict(hf, pixels, ctx, tgt):
    out = hf(pixels, context_mask=[ctx], target_mask=[tgt])
    return out.last_hidden_state, out.predictor_output.last_hidden_state


def _official_file(path: Path, parts: dict[str, dict[str, torch.Tensor]], prefix: str = "module.backbone.",
                   **extra) -> Path:
    """Write a checkpoint shaped like the official training scripts save them."""
    ckpt = {key: {prefix + k: v.clone() for k, v in sd.items()} for key, sd in parts.items()}
    ckpt.update({"epoch": 10, "loss": 0.5, "batch_size": 4, "world_size": 1, "lr": 1e-4})
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


def _sub(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------------ Hugging Face
def test_hf_vjepa2_matches_transformers(hf_vjepa2):
    path, hf = hf_vjepa2
    loaded = load_checkpoint(path)  # --family auto
    assert loaded.loader == "hf:vjepa2" and loaded.config.encoder.layout == "BTCHW"
    pixels = _video(0)
    n = loaded.config.encoder.num_tokens
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    ctx, tgt = perm[:20].expand(2, -1), perm[20:].expand(2, -1)
    with torch.no_grad():
        ref_tokens, ref_pred = _hf_predict(hf, pixels, ctx, tgt)
        tokens = loaded.model.encoder(pixels)
        pred = loaded.model.predictor(torch.gather(tokens, 1, ctx[..., None].expand(-1, -1, tokens.shape[-1])),
                                      ctx, tgt)
    torch.testing.assert_close(tokens, ref_tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(pred, ref_pred, atol=ATOL, rtol=0)


def test_hf_ijepa_matches_transformers(hf_ijepa):
    path, hf = hf_ijepa
    loaded = load_checkpoint(path, family="hf")
    assert loaded.config.family == "ijepa" and loaded.config.encoder.layout == "BCHW"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encoder(x), hf(x).last_hidden_state, atol=ATOL, rtol=0)


def test_hf_classification_checkpoint_drops_head(tmp_path, hf_vjepa2):
    transformers = pytest.importorskip("transformers")
    path, hf = hf_vjepa2
    cfg = transformers.VJEPA2Config(**TINY_VJEPA2, num_labels=3)
    clf = transformers.VJEPA2ForVideoClassification(cfg)
    clf.vjepa2.load_state_dict(hf.state_dict())
    clf.save_pretrained(tmp_path / "clf")
    loaded = load_checkpoint(tmp_path / "clf")
    assert any(k.startswith("pooler.") for k in loaded.ignored_keys)
    assert any(k.startswith("classifier.") for k in loaded.ignored_keys)
    pixels = _video(3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encoder(pixels), hf(pixels).last_hidden_state, atol=ATOL, rtol=0)


def test_hf_not_a_jepa_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(CheckpointError, match="not a JEPA model"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------------------------------------------- official
def test_official_vjepa2_with_prefixes_and_stray_pos_embed(tmp_path, hf_vjepa2):
    """Official layout (`module.backbone.`, target_encoder + predictor, unused pos_embed) vs transformers."""
    path, hf = hf_vjepa2
    ours = load_checkpoint(path).model.state_dict()
    enc, pred = _sub(ours, "encoder."), _sub(ours, "predictor.")
    enc["pos_embed"] = torch.zeros(1, 32, 60)  # released V-JEPA 2 files keep a table RoPE never uses
    f = _official_file(tmp_path / "vitl.pt", {"encoder": enc, "target_encoder": enc, "predictor": pred})
    loaded = load_checkpoint(f, opts=LoadOptions(resolution=32, frames=4, num_heads=4, pred_num_heads=4))
    assert loaded.config.family == "vjepa2" and loaded.loader == "official:vjepa2"
    assert loaded.ignored_keys == ["encoder.pos_embed"]
    pixels = _video(4)
    ids = torch.arange(32)
    ctx, tgt = ids[:16].expand(2, -1), ids[16:].expand(2, -1)
    with torch.no_grad():
        ref_tokens, ref_pred = _hf_predict(hf, pixels, ctx, tgt)
        tokens = loaded.model.encoder(pixels.permute(0, 2, 1, 3, 4))  # official layout is (B, C, T, H, W)
        pred = loaded.model.predictor(tokens[:, :16], ctx, tgt)
    assert loaded.config.encoder.layout == "BCTHW"
    torch.testing.assert_close(tokens, ref_tokens, atol=ATOL, rtol=0)
    torch.testing.assert_close(pred, ref_pred, atol=ATOL, rtol=0)


def test_official_vjepa2_ac(tmp_path):
    from .official_ac_reference import VisionTransformerPredictorAC

    enc_model = randomize(JEPAModel(JEPAConfig(encoder=EncoderConfig(
        img_size=(32, 32), patch_size=8, num_frames=2, embed_dim=48, depth=1, num_heads=4,
        pos_embed="rope"))), seed=9).encoder
    ref = randomize(VisionTransformerPredictorAC((32, 32), 8, 64, 2, 48, 64, 2, 4), seed=10)
    f = _official_file(tmp_path / "vjepa2-ac.pt", {"encoder": enc_model.state_dict()}, prefix="module.")
    torch.save({**torch.load(f, weights_only=True), "predictor": {f"module.{k}": v for k, v in
                                                                    ref.state_dict().items()}}, f)
    loaded = load_checkpoint(f, opts=LoadOptions(resolution=32, num_heads=4, pred_num_heads=4))
    assert loaded.config.family == "vjepa2" and loaded.config.ac_predictor is not None
    gen = torch.Generator().manual_seed(11)
    x, a, s = torch.randn(1, 3 * 16, 48, generator=gen), torch.randn(1, 3, 7, generator=gen), torch.randn(1, 3, 7)
    with torch.no_grad():
        # the official world model wraps the predictor in parameter-free layer norms (normalize_reps)
        want = torch.nn.functional.layer_norm(ref(torch.nn.functional.layer_norm(x, (48,)), a, s), (48,))
        torch.testing.assert_close(loaded.model.ac_predictor(x, a, s), want, atol=ATOL, rtol=0)
        assert loaded.config.encoder.num_frames == 2  # one frame per step, repeated into a tubelet
        pix = torch.randn(1, 3, 2, 32, 32, generator=gen)
        torch.testing.assert_close(loaded.model.encoder(pix), enc_model(pix), atol=ATOL, rtol=0)


def _vjepa1_model(seed: int) -> JEPAModel:
    cfg = JEPAConfig(family="vjepa", encoder=EncoderConfig(
        img_size=(32, 32), patch_size=8, num_frames=4, embed_dim=48, depth=2, num_heads=4, uniform_power=True),
        predictor=PredictorConfig(embed_dim=32, depth=2, num_heads=4, num_mask_tokens=2))
    model = JEPAModel(cfg)
    randomize(model, seed)
    return model  # pos_embed / predictor_pos_embed stay the uniform_power sincos buffers


def test_official_vjepa1_needs_family_then_loads(tmp_path):
    model = _vjepa1_model(12)
    sd = model.state_dict()
    f = _official_file(tmp_path / "vitl16.pth.tar", {"encoder": _sub(sd, "encoder."), "predictor":
                                                     _sub(sd, "predictor."), "target_encoder": _sub(sd, "encoder.")})
    with pytest.raises(CheckpointError, match="--family vjepa"):
        load_checkpoint(f)  # a sincos table + predictor_pos_embed fits both V-JEPA and V-JEPA 2
    loaded = load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4))
    cfg = loaded.config
    assert (cfg.encoder.img_size, cfg.encoder.num_frames, cfg.encoder.uniform_power) == ((32, 32), 4, True)
    assert cfg.predictor.num_heads == 4  # V-JEPA 1 predictors use the encoder's heads
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(13))
    ids = torch.arange(32).expand(2, -1)
    with torch.no_grad():
        want = model.encoder(x)
        torch.testing.assert_close(loaded.model.encoder(x), want, atol=ATOL, rtol=0)
        torch.testing.assert_close(loaded.model.predictor(want[:, 16:], ids[:, 16:], ids[:, :16]),
                                   model.predictor(want[:, 16:], ids[:, 16:], ids[:, :16]), atol=ATOL, rtol=0)


def test_official_vjepa1_other_resolution_regenerates_table(tmp_path):
    model = _vjepa1_model(14)
    sd = model.state_dict()
    f = _official_file(tmp_path / "v1.pt", {"target_encoder": _sub(sd, "encoder."), "predictor":
                                            _sub(sd, "predictor.")})
    loaded = load_checkpoint(f, family="vjepa", opts=LoadOptions(resolution=48, frames=8, num_heads=4))
    assert loaded.config.encoder.grid == (4, 6, 6)
    assert any("rebuilt from the formula" in n for n in loaded.notes)
    e = loaded.model.encoder
    from ami_edge.export.models.layers import sincos_table
    torch.testing.assert_close(e.pos_embed, sincos_table(48, (4, 6, 6), uniform_power=True))


def test_official_ijepa_matches_transformers(tmp_path, hf_ijepa):
    path, hf = hf_ijepa
    enc = _sub(load_checkpoint(path).model.state_dict(), "encoder.")
    pred = randomize(JEPAModel(JEPAConfig(encoder=EncoderConfig(img_size=(32, 32), patch_size=8, embed_dim=48,
                                                                depth=1, num_heads=4, layout="BCHW"),
                                          predictor=PredictorConfig(embed_dim=32, depth=1, num_heads=4,
                                                                    num_mask_tokens=0))), seed=15).predictor
    f = _official_file(tmp_path / "IN1K-vit.h.14-300e.pth.tar",
                       {"encoder": enc, "target_encoder": enc, "predictor": pred.state_dict()}, prefix="module.")
    loaded = load_checkpoint(f, opts=LoadOptions(num_heads=4))
    assert loaded.config.family == "ijepa" and loaded.config.predictor.num_mask_tokens == 0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encoder(x), hf(x).last_hidden_state, atol=ATOL, rtol=0)


def test_official_checkpoint_key_and_heads_errors(tmp_path):
    model = _vjepa1_model(17)
    enc = _sub(model.state_dict(), "encoder.")
    f = _official_file(tmp_path / "a.pt", {"ema_encoder": enc, "encoder": enc})
    with pytest.raises(CheckpointError, match="no key 'teacher'"):
        load_checkpoint(f, opts=LoadOptions(checkpoint_key="teacher"))
    with pytest.raises(Exception, match="--num-heads"):
        load_checkpoint(f, family="vjepa")  # width 48 is no official preset


def test_strict_loading_lists_keys(tmp_path):
    model = _vjepa1_model(18)
    enc = _sub(model.state_dict(), "encoder.")
    missing = {k: v for k, v in enc.items() if k != "blocks.1.mlp.fc2.bias"}
    f = _official_file(tmp_path / "missing.pt", {"target_encoder": missing})
    with pytest.raises(CheckpointError, match=r"missing keys \[encoder.blocks.1.mlp.fc2.bias\]"):
        load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4))
    extra = dict(enc, **{"blocks.0.attn.q_norm.weight": torch.ones(12)})
    f = _official_file(tmp_path / "extra.pt", {"target_encoder": extra})
    with pytest.raises(CheckpointError, match=r"unexpected keys \[encoder.blocks.0.attn.q_norm.weight\]"):
        load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4))


def test_refuses_objects_without_running_them(tmp_path):
    f = tmp_path / "evil.pt"
    torch.save({"encoder": {"x": torch.ones(1)}, "payload": Path("/tmp")}, f)  # a non-tensor class instance
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(f)


def test_truncated_checkpoint(tmp_path):
    f = tmp_path / "cut.pt"
    torch.save({"encoder": _sub(_vjepa1_model(19).state_dict(), "encoder.")}, f)
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(f)


# ------------------------------------------------------------------------------------------------------ native
def test_native_round_trip(tmp_path):
    model = _vjepa1_model(20)
    f = save_native(model, tmp_path / "m.safetensors", {"recipe": "test"})
    loaded = load_checkpoint(f)
    assert loaded.loader == "native" and loaded.config == model.cfg and "recipe=test" in loaded.notes
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, atol=0, rtol=0)


def test_unknown_file_kind(tmp_path):
    f = tmp_path / "weights.onnx"
    f.write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match="pass --family"):
        load_checkpoint(f)


def test_official_vjepa21_encoder_video_and_image(tmp_path):
    """V-JEPA 2.1 (`ema_encoder`): interleaved RoPE scaled to the pretraining grid, modality embeddings, norms_block."""
    from .official_vjepa21_reference import VisionTransformer21

    ref = randomize(VisionTransformer21(patch_size=8, tubelet_size=2, embed_dim=48, depth=2, num_heads=4), seed=21)
    pred = {"predictor_embed.weight": torch.zeros(32, 48), "mask_tokens.0": torch.zeros(1, 1, 32)}
    f = _official_file(tmp_path / "vjepa2_1_vitl_dist_vitG_384.pt",
                       {"ema_encoder": ref.state_dict(), "predictor": pred, "target_encoder": ref.state_dict()})
    gen = torch.Generator().manual_seed(22)
    video = torch.randn(2, 3, 4, 48, 40, generator=gen)  # non-square 6 x 5 grid, scaled onto 32 x 32 px / 8
    loaded = load_checkpoint(f, opts=LoadOptions(checkpoint_key="ema_encoder", resolution=(48, 40), frames=4,
                                                 num_heads=4))
    e = loaded.config.encoder
    assert loaded.config.family == "vjepa2" and loaded.config.predictor is None
    assert (e.rope_layout, e.rope_ref_grid, e.output_norms, e.modality_embed) == ("interleaved", 32, 4, True)
    assert loaded.ignored_keys == ["predictor.* (2 keys)"]
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encoder(video), ref(video), atol=ATOL, rtol=0)
    image = torch.randn(2, 3, 48, 40, generator=gen)
    loaded = load_checkpoint(f, opts=LoadOptions(resolution=(48, 40), frames=1, num_heads=4))
    assert loaded.config.encoder.layout == "BCHW" and loaded.config.encoder.grid == (1, 6, 5)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model.encoder(image), ref(image.unsqueeze(2)), atol=ATOL, rtol=0)


def test_malformed_predictor_is_a_clear_error(tmp_path):
    enc = _sub(_vjepa1_model(23).state_dict(), "encoder.")
    f = _official_file(tmp_path / "odd.pt", {"target_encoder": enc, "predictor": {"head.weight": torch.ones(2)}})
    with pytest.raises(CheckpointError, match="predictor has no 'predictor_embed.weight'"):
        load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4))


def test_table_grid_is_read_from_content_not_shape(tmp_path):
    """8 x 4 x 4 = 2 x 8 x 8 rows: the shape is ambiguous, the sincos content is not (V-JEPA ViT-H/16-384 case)."""
    cfg = JEPAConfig(family="vjepa", encoder=EncoderConfig(img_size=(32, 32), patch_size=8, num_frames=16,
                                                           embed_dim=48, depth=1, num_heads=4, uniform_power=True))
    model = randomize(JEPAModel(cfg), seed=24)
    f = _official_file(tmp_path / "v.pt", {"target_encoder": _sub(model.state_dict(), "encoder.")})
    loaded = load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4))
    assert loaded.config.encoder.grid == (8, 4, 4) and loaded.config.encoder.img_size == (32, 32)
    assert loaded.config.encoder.uniform_power


def test_single_step_video_uses_the_3d_table():
    from ami_edge.export.models.layers import sincos_table

    from .test_models import _official_1d

    dim, s = 48, 3
    gh, gd, gw = np.meshgrid(np.arange(s, dtype=float), np.arange(1, dtype=float), np.arange(s, dtype=float))
    ref = np.concatenate([_official_1d(24, gd), _official_1d(12, gh), _official_1d(12, gw)], axis=1)
    np.testing.assert_allclose(sincos_table(dim, (1, s, s), video=True)[0].numpy(), ref, atol=1e-6)


def test_different_target_and_ema_encoders_need_a_choice(tmp_path):
    a = _sub(_vjepa1_model(25).state_dict(), "encoder.")
    b = {k: v if k == "pos_embed" else v + 1 for k, v in a.items()}
    f = _official_file(tmp_path / "both.pt", {"target_encoder": a, "ema_encoder": b})
    with pytest.raises(CheckpointError, match="pass --checkpoint-key"):
        load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4))
    loaded = load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4, checkpoint_key="ema_encoder"))
    torch.testing.assert_close(loaded.model.encoder.blocks[0].norm1.weight, b["blocks.0.norm1.weight"])
    f = _official_file(tmp_path / "same.pt", {"target_encoder": a, "ema_encoder": a})
    assert load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4)).notes[0].endswith("'target_encoder'")


def test_hf_directory_problems_are_one_line_errors(tmp_path, hf_ijepa):
    path, _ = hf_ijepa
    with pytest.raises(CheckpointError, match="not a directory"):
        load_checkpoint(path / "config.json", family="hf")
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        load_checkpoint(bad)
    (bad / "config.json").write_text("{nope")
    with pytest.raises(CheckpointError, match="cannot be read as JSON"):
        load_checkpoint(bad, family="hf")
    shutil.copy(path / "config.json", bad / "config.json")
    weights = next(bad.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="weights cannot be read"):
        load_checkpoint(bad)
    config = json.loads((path / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(config, patch_size=[8, 8])))
    shutil.copy(next(path.glob("*.safetensors")), weights)
    with pytest.raises(CheckpointError, match="value this loader cannot use"):
        load_checkpoint(bad)


def test_unnumbered_blocks(tmp_path):
    enc = _sub(_vjepa1_model(26).state_dict(), "encoder.")
    enc["blocks.a.norm1.weight"] = torch.ones(48)
    f = _official_file(tmp_path / "odd.pt", {"target_encoder": enc})
    with pytest.raises(CheckpointError, match="not numbered blocks"):
        load_checkpoint(f, family="vjepa", opts=LoadOptions(num_heads=4))
