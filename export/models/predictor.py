"""The JEPA masked predictor: a narrow ViT that predicts the encoder latents of target positions.

Context tokens (encoder outputs at `context_ids`) are projected to predictor width, learned mask tokens are placed
at `target_ids`, both get positions (sincos table lookup, or RoPE from the ids), and the target outputs are
projected back to encoder width. Keys match the official code: `predictor_embed`, `mask_tokens.{i}` (or
`mask_token` for I-JEPA), `predictor_pos_embed`, `predictor_blocks.{i}.*`, `predictor_norm`, `predictor_proj`.

The official code sorts tokens by position id before the blocks and unsorts after. Without an attention mask the
blocks are permutation-equivariant, so this module skips the sort: same result, and no ArgSort in the ONNX graph.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import EncoderConfig, PredictorConfig
from .layers import Block, grid_positions, sincos_table


class Predictor(nn.Module):
    def __init__(self, cfg: PredictorConfig, enc: EncoderConfig):
        super().__init__()
        self.cfg, self.enc = cfg, enc
        d = cfg.embed_dim
        self.predictor_embed = nn.Linear(enc.embed_dim, d)
        if cfg.num_mask_tokens == 0:
            self.mask_token = nn.Parameter(torch.zeros(1, 1, d))
        else:
            self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, 1, d)) for _ in range(cfg.num_mask_tokens))
        self.use_rope = enc.pos_embed == "rope"
        if not self.use_rope:
            self.register_buffer("predictor_pos_embed", sincos_table(d, enc.grid, enc.uniform_power, enc.is_video))
        self.predictor_blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, self.use_rope, cfg.norm_eps)
            for _ in range(cfg.depth))
        self.predictor_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.predictor_proj = nn.Linear(d, enc.embed_dim)

    def mask_embedding(self) -> torch.Tensor:
        if self.cfg.num_mask_tokens == 0:
            return self.mask_token
        return self.mask_tokens[self.cfg.mask_index % self.cfg.num_mask_tokens]  # (1, 1, d)

    def forward(self, context: torch.Tensor, context_ids: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
        """
        Args:
            context: (B, Nc, D) encoder tokens at the context positions.
            context_ids: (B, Nc) int64 flat token ids (t, h, w order) of the context tokens.
            target_ids: (B, Nt) int64 flat token ids to predict.
        Returns:
            (B, Nt, D) predicted encoder tokens at `target_ids`.
        Raises:
            ValueError: a `residual` predictor asked for anything but one grid step after a context of whole steps.
        """
        B, Nc, _ = context.shape
        Nt = target_ids.shape[1]
        _, h, w = self.enc.grid
        if self.cfg.residual and not torch.onnx.is_in_onnx_export():  # the exported graph fixes the target length
            if Nt != h * w or Nc % Nt:
                raise ValueError(f"residual predictor: targets must be one {h}x{w} grid step ({h * w} tokens) after "
                                 f"whole context steps, got {Nt} targets after {Nc} context tokens")
        x = self.predictor_embed(context)  # (B, Nc, d)
        targets = self.mask_embedding().expand(B, Nt, -1)  # (B, Nt, d)
        if not self.use_rope:
            table = self.predictor_pos_embed[0]  # (N, d)
            x = x + table[context_ids]
            targets = targets + table[target_ids]
        x = torch.cat([x, targets], dim=1)  # (B, Nc + Nt, d)
        rope = None
        if self.use_rope:  # tables from the ids once per forward, shared by every block
            ids = torch.cat([context_ids, target_ids], dim=1)  # (B, Nc + Nt)
            pos = tuple(p.unsqueeze(1) for p in grid_positions(ids, h, w))  # each (B, 1, Nc + Nt)
            rope = self.predictor_blocks[0].attn.rope.tables(pos)  # type: ignore[union-attr, arg-type]
        for blk in self.predictor_blocks:
            x = blk(x, rope)
        x = self.predictor_norm(x[:, Nc:])  # (B, Nt, d); LayerNorm is per token, so slice first
        if self.cfg.residual:  # the change from the context's last step, at the same grid positions
            return context[:, -h * w:] + self.predictor_proj(x)  # (B, Nt, D)
        return self.predictor_proj(x)  # (B, Nt, D)
