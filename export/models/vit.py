"""ViT encoder of I-JEPA (images, 2-D sincos), V-JEPA (video tubelets, 3-D sincos), V-JEPA 2 (3-D RoPE) and
V-JEPA 2.1 (interleaved RoPE, modality embeddings, hierarchical output norms).

State-dict keys match the official code: `patch_embed.proj`, `pos_embed`, `blocks.{i}.*`, `norm` (2.1:
`patch_embed_img.proj`, `img_mod_embed`, `video_mod_embed`, `norms_block.{i}`). The final LayerNorm is part of the
encoder output, as in the released models.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import EncoderConfig
from .layers import Block, grid_positions, sincos_table


class PatchEmbed(nn.Module):
    """Pixels -> tokens with one strided conv. Output (B, N, D), tokens in (t, h, w) order."""

    def __init__(self, in_chans: int, dim: int, patch: int, tubelet: int | None):
        super().__init__()
        if tubelet is None:  # images: Conv2d p x p
            self.proj: nn.Module = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)
        else:  # video: Conv3d tubelet x p x p
            k = (tubelet, patch, patch)
            self.proj = nn.Conv3d(in_chans, dim, kernel_size=k, stride=k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, D, [T',] H', W') -> (B, N, D)


class VisionTransformer(nn.Module):
    """JEPA encoder: pixels in the configured layout -> (B, N, D) normalised tokens."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        video_patches = cfg.is_video or cfg.image_patch_embed  # a video model keeps its Conv3d even in image mode
        self.patch_embed = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size,
                                      cfg.tubelet_size if video_patches else None)
        if cfg.image_patch_embed:
            self.patch_embed_img = PatchEmbed(cfg.in_chans, cfg.embed_dim, cfg.patch_size, 1)
        if cfg.modality_embed:
            self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.use_rope = cfg.pos_embed == "rope"
        if not self.use_rope:
            # Fixed sincos table; a buffer saved in the state dict so released tables load (and are checked).
            self.register_buffer("pos_embed", sincos_table(cfg.embed_dim, cfg.grid, cfg.uniform_power, cfg.is_video))
        interleaved = cfg.rope_layout == "interleaved"
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, self.use_rope, cfg.norm_eps, interleaved)
            for _ in range(cfg.depth))
        if cfg.output_norms == 1:
            self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        else:  # V-JEPA 2.1: one norm per hierarchical layer; inference output uses the last
            self.norms_block = nn.ModuleList(nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
                                             for _ in range(cfg.output_norms))

    def token_positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(frame, row, column) float positions of every token, each shaped (1, 1, N) to broadcast over heads."""
        _, h, w = self.cfg.grid
        ids = torch.arange(self.cfg.num_tokens, device=self.blocks[0].norm1.weight.device)
        t, row, col = grid_positions(ids, h, w)
        if self.cfg.rope_ref_grid:  # V-JEPA 2.1 interpolate_rope: spatial positions mapped onto the pretraining grid
            g = self.cfg.rope_ref_grid - 1
            row, col = row * g / (h - 1), col * g / (w - 1)
        return tuple(p.view(1, 1, -1) for p in (t, row, col))  # type: ignore[return-value]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.layout == "BTCHW":  # Hugging Face video layout
            x = x.permute(0, 2, 1, 3, 4)  # (B, T, C, H, W) -> (B, C, T, H, W)
        if self.cfg.image_patch_embed and not self.cfg.is_video:  # V-JEPA 2.1 image mode
            x = self.patch_embed_img(x.unsqueeze(2))  # (B, C, 1, H, W) -> (B, N, D)
            return x + self.img_mod_embed if self.cfg.modality_embed else x
        x = self.patch_embed(x)  # (B, N, D)
        return x + self.video_mod_embed if self.cfg.modality_embed else x

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, [T,] H, W) normalised pixels in `cfg.layout` -> (B, N, D) tokens."""
        x = self.embed(pixels)
        rope = None
        if self.use_rope:  # one (N, head_dim) cos / sin pair for every block; constants in the exported graph
            rope = self.blocks[0].attn.rope.tables(self.token_positions())
        else:
            x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x, rope)
        return self.norm(x) if self.cfg.output_norms == 1 else self.norms_block[-1](x)  # (B, N, D)
