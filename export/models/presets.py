"""Model presets: the official ViT sizes (used to infer heads from width) and small built-in models.

Built-in presets (`ami-edge export preset:tiny`) are seeded random models for demos, tests and smoke checks of the
whole export path without any download.
"""

from __future__ import annotations

from ami_edge.errors import ConfigError

from .config import ACPredictorConfig, EncoderConfig, JEPAConfig, PredictorConfig

# Official ViT presets (ijepa / jepa repos): width -> (name, depth, heads, mlp_ratio).
OFFICIAL_VIT = {
    192: ("vit_tiny", 12, 3, 4.0),
    384: ("vit_small", 12, 6, 4.0),
    768: ("vit_base", 12, 12, 4.0),
    1024: ("vit_large", 24, 16, 4.0),
    1280: ("vit_huge", 32, 16, 4.0),
    1408: ("vit_giant", 40, 16, 48 / 11),
    1664: ("vit_gigantic", 48, 16, 64 / 13),
}
# vjepa2 builds its giant models with the "xformers" presets: head_dim 64, so more heads.
VJEPA2_HEADS = {1408: 22, 1664: 26}
# The V-JEPA 2 masked predictor: width 384, 12 heads. (I-JEPA and V-JEPA 1 predictors use the encoder's heads.)
VJEPA2_PREDICTOR_HEADS = {384: 12}
# The V-JEPA 2-AC predictor: width 1024, 16 heads.
AC_PREDICTOR_HEADS = {1024: 16}


def encoder_heads(width: int, family: str) -> int:
    """Attention heads of an official encoder of this width, as the family's repo builds it."""
    if family == "vjepa2" and width in VJEPA2_HEADS:
        return VJEPA2_HEADS[width]
    if width not in OFFICIAL_VIT:
        raise ConfigError(f"cannot infer the encoder's attention heads: width {width} is not an official preset "
                          f"({sorted(OFFICIAL_VIT)}); pass --num-heads")
    return OFFICIAL_VIT[width][2]


def predictor_heads(width: int, table: dict[int, int], what: str) -> int:
    if width not in table:
        raise ConfigError(f"cannot infer the {what}'s attention heads: width {width} is not an official preset "
                          f"({sorted(table)}); pass --pred-num-heads")
    return table[width]


def _tiny_encoder(**kw) -> EncoderConfig:
    base = dict(img_size=(64, 64), patch_size=16, num_frames=4, tubelet_size=2, embed_dim=96, depth=4, num_heads=4,
                pos_embed="rope", layout="BCTHW")
    base.update(kw)
    return EncoderConfig(**base)


def _tiny_predictor(**kw) -> PredictorConfig:
    base = dict(embed_dim=64, depth=2, num_heads=4, num_mask_tokens=2)
    base.update(kw)
    return PredictorConfig(**base)


PRESETS = {
    # V-JEPA 2 style: 3-D RoPE video encoder + masked predictor + action-conditioned predictor.
    "tiny": lambda: JEPAConfig(family="native", encoder=_tiny_encoder(), predictor=_tiny_predictor(),
                               ac_predictor=ACPredictorConfig(embed_dim=64, depth=2, num_heads=4)),
    # V-JEPA style: 3-D sincos video encoder.
    "tiny-vjepa": lambda: JEPAConfig(family="native", encoder=_tiny_encoder(pos_embed="sincos"),
                                     predictor=_tiny_predictor()),
    # I-JEPA style: 2-D sincos image encoder, single mask token.
    "tiny-ijepa": lambda: JEPAConfig(family="native", encoder=_tiny_encoder(num_frames=1, pos_embed="sincos",
                                                                            layout="BCHW"),
                                     predictor=_tiny_predictor(num_mask_tokens=0)),
    "small": lambda: JEPAConfig(family="native",
                                encoder=_tiny_encoder(img_size=(128, 128), num_frames=8, embed_dim=192, depth=6,
                                                      num_heads=3),
                                predictor=_tiny_predictor(embed_dim=96, depth=4, num_heads=4),
                                ac_predictor=ACPredictorConfig(embed_dim=96, depth=4, num_heads=4)),
}


def preset_config(name: str) -> JEPAConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; built-in presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
