"""SIGReg (LeJEPA, Balestriero & LeCun 2025): keep embeddings isotropic Gaussian, so they cannot collapse.

The embeddings are projected on random unit directions; on each direction the Epps-Pulley statistic compares the
empirical characteristic function with the standard normal's, exp(-t^2/2), weighted by a Gaussian window. The
loss is the mean statistic. With it, one encoder can produce both context and target latents (no EMA teacher, no
stop-gradient), and a collapsed (constant or low-rank) embedding is penalised directly.
"""

from __future__ import annotations

import torch


def sigreg(z: torch.Tensor, num_directions: int = 64, t_max: float = 3.0, num_t: int = 17,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Epps-Pulley isotropy statistic of z (N, D), averaged over random directions. 0 for N(0, I) samples."""
    n, d = z.shape
    directions = torch.randn(d, num_directions, generator=generator, device=z.device, dtype=z.dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)  # (D, M) unit columns
    proj = z @ directions  # (N, M)
    t = torch.linspace(0.0, t_max, num_t, device=z.device, dtype=z.dtype)  # symmetric: integrate t >= 0, double
    angle = proj.unsqueeze(-1) * t  # (N, M, T)
    real = torch.cos(angle).mean(0)  # (M, T) empirical characteristic function
    imag = torch.sin(angle).mean(0)
    gauss = torch.exp(-0.5 * t**2)  # the standard normal's CF, also the weighting window
    err = ((real - gauss) ** 2 + imag**2) * gauss  # (M, T)
    return 2.0 * torch.trapezoid(err, t, dim=-1).mean()


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred z (N, D): 1 when collapsed to a line, D at best."""
    s = torch.linalg.svdvals(z - z.mean(0, keepdim=True))
    p = s / s.sum().clamp_min(1e-12)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
