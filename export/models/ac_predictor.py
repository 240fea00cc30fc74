"""V-JEPA 2-AC: the action-conditioned predictor.

Per time step t the sequence holds [action_t, state_t, (extrinsics_t,) H'xW' frame tokens of step t]. Attention is
block-causal over steps (a token sees every token of its own step and of earlier steps). Frame tokens get 3-D RoPE
at (t, h, w); conditioning tokens get RoPE on the depth section only, at t. Rotating by angle 0 is the identity, so
giving conditioning tokens positions (t, 0, 0) reproduces the official per-token code with one attention path.
Output: for every step, the predicted latents of the next step, (B, T*H'*W', D).

Keys match the official `VisionTransformerPredictorAC`: `predictor_embed`, `action_encoder`, `state_encoder`,
`extrinsics_encoder`, `predictor_blocks.{i}.*`, `predictor_norm`, `predictor_proj`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ACPredictorConfig, EncoderConfig
from .layers import Block

MASKED = -1e4


class ACPredictor(nn.Module):
    def __init__(self, cfg: ACPredictorConfig, enc: EncoderConfig):
        super().__init__()
        self.cfg, self.enc = cfg, enc
        d = cfg.embed_dim
        self.predictor_embed = nn.Linear(enc.embed_dim, d)
        self.action_encoder = nn.Linear(cfg.action_dim, d)
        self.state_encoder = nn.Linear(cfg.state_dim, d)
        # The official model always has this layer (used only with extrinsics); keep it so its keys load strictly.
        self.extrinsics_encoder = nn.Linear(cfg.action_dim - 1, d) if cfg.action_dim > 1 else None
        self.predictor_blocks = nn.ModuleList(
            Block(d, cfg.num_heads, cfg.mlp_ratio, cfg.qkv_bias, True, cfg.norm_eps) for _ in range(cfg.depth))
        self.predictor_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.predictor_proj = nn.Linear(d, enc.embed_dim)

    def layout(self, steps: int, device: torch.device) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """RoPE positions, each (1, 1, N), and the additive block-causal bias (N, N) for `steps` steps."""
        _, gh, gw = self.enc.grid
        c, hw = self.cfg.cond_tokens, gh * gw
        per_step = c + hw
        zeros = torch.zeros(c, device=device)
        cell = torch.arange(hw, device=device, dtype=torch.float32)
        row = torch.floor(cell / gw)
        # Official quirk kept: "snap spatial positions to grid size" scales both axes by grid_height / size, so on
        # a non-square grid the column positions are multiplied by H'/W' (rows by 1).
        col = (cell - gw * row) * (gh / gw)
        t = torch.arange(steps, device=device, dtype=torch.float32).unsqueeze(1).expand(steps, per_step)
        h = torch.cat([zeros, row]).unsqueeze(0).expand(steps, per_step)
        w = torch.cat([zeros, col]).unsqueeze(0).expand(steps, per_step)
        pos = tuple(p.reshape(1, 1, -1) for p in (t, h, w))
        step_of = t.reshape(-1)  # (N,) the step each token belongs to
        allowed = step_of.unsqueeze(1) >= step_of.unsqueeze(0)  # (N, N) query step >= key step
        # A large finite negative rather than -inf: safe in fp16 / int8 engines; exp() of it is 0 in fp32 too.
        bias = torch.zeros(allowed.shape, device=device).masked_fill(~allowed, MASKED)
        return pos, bias

    def forward(self, context: torch.Tensor, actions: torch.Tensor, states: torch.Tensor,
                extrinsics: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            context: (B, T*H'*W', D) encoder tokens of T steps.
            actions: (B, T, action_dim) action taken at each step.
            states: (B, T, state_dim) proprioceptive state at each step.
            extrinsics: (B, T, action_dim - 1) camera extrinsics, only when the config uses them.
        Returns:
            (B, T*H'*W', D) predicted encoder tokens of the following step, for every step.
        """
        _, gh, gw = self.enc.grid
        hw, c = gh * gw, self.cfg.cond_tokens
        B, T = actions.shape[0], actions.shape[1]
        if self.cfg.normalize_context:  # official 2-AC world model: parameter-free layer norm of encoder tokens
            context = F.layer_norm(context, (context.shape[-1],))
        x = self.predictor_embed(context).view(B, T, hw, -1)  # (B, T, H'W', d)
        cond = [self.action_encoder(actions).unsqueeze(2), self.state_encoder(states).unsqueeze(2)]  # (B, T, 1, d)
        if self.cfg.use_extrinsics:
            if extrinsics is None or self.extrinsics_encoder is None:
                raise ValueError("this AC predictor was built with use_extrinsics=True; pass extrinsics")
            cond.append(self.extrinsics_encoder(extrinsics).unsqueeze(2))
        x = torch.cat([*cond, x], dim=2).flatten(1, 2)  # (B, T*(c+H'W'), d)
        pos, bias = self.layout(T, x.device)
        # cos / sin tables once per forward, shared by every block
        rope = self.predictor_blocks[0].attn.rope.tables(pos)  # type: ignore[union-attr, arg-type]
        for blk in self.predictor_blocks:
            x = blk(x, rope, bias)
        x = x.view(B, T, c + hw, -1)[:, :, c:].flatten(1, 2)  # drop conditioning tokens: (B, T*H'W', d)
        out = self.predictor_proj(self.predictor_norm(x))  # (B, T*H'W', D)
        return F.layer_norm(out, (out.shape[-1],)) if self.cfg.normalize_context else out
