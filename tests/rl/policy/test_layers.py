"""RMSNorm and half-split RoPE: hand-computed values; the interleaved variant must not pass."""
from __future__ import annotations

import math

import torch

from rl.policy.layers import RMSNorm, apply_rope, rope_cos_sin


def test_rmsnorm_hand_value() -> None:
    norm = RMSNorm(2, eps=0.0)
    y = norm(torch.tensor([[3.0, 4.0]]))
    r = math.sqrt((9 + 16) / 2)
    torch.testing.assert_close(y, torch.tensor([[3 / r, 4 / r]]))


def test_rope_tables_hand_value() -> None:
    cos, sin = rope_cos_sin(torch.tensor([[0, 2]]), dim=4, theta=100.0)
    # inv_freq = 100^(-0/4), 100^(-2/4) = 1, 0.1
    torch.testing.assert_close(cos[0, 1], torch.tensor([math.cos(2.0), math.cos(0.2)]))
    torch.testing.assert_close(sin[0, 0], torch.zeros(2))


def test_rope_is_half_split_not_interleaved() -> None:
    x = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])  # (B=1, T=1, D=4)
    cos, sin = rope_cos_sin(torch.tensor([[1]]), dim=4, theta=100.0)
    a0, a1 = 1.0, 0.1
    y = apply_rope(x, cos, sin)[0, 0]
    # half-split: pairs (0, 2) at freq a0 and (1, 3) at freq a1
    half_split = torch.tensor([
        1 * math.cos(a0) - 3 * math.sin(a0), 2 * math.cos(a1) - 4 * math.sin(a1),
        3 * math.cos(a0) + 1 * math.sin(a0), 4 * math.cos(a1) + 2 * math.sin(a1),
    ])
    # interleaved: pairs (0, 1) at freq a0 and (2, 3) at freq a1
    interleaved = torch.tensor([
        1 * math.cos(a0) - 2 * math.sin(a0), 2 * math.cos(a0) + 1 * math.sin(a0),
        3 * math.cos(a1) - 4 * math.sin(a1), 4 * math.cos(a1) + 3 * math.sin(a1),
    ])
    torch.testing.assert_close(y, half_split)
    assert (y - interleaved).abs().max() > 0.1


def test_rope_dot_product_depends_only_on_offset() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 8, generator=g), torch.randn(1, 1, 8, generator=g)

    def dot(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 8, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 8, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(dot(7, 3), dot(107, 103), rtol=1e-4, atol=1e-5)
