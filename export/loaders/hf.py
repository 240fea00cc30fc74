"""Hugging Face transformers directories (config.json + safetensors) of `VJEPA2Model` and `IJepaModel`, offline.

The directory is read directly (JSON + safetensors), so transformers itself is not needed. HF's V-JEPA 2 takes
video as (B, T, C, H, W); the exported graph keeps that layout and the manifest says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from ami_edge.errors import CheckpointError, ConfigError, MissingExtraError, require

from ..models import JEPAModel
from ..models.config import EncoderConfig, JEPAConfig, PredictorConfig
from .base import LoadedModel, LoadOptions, load_strict, register_loader, sha256_path

ARCHITECTURES = {"VJEPA2Model": "vjepa2", "VJEPA2ForVideoClassification": "vjepa2", "IJepaModel": "ijepa",
                 "IJepaForImageClassification": "ijepa"}
# Heads that ride along in classification checkpoints; not part of the JEPA encoder/predictor.
HEAD_PREFIXES = ("pooler.", "classifier.")


def _is_hf_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_hf_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF directory: model.safetensors, sharded safetensors, or pytorch_model.bin."""
    files = sorted(path.glob("*.safetensors"))
    binary = path / "pytorch_model.bin"
    if not files and not binary.is_file():
        raise CheckpointError(f"{path} has config.json but no *.safetensors or pytorch_model.bin weights")
    try:
        if files:
            safetensors_torch = require("safetensors.torch", "export", "Reading Hugging Face safetensors")
            sd: dict[str, torch.Tensor] = {}
            for f in files:
                sd.update(safetensors_torch.load_file(str(f)))
            return sd
        return torch.load(binary, map_location="cpu", weights_only=True)
    except MissingExtraError:
        raise
    except Exception as exc:  # SafetensorError, unpickling errors, truncated files
        raise CheckpointError(f"{path}: the weights cannot be read ({str(exc).strip().splitlines()[0]}); "
                              "the download may be incomplete") from exc


def read_hf_config(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; --family hf expects a Hugging Face model directory")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path / 'config.json'} cannot be read as JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / 'config.json'} must hold a JSON object, got {type(config).__name__}")
    return config


def _cfg(config: dict[str, Any], key: str, path: Path) -> Any:
    if key not in config:
        raise CheckpointError(f"{path / 'config.json'} lacks field '{key}'")
    return config[key]


def _check_act(config: dict[str, Any], path: Path) -> None:
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"{path / 'config.json'}: hidden_act={act!r} is not supported (only exact 'gelu')")


def _fuse_qkv(sd: dict[str, torch.Tensor], src: str, dst: str, names: tuple[str, str, str]) -> None:
    """HF keeps query/key/value separate; the official layout is one qkv Linear with [q; k; v] rows."""
    for part in ("weight", "bias"):
        keys = [f"{src}.{n}.{part}" for n in names]
        present = [k in sd for k in keys]
        if all(present):
            sd[f"{dst}.{part}"] = torch.cat([sd.pop(k) for k in keys], dim=0)
        elif any(present):
            raise CheckpointError(f"attention {src} has only some of {keys}")


