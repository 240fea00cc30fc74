"""A close transcription of the official V-JEPA 2.1 encoder forward (facebookresearch/vjepa2,
app/vjepa_2_1/models: `rotate_queries_or_keys`, `RoPEAttention` with `interpolate_rope`, `Block`,
`VisionTransformer` with `patch_embed_img`, modality embeddings and `norms_block`), without registers, cls token
or masks. Used only as an independent reference in tests.
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
    emb_sin = freq.sin().repeat_interleave(2, dim=-1)
    emb_cos = freq.cos().repeat_interleave(2, dim=-1)
    y = x.unflatten(-1, (-1, 2))
    y1, y2 = y.unbind(dim=-1)
    y = torch.stack((-y2, y1), dim=-1).flatten(-2)
    return (x * emb_cos) + (y * emb_sin)


class RoPEAttention(nn.Module):
    def __init__(self, dim, num_heads, patch_size):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.d_dim = self.h_dim = self.w_dim = int(2 * ((head_dim // 3) // 2))
        self.pretrained_grid_size = int(252 / patch_size) if patch_size == 14 else int(256 / patch_size)

    def forward(self, x, T, H_patches, W_patches):
        B, N, C = x.size()
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        ids = torch.arange(int(T * H_patches * W_patches), device=x.device)
        tokens_per_frame = int(H_patches * W_patches)
        frame_ids = ids // tokens_per_frame
        height_ids = (ids - tokens_per_frame * frame_ids) // W_patches
        width_ids = (ids - tokens_per_frame * frame_ids) - W_patches * height_ids
        d_mask, h_mask, w_mask = 1.0 * frame_ids, 1.0 * height_ids, 1.0 * width_ids
        h_mask = h_mask * (self.pretrained_grid_size - 1) / (H_patches - 1)  # interpolate_rope=True (hub)
        w_mask = w_mask * (self.pretrained_grid_size - 1) / (W_patches - 1)
        s = 0
        qd, kd = rotate_queries_or_keys(q[..., s:s + self.d_dim], d_mask), rotate_queries_or_keys(
            k[..., s:s + self.d_dim], d_mask)
        s += self.d_dim
        qh, kh = rotate_queries_or_keys(q[..., s:s + self.h_dim], h_mask), rotate_queries_or_keys(
            k[..., s:s + self.h_dim], h_mask)
        s += self.h_dim
        qw, kw = rotate_queries_or_keys(q[..., s:s + self.w_dim], w_mask), rotate_queries_or_keys(
            k[..., s:s + self.w_dim], w_mask)
        s += self.w_dim
        if s < self.head_dim:
            q = torch.cat([qd, qh, qw, q[..., s:]], dim=-1)
            k = torch.cat([kd, kh, kw, k[..., s:]], dim=-1)
        else:
            q, k = torch.cat([qd, qh, qw], dim=-1), torch.cat([kd, kh, kw], dim=-1)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim, num_heads, patch_size):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RoPEAttention(dim, num_heads, patch_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)

    def forward(self, x, T, H, W):
        x = x + self.attn(self.norm1(x), T, H, W)
        return x + self.mlp(self.norm2(x))


class VisionTransformer21(nn.Module):
    def __init__(self, patch_size, tubelet_size, embed_dim, depth, num_heads):
        super().__init__()
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(3, embed_dim, (tubelet_size, patch_size, patch_size),
                                          (tubelet_size, patch_size, patch_size))
        self.patch_embed_img = nn.Module()
        self.patch_embed_img.proj = nn.Conv3d(3, embed_dim, (1, patch_size, patch_size), (1, patch_size, patch_size))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, patch_size) for _ in range(depth))
        self.norms_block = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(4))
        self.img_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.img_temporal_dim_size = 1

    def forward(self, x):
        _, _, T, H, W = x.shape
        is_img = T == self.img_temporal_dim_size
        T = T if is_img else T // self.tubelet_size
        H_patches, W_patches = H // self.patch_size, W // self.patch_size
        if is_img:
            x = self.patch_embed_img.proj(x).flatten(2).transpose(1, 2)
            x = x + self.img_mod_embed.repeat(x.shape[0], 1, 1)
        else:
            x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
            x = x + self.video_mod_embed.repeat(x.shape[0], 1, 1)
        for blk in self.blocks:
            x = blk(x, T, H_patches, W_patches)
        return self.norms_block[-1](x)
