"""ami-edge native checkpoints and built-in presets.

A native checkpoint is one `.safetensors` file: tensors `encoder.*`, `predictor.*`, `ac_predictor.*` and, in the
safetensors metadata, `ami_edge_format` and the JSON `config`. Nothing in it is executable.
`preset:NAME` builds a seeded random model from a built-in preset.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from ami_edge.errors import CheckpointError, ConfigError, require

from ..models import JEPAModel
from ..models.config import JEPAConfig
from ..models.presets import preset_config
from .base import LoadedModel, LoadOptions, load_strict, register_loader, sha256_path

FORMAT = "ami-edge-jepa/1"
PRESET_PREFIX = "preset:"


def _is_native(path: Path) -> bool:
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    return _metadata(path).get("ami_edge_format") == FORMAT


def _metadata(path: Path) -> dict[str, str]:
    safe_open = require("safetensors", "export", "Reading safetensors checkpoints").safe_open
    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own SafetensorError for bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def save_native(model: JEPAModel, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `model` as a native checkpoint (config in the safetensors metadata)."""
    save_file = require("safetensors.torch", "export", "Writing native checkpoints").save_file
    meta = {"ami_edge_format": FORMAT, "config": json.dumps(model.cfg.to_dict())}
    meta.update(metadata or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return path


@register_loader("native", _is_native)
def load_native(path: Path, opts: LoadOptions) -> LoadedModel:
    meta = _metadata(path)
    if meta.get("ami_edge_format") != FORMAT:
        raise CheckpointError(f"{path} is not an ami-edge native checkpoint (metadata ami_edge_format="
                              f"{meta.get('ami_edge_format')!r}, expected {FORMAT!r})")
    try:
        cfg = JEPAConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: metadata 'config' is missing or invalid ({exc})") from exc
    if opts.resolution or opts.frames or opts.num_heads or opts.pred_num_heads or opts.checkpoint_key:
        raise CheckpointError(f"{path}: a native checkpoint carries its own config; drop --resolution/--frames/"
                              "--num-heads/--pred-num-heads/--checkpoint-key")
    safetensors_torch = require("safetensors.torch", "export", "Reading safetensors checkpoints")
    model = JEPAModel(cfg)
    load_strict(model, safetensors_torch.load_file(str(path)), f"native checkpoint {path}")
    return LoadedModel(model=model, loader="native", source=str(path), source_sha256=sha256_path(path),
                       notes=[f"{k}={v}" for k, v in meta.items() if k not in ("config", "ami_edge_format")])


def load_preset(name: str, seed: int = 0) -> LoadedModel:
    """A built-in preset with seeded random weights (truncated-normal like the official init)."""
    cfg = preset_config(name)
    gen = torch.Generator().manual_seed(seed)
    model = JEPAModel(cfg)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=gen).clamp_(-2, 2) * 0.02)
            elif key.endswith("bias"):
                p.zero_()
            elif "mask_token" in key:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):  # identifies the weights, as a file digest would
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return LoadedModel(model=model, loader="preset", source=f"{PRESET_PREFIX}{name}",
                       source_sha256=digest.hexdigest(), notes=[f"seed={seed}", "random weights (built-in preset)"])