def _rename(sd: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for pattern, repl in rules:
            key, n = re.subn(pattern, repl, key)
            if n:
                break
        out[key] = value
    return out


def _vjepa2(config: dict[str, Any], sd: dict[str, torch.Tensor], path: Path, opts: LoadOptions) -> JEPAModel:
    crop = int(_cfg(config, "crop_size", path))
    enc = EncoderConfig(
        img_size=opts.resolution or (crop, crop), patch_size=int(_cfg(config, "patch_size", path)),
        num_frames=opts.frames or min(int(_cfg(config, "frames_per_clip", path)), 16),  # 16: the usual clip
        tubelet_size=int(_cfg(config, "tubelet_size", path)), in_chans=int(config.get("in_chans", 3)),
        embed_dim=int(_cfg(config, "hidden_size", path)), depth=int(_cfg(config, "num_hidden_layers", path)),
        num_heads=int(_cfg(config, "num_attention_heads", path)), mlp_ratio=float(config.get("mlp_ratio", 4.0)),
        qkv_bias=bool(config.get("qkv_bias", True)), pos_embed="rope",
        norm_eps=float(config.get("layer_norm_eps", 1e-6)), layout="BTCHW")
    has_pred = any(k.startswith("predictor.") for k in sd)
    pred = None
    if has_pred:
        pred = PredictorConfig(
            embed_dim=int(_cfg(config, "pred_hidden_size", path)),
            depth=int(_cfg(config, "pred_num_hidden_layers", path)),
            num_heads=int(_cfg(config, "pred_num_attention_heads", path)),
            mlp_ratio=float(config.get("pred_mlp_ratio", 4.0)), qkv_bias=enc.qkv_bias,
            num_mask_tokens=int(_cfg(config, "pred_num_mask_tokens", path)), norm_eps=enc.norm_eps)
    for group, n in (("encoder", enc.depth), ("predictor", pred.depth if pred else 0)):
        for i in range(n):
            _fuse_qkv(sd, f"{group}.layer.{i}.attention", f"{group}.layer.{i}.attention.qkv",
                      ("query", "key", "value"))
    if "predictor.embeddings.mask_tokens" in sd:  # (M, 1, 1, d) -> M x (1, 1, d)
        for i, tok in enumerate(sd.pop("predictor.embeddings.mask_tokens")):
            sd[f"predictor.mask_tokens.{i}"] = tok
    sd = _rename(sd, [
        (r"^encoder\.embeddings\.patch_embeddings\.proj\.", "encoder.patch_embed.proj."),
        (r"^encoder\.layer\.(\d+)\.attention\.", r"encoder.blocks.\1.attn."),
        (r"^encoder\.layer\.", "encoder.blocks."),
        (r"^encoder\.layernorm\.", "encoder.norm."),
        (r"^predictor\.embeddings\.predictor_embeddings\.", "predictor.predictor_embed."),
        (r"^predictor\.layer\.(\d+)\.attention\.", r"predictor.predictor_blocks.\1.attn."),
        (r"^predictor\.layer\.", "predictor.predictor_blocks."),
        (r"^predictor\.layernorm\.", "predictor.predictor_norm."),
        (r"^predictor\.proj\.", "predictor.predictor_proj."),
    ])
    model = JEPAModel(JEPAConfig(family="vjepa2", encoder=enc, predictor=pred))
    load_strict(model, sd, f"Hugging Face VJEPA2 checkpoint {path}")
    return model


def _ijepa(config: dict[str, Any], sd: dict[str, torch.Tensor], path: Path, opts: LoadOptions) -> JEPAModel:
    size = config.get("image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    width = int(_cfg(config, "hidden_size", path))
    enc = EncoderConfig(
        img_size=size, patch_size=int(_cfg(config, "patch_size", path)), num_frames=1,
        in_chans=int(config.get("num_channels", 3)), embed_dim=width,
        depth=int(_cfg(config, "num_hidden_layers", path)),
        num_heads=int(_cfg(config, "num_attention_heads", path)),
        mlp_ratio=int(_cfg(config, "intermediate_size", path)) / width, qkv_bias=bool(config.get("qkv_bias", True)),
        pos_embed="sincos", norm_eps=float(config.get("layer_norm_eps", 1e-12)), layout="BCHW")
    for i in range(enc.depth):
        _fuse_qkv(sd, f"encoder.layer.{i}.attention.attention", f"encoder.layer.{i}.attn.qkv",
                  ("query", "key", "value"))
    sd = _rename(sd, [
        (r"^embeddings\.patch_embeddings\.projection\.", "encoder.patch_embed.proj."),
        (r"^embeddings\.position_embeddings$", "encoder.pos_embed"),
        (r"^encoder\.layer\.(\d+)\.attn\.qkv\.", r"encoder.blocks.\1.attn.qkv."),
        (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.blocks.\1.attn.proj."),
        (r"^encoder\.layer\.(\d+)\.layernorm_before\.", r"encoder.blocks.\1.norm1."),
        (r"^encoder\.layer\.(\d+)\.layernorm_after\.", r"encoder.blocks.\1.norm2."),
        (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.blocks.\1.mlp.fc1."),
        (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.blocks.\1.mlp.fc2."),
        (r"^layernorm\.", "encoder.norm."),
    ])
    if opts.resolution and tuple(opts.resolution) != enc.img_size:
        raise CheckpointError(f"{path}: IJepaModel position embeddings are learned for {enc.img_size}; "
                              "--resolution cannot change them")
    model = JEPAModel(JEPAConfig(family="ijepa", encoder=enc))
    load_strict(model, sd, f"Hugging Face IJepa checkpoint {path}")
    return model


@register_loader("hf", _is_hf_dir)
def load_hf(path: Path, opts: LoadOptions) -> LoadedModel:
    config = read_hf_config(path)
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        archs = []
    family = next((ARCHITECTURES[a] for a in archs if a in ARCHITECTURES), None)
    if family is None:
        family = {"vjepa2": "vjepa2", "ijepa": "ijepa"}.get(config.get("model_type", ""))
    if family is None:
        raise CheckpointError(f"{path / 'config.json'}: model_type={config.get('model_type')!r} / architectures="
                              f"{archs} is not a JEPA model; supported: {sorted(ARCHITECTURES)}")
    sd = read_hf_state_dict(path)
    base = {"vjepa2": "vjepa2.", "ijepa": "ijepa."}[family]  # prefix in *ForClassification checkpoints
    sd = {k[len(base):] if k.startswith(base) else k: v for k, v in sd.items()}
    ignored = sorted(k for k in sd if k.startswith(HEAD_PREFIXES))
    for k in ignored:
        sd.pop(k)
    _check_act(config, path)
    try:
        model = (_vjepa2 if family == "vjepa2" else _ijepa)(config, sd, path, opts)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, (CheckpointError, ConfigError)):
            raise
        raise CheckpointError(f"{path / 'config.json'} has a value this loader cannot use ({exc})") from exc
    return LoadedModel(model=model, loader=f"hf:{family}", source=str(path), source_sha256=sha256_path(path),
                       ignored_keys=ignored)
