"""Small shared building blocks: RMSNorm and half-split (non-interleaved) rotary embeddings.

RoPE here rotates dimension i with dimension i + D/2 ("half-split", the layout of GPT-NeoX/Llama and
of DeepSeek-V3.2's indexer). The interleaved variant (pairs 2i, 2i+1) is a known bug source for the
V3.2 indexer; this project uses half-split everywhere, also in MLA (V3's reference MLA interleaves:
for a model trained from scratch the choice is a fixed permutation of the rope dims and is harmless).
YaRN (DeepSeek-V3/V3.2's context extension) is optional: `rope_cos_sin(..., yarn=...)` blends
interpolated and extrapolated frequencies and multiplies cos/sin by YaRN's attention factor;
`yarn_softmax_scale` gives MLA's extra softmax-scale correction. Without `yarn` RoPE is plain.
"""
from __future__ import annotations

import math
from typing import Any

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


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction 0.1 * mscale * ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_softmax_scale(yarn: dict[str, Any] | None, scale: float) -> float:
    """MLA's softmax scale under YaRN: scale * mscale(factor, mscale_all_dim)^2 (DeepSeek-V3's rule: the
    non-rotary dims are corrected too). Unchanged without YaRN or with mscale_all_dim = 0."""
    if not yarn or not yarn.get("mscale_all_dim"):
        return scale
    m = yarn_mscale(yarn["factor"], yarn["mscale_all_dim"])
    return scale * m * m


def _yarn_inv_freq(dim: int, theta: float, yarn: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, float]:
    """YaRN frequencies (dim // 2,) and the cos/sin attention factor.

    Pair i has wavelength 2 pi / theta^(-2i/dim); pairs that rotate more than beta_fast times within the
    original context keep their frequency, pairs that rotate fewer than beta_slow times are divided by
    `factor`, with a linear ramp between (the correction range is floored/ceiled unless truncate=False)."""
    factor = float(yarn["factor"])
    orig = float(yarn["original_max_position_embeddings"])
    beta_fast, beta_slow = float(yarn.get("beta_fast") or 32), float(yarn.get("beta_slow") or 1)

    def dim_of(rotations: float) -> float:  # the pair index whose wavelength fits `rotations` times in orig
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if yarn.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    half = dim // 2
    base = 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)  # (half,)
    ramp = ((torch.arange(half, device=device, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (keep the frequency), 0: interpolate (divide by factor)
    inv_freq = base / factor * (1 - keep) + base * keep
    attn = yarn.get("attention_factor")
    if attn is None:
        if yarn.get("mscale") and yarn.get("mscale_all_dim"):
            attn = yarn_mscale(factor, yarn["mscale"]) / yarn_mscale(factor, yarn["mscale_all_dim"])
        else:
            attn = yarn_mscale(factor)
    return inv_freq, float(attn)


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float,
                 yarn: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation tables for half-split RoPE.

    positions: (B, T) integer positions. Returns cos, sin: (B, T, dim // 2) fp32, where entry i is
    for frequency theta^(-2i/dim) (YaRN-corrected when `yarn` is given: keys factor,
    original_max_position_embeddings, beta_fast, beta_slow, mscale, mscale_all_dim, attention_factor,
    truncate), applied to the pair (i, i + dim/2). Under YaRN cos and sin carry its attention factor.
    """
    half = dim // 2
    if yarn:
        inv_freq, attn = _yarn_inv_freq(dim, theta, yarn, positions.device)
        angles = positions.float().unsqueeze(-1) * inv_freq  # (B, T, half)
        return angles.cos() * attn, angles.sin() * attn
    inv_freq = theta ** (-torch.arange(half, device=positions.device, dtype=torch.float32) * 2.0 / dim)
    angles = positions.float().unsqueeze(-1) * inv_freq  # (B, T, half)
    return angles.cos(), angles.sin()


def model_rope_tables(config: Any, positions: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor],
                                                                     tuple[torch.Tensor, torch.Tensor]]:
    """(MLA tables, indexer tables) of a `DSAConfig` for positions (B, T): MLA over qk_rope_head_dim
    dims, the indexer over its `index_rope_dim` dims, both with the config's YaRN (if any)."""
    yarn = config.rope_yarn
    return (rope_cos_sin(positions, config.qk_rope_head_dim, config.rope_theta, yarn),
            rope_cos_sin(positions, config.index_rope_dim, config.rope_theta, yarn))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE: with x = [x1, x2] (each D/2), return [x1 cos - x2 sin, x2 cos + x1 sin].

    x: (..., D); cos/sin: broadcastable to (..., D/2) (e.g. (B, T, 1, D/2) for x of (B, T, H, D)).
    Computed in fp32, returned in x's dtype.
    """
    half = x.shape[-1] // 2
    xf = x.float()
    x1, x2 = xf[..., :half], xf[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
