"""Official facebookresearch checkpoints: vjepa2 (V-JEPA 2 / 2.1 / 2-AC), jepa (V-JEPA), ijepa (I-JEPA).

A `.pt` is a dict with keys among `encoder`, `target_encoder`, `ema_encoder` (V-JEPA 2.1) and `predictor`, each a
state dict whose keys may carry `module.` / `backbone.` prefixes. The architecture is inferred from tensor shapes;
heads come from the official preset for the width unless `--num-heads` is given. Loading is strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ami_edge.errors import CheckpointError, ConfigError

from ..models import JEPAModel
from ..models.config import ACPredictorConfig, EncoderConfig, JEPAConfig, PredictorConfig
from ..models.layers import sincos_table
from ..models.presets import AC_PREDICTOR_HEADS, OFFICIAL_VIT, VJEPA2_PREDICTOR_HEADS, encoder_heads, predictor_heads
from .base import LoadedModel, LoadOptions, count_blocks, load_strict, register_loader, sha256_path, strip_prefixes

ENCODER_KEYS = ("target_encoder", "ema_encoder", "encoder")
SUFFIXES = (".pt", ".pth", ".tar", ".ckpt")
# Tables that released RoPE checkpoints carry but never use; ignored by name and reported.
UNUSED_WITH_ROPE = {"encoder": "pos_embed", "predictor": "predictor_pos_embed"}
# Default frames per clip when a RoPE checkpoint gives no hint (V-JEPA 2 released models: 64 frames pretraining,
# 16 frames is the common inference clip). The 2-AC world model encodes one frame at a time (a duplicated tubelet).
DEFAULT_VIDEO_FRAMES = 16


def _is_official(path: Path) -> bool:
    return path.is_file() and path.suffix in SUFFIXES


def read_checkpoint(path: Path) -> dict[str, Any]:
    try:
        try:  # memory-map: a ViT-g training checkpoint holds several copies of a 4 GB model
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # an unpickling error for refused objects, RuntimeError/EOFError for damaged files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} cannot be loaded with torch.load(weights_only=True): {reason}. Only "
                              "tensors and plain containers are accepted; no code in the file was run") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of state dicts")
    return obj


def _need(sd: dict[str, torch.Tensor], key: str, what: str, path: Path) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"{path}: the {what} has no '{key}' (keys start with: {sorted(sd)[:6]}); "
                              "not an official JEPA state dict, or pass --checkpoint-key / --family")
    return sd[key]


def _state_dict(obj: Any, where: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where} is not a state dict of tensors")
    return strip_prefixes(obj)


def pick_encoder(ckpt: dict[str, Any], path: Path, key: str | None) -> tuple[str, dict[str, torch.Tensor]]:
    """The encoder state dict: `--checkpoint-key`, else target_encoder, ema_encoder, encoder; or a bare state dict."""
    if key is not None:
        if key not in ckpt:
            raise CheckpointError(f"{path} has no key '{key}'; top-level keys: {sorted(ckpt)}")
        return key, _state_dict(ckpt[key], f"{path}['{key}']")
    present = [k for k in ENCODER_KEYS if k in ckpt]
    if {"target_encoder", "ema_encoder"} <= set(present) and not _same(ckpt["target_encoder"], ckpt["ema_encoder"]):
        raise CheckpointError(f"{path} holds different 'target_encoder' and 'ema_encoder' weights; pass "
                              "--checkpoint-key (the V-JEPA 2.1 distilled ViT-B/L releases use ema_encoder)")
    for k in present:
        return k, _state_dict(ckpt[k], f"{path}['{k}']")
    if any(isinstance(v, torch.Tensor) for v in ckpt.values()):
        sd = strip_prefixes({k: v for k, v in ckpt.items() if isinstance(v, torch.Tensor)})
        if "patch_embed.proj.weight" in sd:
            return "", sd
    raise CheckpointError(f"{path} has none of the encoder keys {list(ENCODER_KEYS)} (top-level keys: "
                          f"{sorted(ckpt)}); pass --checkpoint-key")


def _same(a: Any, b: Any) -> bool:
    if not (isinstance(a, dict) and isinstance(b, dict)) or a.keys() != b.keys():
        return False
    return all(isinstance(a[k], torch.Tensor) and isinstance(b[k], torch.Tensor) and a[k].shape == b[k].shape
               and torch.equal(a[k], b[k]) for k in a)


def table_grid(table: torch.Tensor, video: bool, path: Path) -> tuple[int, int, bool | None]:
    """(T', side, uniform_power) of a square position table; uniform_power is None when it is not sincos.

    Video shapes are ambiguous (8 x 24 x 24 = 2 x 48 x 48 rows), so every factorisation is compared with the
    formula and the one that reproduces the table wins. A table that matches none (learned) is accepted only
    when its shape allows a single grid.
    """
    n, dim = table.shape[1], table.shape[2]
    table = table.float()
    candidates = []
    for steps in (range(1, n + 1) if video else [1]):
        side = int(round((n / steps) ** 0.5))
        if steps * side * side == n:
            candidates.append((steps, side))
    for steps, side in candidates:
        for uniform in ((False, True) if video else (False,)):
            if torch.allclose(sincos_table(dim, (steps, side, side), uniform, video), table, atol=1e-5):
                return steps, side, uniform
    if len(candidates) == 1:
        return candidates[0][0], candidates[0][1], None
    raise CheckpointError(f"{path}: pos_embed ({n} x {dim}) is not a standard sincos table, and its shape fits "
                          f"several grids {candidates[:4]}; pass --resolution and --frames of the checkpoint")


def vjepa21_encoder(sd: dict[str, torch.Tensor]) -> bool:
    """V-JEPA 2.1 encoders end in `norms_block` (hierarchical output norms) instead of one `norm`."""
    return "norms_block.0.weight" in sd


def infer_encoder(sd: dict[str, torch.Tensor], family: str, opts: LoadOptions, path: Path,
                  default_frames: int = 16) -> EncoderConfig:
    w = _need(sd, "patch_embed.proj.weight", "encoder", path)
    width = w.shape[0]
    depth = count_blocks(sd, "blocks.")
    fc1 = _need(sd, "blocks.0.mlp.fc1.weight", "encoder", path)
    is_video = w.dim() == 5
    patch = w.shape[-1]
    tubelet = w.shape[2] if is_video else 2
    pos = sd.get("pos_embed")
    use_rope = family == "vjepa2"
    resolution, frames = opts.resolution, opts.frames
    uniform = False
    if not is_video and frames not in (None, 1):
        raise CheckpointError(f"{path}: --frames {frames} does not apply to an image encoder (Conv2d patches)")
    if not use_rope and pos is not None:
        steps, side, table_kind = table_grid(pos, is_video, path)
        uniform = bool(table_kind)
        resolution = resolution or (side * patch, side * patch)
        frames = frames or steps * tubelet
    v21 = vjepa21_encoder(sd)
    resolution = resolution or ((384, 384) if v21 else (256, 256) if use_rope else (224, 224))
    frames = (frames or default_frames) if is_video else 1
    if is_video and frames < tubelet and not (v21 and "patch_embed_img.proj.weight" in sd):
        raise CheckpointError(f"{path}: --frames {frames} is shorter than the tubelet ({tubelet}); export "
                              f"--frames {tubelet} and repeat a single image {tubelet} times, as V-JEPA does")
    extra: dict[str, Any] = {"uniform_power": uniform}
    if v21:
        if frames == 1 and "patch_embed_img.proj.weight" not in sd:
            raise CheckpointError(f"{path}: this V-JEPA 2.1 encoder has no image patch embedding; use --frames >= 2")
        # The hub builds 2.1 encoders with interpolate_rope=True: positions map onto the 256 px (patch 16) or
        # 252 px (patch 14) pretraining grid.
        extra.update(rope_layout="interleaved", rope_ref_grid=(252 if patch == 14 else 256) // patch,
                     output_norms=count_blocks(sd, "norms_block."), modality_embed="video_mod_embed" in sd,
                     image_patch_embed="patch_embed_img.proj.weight" in sd)
    try:
        return EncoderConfig(
            img_size=resolution, patch_size=patch, num_frames=frames, tubelet_size=tubelet,
            in_chans=w.shape[1], embed_dim=width, depth=depth,
            num_heads=opts.num_heads or encoder_heads(width, family), mlp_ratio=fc1.shape[0] / width,
            qkv_bias="blocks.0.attn.qkv.bias" in sd, pos_embed="rope" if use_rope else "sincos",
            layout="BCTHW" if frames > 1 else "BCHW", **extra)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def detect_family(enc_key: str, enc: dict[str, torch.Tensor], pred: dict[str, torch.Tensor] | None,
                  path: Path) -> str:
    """Which official repo wrote this checkpoint, where the tensors make it unambiguous."""
    w = _need(enc, "patch_embed.proj.weight", "encoder", path)
    if w.dim() == 4:
        return "ijepa"
    if enc_key == "ema_encoder" or "pos_embed" not in enc or vjepa21_encoder(enc):
        return "vjepa2"
    if pred is not None and "action_encoder.weight" in pred:
        return "vjepa2"
    if pred is not None and "predictor_pos_embed" not in pred:
        return "vjepa2"
    raise CheckpointError(f"{path}: a video encoder with a pos_embed table fits both V-JEPA (3-D sincos) and "
                          "V-JEPA 2 (3-D RoPE; released checkpoints keep an unused pos_embed); "
                          "pass --family vjepa or --family vjepa2")


def _fit_table(sd: dict[str, torch.Tensor], key: str, dim: int, cfg: EncoderConfig, notes: list[str],
               path: Path) -> None:
    """Keep the checkpoint's sincos table, or rebuild it from the formula for another resolution / frame count.

    The official code interpolates the table instead (trilinear / bicubic), so at a non-native size this export
    follows the formula exactly but not the official interpolation; the note says so.
    """
    if tuple(sd[key].shape) == (1, cfg.num_tokens, dim):
        return
    steps, side, uniform = table_grid(sd[key], cfg.is_video, path)
    if uniform is None:
        raise CheckpointError(f"{path}: {key} is a learned table for grid [{steps}, {side}, {side}]; it cannot be "
                              f"rebuilt for grid {list(cfg.grid)}: export at the checkpoint's resolution and frames")
    sd[key] = sincos_table(dim, cfg.grid, uniform, cfg.is_video)
    notes.append(f"{key}: sincos table rebuilt from the formula for grid {list(cfg.grid)} (checkpoint grid "
                 f"[{steps}, {side}, {side}]); the official code would interpolate the table instead")


def infer_predictor(sd: dict[str, torch.Tensor], enc: EncoderConfig, family: str, opts: LoadOptions, path: Path
                    ) -> PredictorConfig | ACPredictorConfig:
    """Predictor config from its tensors. Heads: V-JEPA 2 predictors have 12 (width 384), the AC predictor 16
    (width 1024); I-JEPA and V-JEPA 1 build their predictor with the encoder's heads."""
    width = _need(sd, "predictor_embed.weight", "predictor", path).shape[0]
    depth = count_blocks(sd, "predictor_blocks.")
    fc1 = _need(sd, "predictor_blocks.0.mlp.fc1.weight", "predictor", path)
    qkv_bias = "predictor_blocks.0.attn.qkv.bias" in sd
    if "action_encoder.weight" in sd:
        heads = opts.pred_num_heads or predictor_heads(width, AC_PREDICTOR_HEADS, "action-conditioned predictor")
        return ACPredictorConfig(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=fc1.shape[0] / width,
                                 qkv_bias=qkv_bias, action_dim=sd["action_encoder.weight"].shape[1],
                                 state_dim=_need(sd, "state_encoder.weight", "predictor", path).shape[1],
                                 normalize_context=True)
    if opts.pred_num_heads:
        heads = opts.pred_num_heads
    elif family == "vjepa2":
        heads = predictor_heads(width, VJEPA2_PREDICTOR_HEADS, "predictor")
    else:
        heads = enc.num_heads
    n_tokens = len([k for k in sd if k.startswith("mask_tokens.")])
    if n_tokens == 0 and "mask_token" not in sd:
        raise CheckpointError(f"{path}: predictor has neither mask_tokens.N nor mask_token")
    return PredictorConfig(embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=fc1.shape[0] / width,
                           qkv_bias=qkv_bias, num_mask_tokens=n_tokens)


@register_loader("official", _is_official)
def load_official(path: Path, opts: LoadOptions, family: str = "auto") -> LoadedModel:
    ckpt = read_checkpoint(path)
    enc_key, enc_sd = pick_encoder(ckpt, path, opts.checkpoint_key)
    pred_sd = _state_dict(ckpt["predictor"], f"{path}['predictor']") if "predictor" in ckpt else None
    if family == "auto":
        family = detect_family(enc_key, enc_sd, pred_sd, path)
    is_ac = pred_sd is not None and "action_encoder.weight" in pred_sd
    # The 2-AC world model encodes each frame on its own (the frame repeated to fill one tubelet).
    tubelet = enc_sd["patch_embed.proj.weight"].shape[2] if enc_sd["patch_embed.proj.weight"].dim() == 5 else 1
    enc_cfg = infer_encoder(enc_sd, family, opts, path, default_frames=tubelet if is_ac else DEFAULT_VIDEO_FRAMES)
    if family == "ijepa" and enc_cfg.is_video:
        raise CheckpointError(f"{path}: --family ijepa but the encoder has video (Conv3d) patches")
    ignored: list[str] = []
    notes = [f"encoder from checkpoint key '{enc_key or '<root>'}'"]
    rope = enc_cfg.pos_embed == "rope"
    if rope and UNUSED_WITH_ROPE["encoder"] in enc_sd:
        enc_sd.pop(UNUSED_WITH_ROPE["encoder"])
        ignored.append("encoder.pos_embed")
    elif "pos_embed" in enc_sd:
        _fit_table(enc_sd, "pos_embed", enc_cfg.embed_dim, enc_cfg, notes, path)
    pred_cfg = ac_cfg = None
    sd = {f"encoder.{k}": v for k, v in enc_sd.items()}
    if pred_sd is not None and vjepa21_encoder(enc_sd):
        # The 2.1 predictor predicts in the distillation teacher's space (or 4 stacked levels), which cannot be
        # compared with this encoder's own latents; export the encoder only and say so.
        ignored.append(f"predictor.* ({len(pred_sd)} keys)")
        notes.append("V-JEPA 2.1: encoder only; its predictor outputs teacher/hierarchical features, not this "
                     "encoder's latent space, so it is not exported")
        pred_sd = None
    if enc_cfg.rope_layout == "interleaved":
        notes.append(f"V-JEPA 2.1 encoder: interleaved RoPE, positions scaled to the {enc_cfg.rope_ref_grid}x"
                     f"{enc_cfg.rope_ref_grid} pretraining grid, output norms_block[-1]")
    if pred_sd is not None:
        cfg = infer_predictor(pred_sd, enc_cfg, family, opts, path)
        if isinstance(cfg, ACPredictorConfig):
            ac_cfg, prefix = cfg, "ac_predictor"
            notes.append("V-JEPA 2-AC: encode one frame per step (repeat it to fill a tubelet); the ac_predictor "
                         "graph layer-norms its context and output (official normalize_reps) and takes any "
                         "number of steps")
        else:
            pred_cfg, prefix = cfg, "predictor"
            if rope and UNUSED_WITH_ROPE["predictor"] in pred_sd:
                pred_sd.pop(UNUSED_WITH_ROPE["predictor"])
                ignored.append("predictor.predictor_pos_embed")
            elif "predictor_pos_embed" in pred_sd:
                _fit_table(pred_sd, "predictor_pos_embed", cfg.embed_dim, enc_cfg, notes, path)
        sd.update({f"{prefix}.{k}": v for k, v in pred_sd.items()})
    model = JEPAModel(JEPAConfig(family=family, encoder=enc_cfg, predictor=pred_cfg, ac_predictor=ac_cfg))
    load_strict(model, sd, f"official {family} checkpoint {path}")
    return LoadedModel(model=model, loader=f"official:{family}", source=str(path),
                       source_sha256=sha256_path(path), ignored_keys=ignored, notes=notes)


__all__ = ["OFFICIAL_VIT", "load_official", "read_checkpoint"]
