"""Small shared building blocks: RMSNorm and half-split (non-interleaved) rotary embeddings.

RoPE here rotates dimension i with dimension i + D/2 ("half-split", the layout of GPT-NeoX/Llama and
of DeepSeek-V3.2's indexer). The interleaved variant (pairs 2i, 2i+1) is a known bug source for the
V3.2 indexer; this project uses half-split everywhere, also in MLA (V3's reference MLA interleaves:
for a model trained from scratch the choice is a fixed permutation of the rope dims and is harmless).
Plain RoPE: no YaRN context extension.
"""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in fp32 and cast back to x's dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation tables for half-split RoPE.

    positions: (B, T) integer positions. Returns cos, sin: (B, T, dim // 2) fp32, where entry i is
    for frequency theta^(-2i/dim), applied to the pair (i, i + dim/2).
    """
    half = dim // 2
    inv_freq = theta ** (-torch.arange(half, device=positions.device, dtype=torch.float32) * 2.0 / dim)
    angles = positions.float().unsqueeze(-1) * inv_freq  # (B, T, half)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE: with x = [x1, x2] (each D/2), return [x1 cos - x2 sin, x2 cos + x1 sin].

    x: (..., D); cos/sin: broadcastable to (..., D/2) (e.g. (B, T, 1, D/2) for x of (B, T, H, D)).
    Computed in fp32, returned in x's dtype.
    """
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
