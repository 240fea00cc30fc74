"""What every loader returns, the loader registry, and strict state-dict loading."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ami_edge.errors import CheckpointError

from ..models import JEPAModel
from ..models.config import JEPAConfig

# ImageNet statistics: what every official and HF JEPA checkpoint was trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class LoadOptions:
    """User overrides for what cannot be inferred from tensors (CLI flags of `ami-edge export`)."""

    checkpoint_key: str | None = None
    resolution: int | tuple[int, int] | None = None
    frames: int | None = None
    num_heads: int | None = None
    pred_num_heads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.resolution, int):
            self.resolution = (self.resolution, self.resolution)
        for name in ("frames", "num_heads", "pred_num_heads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise CheckpointError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


@dataclass
class LoadedModel:
    """A torch JEPA model plus what the bundle manifest needs to know about where it came from."""

    model: JEPAModel
    loader: str
    source: str
    source_sha256: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    ignored_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def config(self) -> JEPAConfig:
        return self.model.cfg


Loader = Callable[[Path, LoadOptions], LoadedModel]
Detector = Callable[[Path], bool]
LOADERS: dict[str, tuple[Loader, Detector]] = {}


def register_loader(name: str, detect: Detector) -> Callable[[Loader], Loader]:
    """Register a checkpoint loader under a `--family` name, with a cheap detector for `--family auto`."""

    def wrap(fn: Loader) -> Loader:
        LOADERS[name] = (fn, detect)
        return fn

    return wrap


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files in sorted order (an HF model directory)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def strip_prefixes(sd: Mapping[str, torch.Tensor], prefixes: tuple[str, ...] = ("module.", "backbone.")
                   ) -> dict[str, torch.Tensor]:
    """Remove DDP / wrapper prefixes (repeatedly: `module.backbone.x` -> `x`)."""
    out = {}
    for key, value in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if key.startswith(p):
                    key, changed = key[len(p):], True
        out[key] = value
    return out


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str) -> None:
    """load_state_dict that refuses partial loads and lists every missing / unexpected / mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape))
    problems = []
    if missing:
        problems.append(f"missing keys {_fmt(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_fmt(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches {_fmt(shapes)}")
    if problems:
        raise CheckpointError(f"{what} does not match the inferred architecture: " + "; ".join(problems)
                              + ". Check --family / --num-heads / --frames / --resolution")
    module.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


def _fmt(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''}]"


def count_blocks(sd: Mapping[str, Any], prefix: str) -> int:
    """Number of `prefix{i}.` blocks in a state dict."""
    try:
        idx = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    except ValueError:
        raise CheckpointError(f"keys under '{prefix}' are not numbered blocks: "
                              f"{sorted(k for k in sd if k.startswith(prefix))[:4]}") from None
    if idx and idx != set(range(len(idx))):
        raise CheckpointError(f"blocks under '{prefix}' are not numbered 0..{len(idx) - 1}: {sorted(idx)}")
    return len(idx)
