"""ViT encoder of I-JEPA (images, 2-D sincos), V-JEPA (video tubelets, 3-D sincos) and V-JEPA 2 (3-D RoPE).

State-dict keys match the official code: `patch_embed.proj`, `pos_embed`, `blocks.{i}.*`, `norm`. The final
LayerNorm is part of the encoder output, as in the released models.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import EncoderConfig
from .layers import Block, grid_positions, sincos_table


class PatchEmbed(nn.Module):
    """Pixels -> tokens. Images: Conv2d p x p. Video: Conv3d tubelet x p x p. Output (B, N, D), N in (t, h, w) order."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        p = cfg.patch_size
        if cfg.is_video:
            k = (cfg.tubelet_size, p, p)
            self.proj: nn.Module = nn.Conv3d(cfg.in_chans, cfg.embed_dim, kernel_size=k, stride=k)
        else:
            self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, T', H', W') -> (B, N, D)


class VisionTransformer(nn.Module):
    """JEPA encoder: pixels in the configured layout -> (B, N, D) normalised tokens."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.use_rope = cfg.pos_embed == "rope"
        if not self.use_rope:
            # Fixed sincos table; a buffer saved in the state dict so released tables load (and are checked).
            self.register_buffer("pos_embed", sincos_table(cfg.embed_dim, cfg.grid, cfg.uniform_power))
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, self.use_rope, cfg.norm_eps)
            for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)

    def token_positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame, row, column) float positions of every token, each shaped (1, 1, N) to broadcast over heads."""
        _, h, w = self.cfg.grid
        ids = torch.arange(self.cfg.num_tokens, device=self.norm.weight.device)
        return tuple(p.view(1, 1, -1) for p in grid_positions(ids, h, w))  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.layout == "BTCHW":  # Hugging Face video layout
            x = x.permute(0, 2, 1, 3, 4)  # (B, T, C, H, W) -> (B, C, T, H, W)
        x = self.patch_embed(x)  # (B, N, D)
        pos = None
        if self.use_rope:
            pos = self.token_positions()
        else:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x, pos)
        return self.norm(x)  # (B, N, D)
