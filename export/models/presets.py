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


def _vjepa2(width: int, depth: int, heads: int, mlp_ratio: float = 4.0, size: int = 256, frames: int = 16,
            ac: bool = False) -> JEPAConfig:
    """V-JEPA 2 release geometry: patch 16, tubelet 2, 3-D RoPE; predictor 384 x 12 (12 heads, 10 mask tokens),
    or the 2-AC predictor 1024 x 24 (16 heads)."""
    enc = EncoderConfig(img_size=(size, size), patch_size=16, num_frames=frames, tubelet_size=2, embed_dim=width,
                        depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, pos_embed="rope")
    if ac:  # the 2-AC world model encodes one frame per step and layer-norms tokens around the predictor
        return JEPAConfig(family="vjepa2", encoder=enc, ac_predictor=ACPredictorConfig(
            embed_dim=1024, depth=24, num_heads=16, normalize_context=True))
    return JEPAConfig(family="vjepa2", encoder=enc, predictor=PredictorConfig(embed_dim=384, depth=12, num_heads=12,
                                                                              num_mask_tokens=10))


# Official geometries with random weights: size, latency and engine-build checks on a device without downloads.
PRESETS.update({
    "vjepa2-vitl": lambda: _vjepa2(1024, 24, 16),
    "vjepa2-vith": lambda: _vjepa2(1280, 32, 16),
    "vjepa2-vitg": lambda: _vjepa2(1408, 40, 22, 48 / 11),
    "vjepa2-vitg-384": lambda: _vjepa2(1408, 40, 22, 48 / 11, size=384),
    "vjepa2-ac-vitg": lambda: _vjepa2(1408, 40, 22, 48 / 11, frames=2, ac=True),
})


def preset_config(name: str) -> JEPAConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; built-in presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
