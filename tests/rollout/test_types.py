"""Trajectory helpers: the bit-packed sampling mask round-trips exactly."""
from __future__ import annotations

import torch

from rollout.types import Trajectory, pack_mask, unpack_mask


def test_pack_hand_value() -> None:
    mask = torch.tensor([True, False, True, True, False, False, False, False, True])
    packed = pack_mask(mask)
    assert packed.tolist() == [1 + 4 + 8, 1]  # bits 0, 2, 3 in byte 0; bit 8 -> byte 1, bit 0
    assert torch.equal(unpack_mask(packed, 9), mask)


def test_pack_round_trip_random() -> None:
    g = torch.Generator().manual_seed(0)
    for v in (1, 7, 8, 595, 1024):
        mask = torch.rand(3, 5, v, generator=g) < 0.3
        packed = pack_mask(mask)
        assert packed.shape == (3, 5, (v + 7) // 8) and packed.dtype == torch.uint8
        assert torch.equal(unpack_mask(packed, v), mask)


def test_num_sampled() -> None:
    t = Trajectory(tokens=torch.arange(5), prompt_len=2, loss_mask=torch.tensor([0, 0, 1, 1, 0]).bool(),
                   logprobs=torch.zeros(5), completion="x", finish_reason="stop", weight_version=0)
    assert t.num_sampled == 2
