"""Checkpoint loaders, keyed by `--family`: official facebookresearch `.pt`, Hugging Face directories, native."""

from __future__ import annotations

from pathlib import Path

from ami_edge.errors import CheckpointError

from . import hf, native, official  # noqa: F401  (register loaders)
from .base import LOADERS, LoadedModel, LoadOptions
from .native import PRESET_PREFIX, load_preset, save_native

OFFICIAL_FAMILIES = ("vjepa2", "vjepa", "ijepa")


def load_checkpoint(src: str | Path, family: str = "auto", opts: LoadOptions | None = None,
                    seed: int = 0) -> LoadedModel:
    """Load any supported checkpoint into a torch JEPA model.

    Args:
        src: path to a checkpoint file or HF directory, or `preset:NAME`.
        family: auto | vjepa2 | vjepa | ijepa (official .pt) | hf | native.
        opts: overrides for what tensors cannot tell (heads, resolution, frames, checkpoint key).
        seed: weight seed for presets.
    Raises:
        CheckpointError: unreadable, unrecognised, ambiguous or not strictly loadable.
    """
    opts = opts or LoadOptions()
    text = str(src)
    if text.startswith(PRESET_PREFIX):
        return load_preset(text[len(PRESET_PREFIX):], seed=seed)
    path = Path(text).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint '{src}' does not exist; pass a .pt/.pth file, a Hugging Face model "
                              f"directory, a native .safetensors or preset:NAME")
    if family in OFFICIAL_FAMILIES:
        return official.load_official(path, opts, family)
    if family != "auto":
        if family not in LOADERS:
            raise CheckpointError(f"unknown --family {family!r}; valid: auto, {', '.join([*OFFICIAL_FAMILIES, *LOADERS])}")
        return LOADERS[family][0](path, opts)
    matches = [name for name, (_, detect) in LOADERS.items() if detect(path)]
    if len(matches) == 1:
        return LOADERS[matches[0]][0](path, opts)
    if not matches:
        raise CheckpointError(f"cannot tell the format of '{src}': expected an official .pt/.pth/.tar checkpoint, "
                              "a Hugging Face directory with config.json, or a native .safetensors; pass --family")
    raise CheckpointError(f"'{src}' looks like several formats ({', '.join(matches)}); pass --family")


__all__ = ["LOADERS", "LoadOptions", "LoadedModel", "load_checkpoint", "load_preset", "save_native"]
