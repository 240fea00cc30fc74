"""A close transcription of the official V-JEPA 2-AC predictor (facebookresearch/vjepa2, MIT licence):
`rotate_queries_or_keys`, `ACRoPEAttention`, `ACBlock`, `VisionTransformerPredictorAC`, and
`build_action_block_causal_attention_mask`, kept to the official control flow (per-action-token loop, int64
positions through einsum, bool mask through SDPA). Used only as an independent reference in tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rotate_queries_or_keys(x, pos):
    B, num_heads, N, D = x.size()
    omega = torch.arange(D // 2, dtype=x.dtype, device=x.device)
    omega /= D / 2.0
    omega = 1.0 / 10000**omega
    freq = torch.einsum("..., f -> ... f", pos, omega)
    emb_sin = freq.sin()
    emb_cos = freq.cos()
    emb_sin = emb_sin.repeat(1, 1, 1, 2)
    emb_cos = emb_cos.repeat(1, 1, 1, 2)
    y = x.unflatten(-1, (-1, 2))
    y1, y2 = y.unbind(dim=-1)
    y = torch.stack((-y2, y1), dim=-1)
    y = y.flatten(-2)
    return (x * emb_cos) + (y * emb_sin)


class ACRoPEAttention(nn.Module):
    def __init__(self, dim, num_heads, grid_size):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.d_dim = self.h_dim = self.w_dim = int(2 * ((head_dim // 3) // 2))
        self.grid_size = grid_size

    def separate_positions(self, ids, H, W):
        tokens_per_frame = int(H * W)
        frame_ids = ids // tokens_per_frame
        rest = ids - tokens_per_frame * frame_ids
        height_ids = rest // W
        width_ids = rest - W * height_ids
        return 1.0 * frame_ids, 1.0 * height_ids, 1.0 * width_ids

    def forward(self, x, attn_mask, T, H, W, action_tokens):
        B, N, C = x.size()
        mask = torch.arange(int(T * H * W), device=x.device)
        d_mask, h_mask, w_mask = self.separate_positions(mask, H, W)
        h_mask *= self.grid_size / H
        w_mask *= self.grid_size / W
        x = x.view(B, -1, action_tokens + H * W, C)
        action_q, action_k, action_v = [], [], []
        for i in range(action_tokens):
            a = x[:, :, i:i + 1, :].flatten(1, 2)
            qkv = self.qkv(a).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            qd = rotate_queries_or_keys(q[..., :self.d_dim], pos=torch.arange(T, device=x.device))
            kd = rotate_queries_or_keys(k[..., :self.d_dim], pos=torch.arange(T, device=x.device))
            qr, kr = q[..., self.d_dim:], k[..., self.d_dim:]
            action_q += [torch.cat([qd, qr], dim=-1).view(B, self.num_heads, T, 1, -1)]
            action_k += [torch.cat([kd, kr], dim=-1).view(B, self.num_heads, T, 1, -1)]
            action_v += [v.view(B, self.num_heads, T, 1, -1)]
        action_q = torch.cat(action_q, dim=3).flatten(2, 3)
        action_k = torch.cat(action_k, dim=3).flatten(2, 3)
        action_v = torch.cat(action_v, dim=3).flatten(2, 3)
        x = x[:, :, action_tokens:, :].flatten(1, 2)
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        s = 0
        qd = rotate_queries_or_keys(q[..., s:s + self.d_dim], pos=d_mask)
        kd = rotate_queries_or_keys(k[..., s:s + self.d_dim], pos=d_mask)
        s += self.d_dim
        qh = rotate_queries_or_keys(q[..., s:s + self.h_dim], pos=h_mask)
        kh = rotate_queries_or_keys(k[..., s:s + self.h_dim], pos=h_mask)
        s += self.h_dim
        qw = rotate_queries_or_keys(q[..., s:s + self.w_dim], pos=w_mask)
        kw = rotate_queries_or_keys(k[..., s:s + self.w_dim], pos=w_mask)
        s += self.w_dim
        if s < self.head_dim:
            q = torch.cat([qd, qh, qw, q[..., s:]], dim=-1)
            k = torch.cat([kd, kh, kw, k[..., s:]], dim=-1)
        else:
            q = torch.cat([qd, qh, qw], dim=-1)
            k = torch.cat([kd, kh, kw], dim=-1)

        def merge_(tx, ta):
            tx = tx.view(B, self.num_heads, T, H * W, -1)
            ta = ta.view(B, self.num_heads, T, action_tokens, -1)
            return torch.cat([ta, tx], dim=3).flatten(2, 3)

        q, k, v = merge_(q, action_q), merge_(k, action_k), merge_(v, action_v)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ACBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, grid_size):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ACRoPEAttention(dim, num_heads, grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x, attn_mask, T, H, W, action_tokens):
        x = x + self.attn(self.norm1(x), attn_mask, T, H, W, action_tokens)
        return x + self.mlp(self.norm2(x))


def build_action_block_causal_attention_mask(T, H, W, add_tokens=1):
    N_T = add_tokens + (H * W)
    N = T * N_T
    mask = torch.zeros(N, N).bool()
    mask_block = torch.ones(N_T, N_T).bool()
    local_window_time = T
    for t1 in range(T):
        for t2 in range(max(0, t1 - local_window_time + 1), t1 + 1):
            mask[t1 * N_T:(t1 + 1) * N_T, t2 * N_T:(t2 + 1) * N_T] = mask_block
    return mask


class VisionTransformerPredictorAC(nn.Module):
    def __init__(self, img_size, patch_size, num_frames, tubelet_size, embed_dim, predictor_embed_dim, depth,
                 num_heads, mlp_ratio=4.0, action_embed_dim=7, use_extrinsics=False):
        super().__init__()
        self.use_extrinsics = use_extrinsics
        self.predictor_embed = nn.Linear(embed_dim, predictor_embed_dim, bias=True)
        self.action_encoder = nn.Linear(action_embed_dim, predictor_embed_dim, bias=True)
        self.state_encoder = nn.Linear(action_embed_dim, predictor_embed_dim, bias=True)
        self.extrinsics_encoder = nn.Linear(action_embed_dim - 1, predictor_embed_dim, bias=True)
        self.grid_height = img_size[0] // patch_size
        self.grid_width = img_size[1] // patch_size
        self.predictor_blocks = nn.ModuleList(
            ACBlock(predictor_embed_dim, num_heads, mlp_ratio, self.grid_height) for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(predictor_embed_dim, eps=1e-6)
        self.predictor_proj = nn.Linear(predictor_embed_dim, embed_dim, bias=True)
        self.attn_mask = build_action_block_causal_attention_mask(
            num_frames // tubelet_size, self.grid_height, self.grid_width, add_tokens=3 if use_extrinsics else 2)

    def forward(self, x, actions, states, extrinsics=None):
        x = self.predictor_embed(x)
        B, N_ctxt, D = x.size()
        T = N_ctxt // (self.grid_height * self.grid_width)
        s = self.state_encoder(states).unsqueeze(2)
        a = self.action_encoder(actions).unsqueeze(2)
        x = x.view(B, T, self.grid_height * self.grid_width, D)
        if self.use_extrinsics:
            e = self.extrinsics_encoder(extrinsics).unsqueeze(2)
            x = torch.cat([a, s, e, x], dim=2).flatten(1, 2)
        else:
            x = torch.cat([a, s, x], dim=2).flatten(1, 2)
        cond_tokens = 3 if self.use_extrinsics else 2
        attn_mask = self.attn_mask[:x.size(1), :x.size(1)]
        for blk in self.predictor_blocks:
            x = blk(x, attn_mask, T, self.grid_height, self.grid_width, cond_tokens)
        x = x.view(B, T, cond_tokens + self.grid_height * self.grid_width, D)
        x = x[:, :, cond_tokens:, :].flatten(1, 2)
        x = self.predictor_norm(x)
        return self.predictor_proj(x)
