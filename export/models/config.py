"""Typed configs for the JEPA models, validated at construction and serialisable to JSON.

One `JEPAConfig` describes everything needed to rebuild a model: the ViT encoder, the masked predictor and the
optional action-conditioned predictor. Loaders infer it from checkpoint tensors; native checkpoints and bundle
manifests store it verbatim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ami_edge.errors import ConfigError

FAMILIES = ("vjepa2", "vjepa", "ijepa", "native")
POS_EMBEDS = ("sincos", "rope")
LAYOUTS = ("BCTHW", "BTCHW", "BCHW")
ROPE_LAYOUTS = ("tiled", "interleaved")
PREDICTOR_ARCHS = ("vit", "conv")


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def _check_positive(owner: str, **values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{owner}.{name} must be > 0, got {value}")


def _check_transformer(owner: str, flag: str, embed_dim: int, depth: int, num_heads: int, mlp_ratio: float) -> None:
    _check_positive(owner, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
    if embed_dim % num_heads:
        raise ConfigError(f"{owner}.embed_dim={embed_dim} is not divisible by num_heads={num_heads}; "
                          f"pass {flag} with a divisor of the width")


@dataclass
class EncoderConfig:
    """A ViT encoder. ``num_frames == 1`` is an image model (Conv2d patches), otherwise video (Conv3d tubelets)."""

    img_size: tuple[int, int] = (224, 224)  # (H, W) in pixels
    patch_size: int = 16
    num_frames: int = 1
    tubelet_size: int = 2
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    pos_embed: str = "sincos"  # "sincos" (I-JEPA, V-JEPA) or "rope" (V-JEPA 2)
    uniform_power: bool = False  # V-JEPA 3D sincos: split dims evenly over t/h/w
    norm_eps: float = 1e-6
    layout: str = "BCTHW"  # input layout the graph accepts
    # V-JEPA 2.1 variations (defaults are V-JEPA 2):
    rope_layout: str = "tiled"  # angle table "tiled" (V-JEPA 2 quirk) or "interleaved" (V-JEPA 2.1)
    rope_ref_grid: int = 0  # >0: scale h/w RoPE positions onto this pretraining grid (2.1 interpolate_rope)
    output_norms: int = 1  # 1: final `norm`; n > 1: 2.1 `norms_block` (one per hierarchical layer; output = last)
    modality_embed: bool = False  # 2.1 `img_mod_embed` / `video_mod_embed` added after patch embedding
    image_patch_embed: bool = False  # 2.1 `patch_embed_img` (tubelet 1), used for image input (num_frames == 1)

    def __post_init__(self) -> None:
        self.img_size = (int(self.img_size[0]), int(self.img_size[1]))
        _check_choice("encoder.pos_embed", self.pos_embed, POS_EMBEDS)
        _check_choice("encoder.layout", self.layout, LAYOUTS)
        _check_choice("encoder.rope_layout", self.rope_layout, ROPE_LAYOUTS)
        _check_positive("encoder", output_norms=self.output_norms)
        if self.rope_ref_grid and min(self.grid[1:]) < 2:
            raise ConfigError(f"encoder.rope_ref_grid needs a token grid of at least 2x2, got {self.grid[1:]}")
        _check_positive("encoder", patch_size=self.patch_size, num_frames=self.num_frames,
                        tubelet_size=self.tubelet_size)
        _check_transformer("encoder", "--num-heads", self.embed_dim, self.depth, self.num_heads, self.mlp_ratio)
        h, w = self.img_size
        if h % self.patch_size or w % self.patch_size:
            raise ConfigError(f"encoder.img_size={self.img_size} is not a multiple of patch_size={self.patch_size}")
        if self.is_video and self.num_frames % self.tubelet_size:
            raise ConfigError(f"encoder.num_frames={self.num_frames} is not a multiple of "
                              f"tubelet_size={self.tubelet_size}")
        if self.is_video == (self.layout == "BCHW"):
            raise ConfigError(f"encoder.layout={self.layout!r} does not fit num_frames={self.num_frames}: "
                              "image models take BCHW, video models BCTHW or BTCHW")

    @property
    def is_video(self) -> bool:
        return self.num_frames > 1

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W'); T' is 1 for image models."""
        t = self.num_frames // self.tubelet_size if self.is_video else 1
        return (t, self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w


@dataclass
class PredictorConfig:
    """The latent predictor. `vit` (every official JEPA): context tokens plus mask tokens at target positions.
    `conv` (the ami-edge demo model, `ConvPredictor`): a residual next-step predictor of 3x3 convolutions over the
    token grid, `embed_dim` channels and `depth` blocks; the attention fields do not apply to it."""

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    num_mask_tokens: int = 10  # 0: a single `mask_token` (I-JEPA); else a list of learned tokens (V-JEPA)
    mask_index: int = 1  # which learned mask token inference uses (the official default)
    norm_eps: float = 1e-6
    # Next-step residual (ami-edge demo model): the targets are one whole time step of the grid, the context ends
    # with the step before it, and the output is that last context step plus the predicted change. Copying what
    # stays still is then free and the capacity goes to what moves. Official predictors predict absolute latents.
    residual: bool = False
    arch: str = "vit"

    def __post_init__(self) -> None:
        _check_choice("predictor.arch", self.arch, PREDICTOR_ARCHS)
        if self.arch == "conv":
            _check_positive("predictor", embed_dim=self.embed_dim, depth=self.depth)
            if not self.residual:
                raise ConfigError("predictor.arch='conv' predicts the change from the last step: it needs "
                                  "residual=true")
            return
        _check_transformer("predictor", "--pred-num-heads", self.embed_dim, self.depth, self.num_heads,
                           self.mlp_ratio)
        if self.num_mask_tokens < 0:
            raise ConfigError(f"predictor.num_mask_tokens must be >= 0, got {self.num_mask_tokens}")


@dataclass
class ACPredictorConfig:
    """V-JEPA 2-AC: per step [action, state, (extrinsics,) H'xW' frame tokens], block-causal over time."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    action_dim: int = 7
    state_dim: int = 7
    use_extrinsics: bool = False
    norm_eps: float = 1e-6
    # The official 2-AC world model layer-norms (no affine) the encoder tokens going in and the predictions coming
    # out (`normalize_reps`); the graph does both when set, so a runtime feeds raw encoder tokens either way.
    normalize_context: bool = False

    def __post_init__(self) -> None:
        _check_transformer("ac_predictor", "--pred-num-heads", self.embed_dim, self.depth, self.num_heads,
                           self.mlp_ratio)
        _check_positive("ac_predictor", action_dim=self.action_dim, state_dim=self.state_dim)

    @property
    def cond_tokens(self) -> int:
        return 3 if self.use_extrinsics else 2


@dataclass
class JEPAConfig:
    family: str = "native"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    predictor: PredictorConfig | None = None
    ac_predictor: ACPredictorConfig | None = None

    def __post_init__(self) -> None:
        _check_choice("family", self.family, FAMILIES)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JEPAConfig:
        def build(kind: type, value: Any) -> Any:
            if value is None:
                return None
            if not isinstance(value, dict):
                raise ConfigError(f"{kind.__name__} must be a JSON object, got {type(value).__name__}")
            known = {f.name for f in dataclasses.fields(kind)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ConfigError(f"{kind.__name__} has unknown fields {unknown}; valid: {sorted(known)}")
            try:
                return kind(**value)
            except (TypeError, ValueError, IndexError) as exc:
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"{kind.__name__} has an invalid value ({exc})") from exc

        unknown = sorted(set(data) - {"family", "encoder", "predictor", "ac_predictor"})
        if unknown:
            raise ConfigError(f"JEPAConfig has unknown fields {unknown}")
        return cls(family=data.get("family", "native"), encoder=build(EncoderConfig, data.get("encoder", {})),
                   predictor=build(PredictorConfig, data.get("predictor")),
                   ac_predictor=build(ACPredictorConfig, data.get("ac_predictor")))
