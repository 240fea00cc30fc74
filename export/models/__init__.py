"""Readable PyTorch definitions of the JEPA models (encoder, masked predictor, action-conditioned predictor)."""

from __future__ import annotations

from torch import nn

from .ac_predictor import ACPredictor
from .config import ACPredictorConfig, EncoderConfig, JEPAConfig, PredictorConfig
from .conv_predictor import ConvPredictor
from .predictor import Predictor
from .vit import VisionTransformer


def make_predictor(cfg: PredictorConfig, enc: EncoderConfig) -> Predictor | ConvPredictor:
    return ConvPredictor(cfg, enc) if cfg.arch == "conv" else Predictor(cfg, enc)


class JEPAModel(nn.Module):
    """Container whose state dict is `encoder.*`, `predictor.*`, `ac_predictor.*` (the native checkpoint)."""

    def __init__(self, cfg: JEPAConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = VisionTransformer(cfg.encoder)
        self.predictor = make_predictor(cfg.predictor, cfg.encoder) if cfg.predictor else None
        self.ac_predictor = ACPredictor(cfg.ac_predictor, cfg.encoder) if cfg.ac_predictor else None

    def graphs(self) -> list[str]:
        """Names of the graphs this model can export, in bundle order."""
        return ["encoder"] + [n for n in ("predictor", "ac_predictor") if getattr(self, n) is not None]


__all__ = ["ACPredictor", "ACPredictorConfig", "ConvPredictor", "EncoderConfig", "JEPAConfig", "JEPAModel",
           "Predictor", "PredictorConfig", "VisionTransformer", "make_predictor"]
