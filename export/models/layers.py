"""Transformer pieces shared by the JEPA encoder and predictors.

Attribute names (`qkv`, `proj`, `norm1`, `mlp.fc1` ...) follow the official facebookresearch code so its state
dicts load after stripping prefixes. Positions are float everywhere: the official V-JEPA 2 code feeds int64
positions into RoPE, which ONNX Runtime rejects.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# --------------------------------------------------------------------------------------------- sincos tables
def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim) as [sin | cos], frequencies 1/10000^(2i/dim) (MAE / I-JEPA)."""
    omega = np.arange(dim // 2, dtype=np.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """(H'*W', dim). I-JEPA quirk kept: the first half encodes the *column* index, the second half the row."""
    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    return np.concatenate([sincos_1d(dim // 2, gw), sincos_1d(dim // 2, gh)], axis=1)


def sincos_3d(dim: int, grid_t: int, grid_h: int, grid_w: int, uniform_power: bool = False) -> np.ndarray:
    """(T'*H'*W', dim), tokens in (t, h, w) order, features [t | h | w] (V-JEPA)."""
    gh, gt, gw = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_t, dtype=np.float64),
                             np.arange(grid_w, dtype=np.float64))  # each (T', H', W')
    if uniform_power:
        dt = dh = dw = int(math.ceil(dim / 6) * 2)
    else:
        dt, dh, dw = dim // 2, dim // 4, dim // 4
    emb = np.concatenate([sincos_1d(dt, gt), sincos_1d(dh, gh), sincos_1d(dw, gw)], axis=1)
    return emb[:, :dim]


def sincos_table(dim: int, grid: tuple[int, int, int], uniform_power: bool = False, video: bool = True
                 ) -> torch.Tensor:
    """(1, N, dim) float32 table for a (T', H', W') grid: 3-D for video models (even when T' == 1, as the official
    code does for a single tubelet), the I-JEPA 2-D table for image models."""
    t, h, w = grid
    table = sincos_3d(dim, t, h, w, uniform_power) if video else sincos_2d(dim, h, w)
    return torch.from_numpy(table).float().unsqueeze(0)


# --------------------------------------------------------------------------------------------------- RoPE
def grid_positions(ids: torch.Tensor, grid_h: int, grid_w: int) -> tuple[torch.Tensor, ...]:
    """Flat token ids -> float (frame, row, column) positions, as V-JEPA 2's `separate_positions`."""
    ids = ids.float()
    per_frame = float(grid_h * grid_w)
    t = torch.floor(ids / per_frame)
    rest = ids - per_frame * t
    h = torch.floor(rest / grid_w)
    w = rest - grid_w * h
    return t, h, w


def rope_rotate(x: torch.Tensor, pos: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate pairs of channels of x (B, nh, N, d) by angles pos (B|1, 1, N) * omega.

    Channels rotate in adjacent pairs (2i, 2i+1). V-JEPA 2 *tiles* the angle table ([f0..f_{d/2-1}, f0..f_{d/2-1}],
    `repeat(1,1,1,2)`), so pair i uses f_{2i mod d/2} for its first channel and f_{(2i+1) mod d/2} for its second;
    the released weights depend on that, so it is the default. V-JEPA 2.1 interleaves ([f0, f0, f1, f1, ...]).
    """
    d = x.shape[-1]
    omega = torch.arange(d // 2, dtype=x.dtype, device=x.device) / (d / 2.0)
    omega = 1.0 / 10000**omega  # (d/2,)
    freq = pos.unsqueeze(-1) * omega  # (B|1, 1, N, d/2)
    if interleaved:
        sin, cos = freq.sin().repeat_interleave(2, dim=-1), freq.cos().repeat_interleave(2, dim=-1)
    else:
        sin = torch.cat([freq.sin(), freq.sin()], dim=-1)  # (B|1, 1, N, d) tiled
        cos = torch.cat([freq.cos(), freq.cos()], dim=-1)
    pairs = x.unflatten(-1, (-1, 2))  # (B, nh, N, d/2, 2)
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)  # (B, nh, N, d)
    return x * cos + rotated * sin


RopeTables = tuple[torch.Tensor, torch.Tensor]  # (cos, signed sin), each (B|1, 1, N, head_dim)


def rope_frequencies(d: int) -> torch.Tensor:
    """(d/2,) float32 RoPE frequencies 1/10000^(2i/d) of a d-channel section, computed as `rope_rotate` does."""
    omega = torch.arange(d // 2, dtype=torch.float32) / (d / 2.0)
    return 1.0 / 10000**omega


def rope_3d_reference(x: torch.Tensor, pos: tuple[torch.Tensor, ...], interleaved: bool = False) -> torch.Tensor:
    """The official per-axis formulation: split each head into depth / height / width sections of 2*((d//3)//2)
    channels, rotate each by its own positions with `rope_rotate`, pass the remainder, concatenate. Kept as the
    reference `Rope3D` must equal; exported graphs use `Rope3D` (this form costs ~30 ONNX nodes per q or k)."""
    s = 2 * ((x.shape[-1] // 3) // 2)
    parts = [rope_rotate(x[..., i * s:(i + 1) * s], p, interleaved) for i, p in enumerate(pos)]
    if 3 * s < x.shape[-1]:
        parts.append(x[..., 3 * s:])
    return torch.cat(parts, dim=-1)


class Rope3D(nn.Module):
    """3-D RoPE: each head splits into depth / height / width sections of 2*((d//3)//2) channels; the rest pass.

    Same numbers as `rope_3d_reference`, in the form that exports lean. Per channel j the reference computes
    x_j * cos(p_a(j) * w_j) + r_j * sin(p_a(j) * w_j) with r = (-x_1, x_0, -x_3, x_2, ...) inside each section, so
    `tables` builds full-width (N, head_dim) cos / sin tables once per forward (axis a(j) and frequency w_j per
    channel in constant buffers; the unrotated remainder gets w = 0, i.e. cos 1, sin 0, and the pair's sign is
    folded into sin), and `forward` is one pair swap (two Slices and a Concat), two Mul and one Add for q and k
    together instead of per-axis Slice / Split / Neg / Concat in every layer. Each product and sum is the one the
    reference takes (negation is exact; adding sin 0 * x = 0 to x is exact), so torch results match it bit for bit.
    With a fixed token grid (encoder) the exporter folds the tables into two constants.
    """

    def __init__(self, head_dim: int, interleaved: bool = False):
        super().__init__()
        self.section = s = 2 * ((head_dim // 3) // 2)
        self.head_dim = head_dim
        self.interleaved = interleaved
        local = torch.arange(s)
        slot = local // 2 if interleaved else local % (s // 2)  # V-JEPA 2.1 [f0 f0 f1 f1 ..] / 2 tiles [f0 .. f0 ..]
        omega = torch.zeros(head_dim)
        omega[:3 * s] = rope_frequencies(s)[slot].repeat(3)
        axis = torch.zeros(head_dim, dtype=torch.long)
        axis[:3 * s] = torch.arange(3).repeat_interleave(s)
        swap = torch.arange(head_dim)
        swap[:3 * s] = swap[:3 * s] ^ 1  # (1, 0, 3, 2, ...): the pair partner of each rotated channel
        sign = torch.ones(head_dim)
        sign[:3 * s:2] = -1.0
        # Non-persistent: derived from the config, so state dicts stay the official ones.
        self.register_buffer("omega", omega, persistent=False)  # (hd,) frequency per channel, 0 for the remainder
        self.register_buffer("axis", axis, persistent=False)  # (hd,) 0 depth, 1 height, 2 width
        self.register_buffer("swap", swap, persistent=False)  # (hd,) gather index of the rotated partner
        self.register_buffer("sign", sign, persistent=False)  # (hd,) -1 on the first channel of each pair

    def tables(self, pos: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> RopeTables:
        """(depth, height, width) positions, each (B|1, 1, N) -> (cos, signed sin), each (B|1, 1, N, head_dim)."""
        angle = torch.stack(pos, dim=-1)[..., self.axis] * self.omega  # (B|1, 1, N, hd)
        return angle.cos(), angle.sin() * self.sign

    def forward(self, x: torch.Tensor, tables: RopeTables) -> torch.Tensor:
        """Rotate x (..., N, head_dim) by tables from `tables` (broadcast over the leading axes)."""
        cos, sin = tables
        if self.head_dim % 2:  # odd head (no official model has one): swap by index, one ONNX Gather(axis=-1)
            return x * cos + x.index_select(-1, self.swap) * sin
        # Swap every channel pair with two Slices and a Concat (remainder pairs too; their sin is 0): measured ~3x
        # faster in ONNX Runtime (CPU) than a Gather with a constant permutation on the innermost axis.
        pairs = x.unflatten(-1, (-1, 2))  # (..., N, hd/2, 2)
        return x * cos + torch.cat([pairs[..., 1:], pairs[..., :1]], dim=-1).flatten(-2) * sin


# ------------------------------------------------------------------------------------------------- blocks
class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection and optional 3-D RoPE."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, use_rope: bool = False,
                 rope_interleaved: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.rope = Rope3D(self.head_dim, rope_interleaved) if use_rope else None

    def forward(self, x: torch.Tensor, rope: RopeTables | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, C); rope: the model's `Rope3D.tables` (computed once per forward, shared by every block)."""
        B, N, C = x.shape
        qkv = self.qkv(x).unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4)  # (3, B, nh, N, hd)
        if self.rope is not None:
            qk = self.rope(qkv[:2], rope)  # q and k in one rotation: (2, B, nh, N, hd)
            q, k, v = qk[0], qk[1], qkv[2]
        else:
            q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, nh, N, hd)
        # softmax(q k^T * scale + bias) v. In torch, SDPA avoids materialising (B, nh, N, N) (4608-token clips).
        # For ONNX the same product is written out explicitly: the exporter's SDPA decomposition scales q and k
        # separately and transposes k through Shape / Slice / Concat / Reshape (~10 nodes per layer), while
        # MatMul(q, Transpose(k)) * scale is what ONNX Runtime fuses into one FusedMatMul (and TensorRT into its
        # attention kernel). Both compute the same attention; export parity checks ONNX against torch's SDPA.
        if torch.onnx.is_in_onnx_export():
            scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # (B, nh, N, N)
            if attn_bias is not None:
                scores = scores + attn_bias
            y = torch.matmul(scores.softmax(dim=-1), v)  # (B, nh, N, hd)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, scale=self.scale)  # (B, nh, N, hd)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as nn.GELU() in the official code
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if torch.onnx.is_in_onnx_export():
            # The exporter writes GELU as x * (0.5 * (1 + erf(x / sqrt 2))), a form ONNX Runtime does not fuse;
            # (x * 0.5) * (1 + erf(x / sqrt 2)) is its Gelu pattern (one kernel instead of Div, Erf, Add, 2 Mul).
            return self.fc2(h * 0.5 * (1.0 + torch.erf(h / math.sqrt(2.0))))
        return self.fc2(self.act(h))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool, use_rope: bool, eps: float,
                 rope_interleaved: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rope, rope_interleaved)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        # round, not int: a ratio inferred as fc1/width (6144/1408) times width can land a hair below the integer
        self.mlp = MLP(dim, round(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: RopeTables | None = None,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), rope, attn_bias)
        return x + self.mlp(self.norm2(x))
