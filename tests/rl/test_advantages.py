"""rl.advantages: group-relative advantages against hand-computed values and a plain loop."""
from __future__ import annotations

import math

import pytest
import torch

from rl.advantages import (
    ADVANTAGES,
    broadcast_to_tokens,
    get_advantage,
    grpo_advantages,
    register_advantage,
)


def test_registry() -> None:
    assert "grpo" in ADVANTAGES.names()
    assert get_advantage("grpo") is grpo_advantages
    with pytest.raises(ValueError, match="already registered"):
        register_advantage("grpo")(grpo_advantages)
    with pytest.raises(KeyError, match="registered: .*grpo"):
        get_advantage("gae")


def test_grpo_hand_values_no_std() -> None:
    # B=2 prompts x G=4 samples, prompt-major: group means 0.25 and 5.
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])
    groups = torch.arange(2).repeat_interleave(4)
    adv = grpo_advantages(rewards, groups, scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([0.75, -0.25, -0.25, -0.25, -3.0, -1.0, 1.0, 3.0]))


def test_grpo_hand_values_std() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])
    groups = torch.arange(2).repeat_interleave(4)
    adv = grpo_advantages(rewards, groups, scale_by_std=True, eps=0.0)
    # population stds: group 0: sqrt(3/16) = 0.4330; group 1: sqrt((9+1+1+9)/4) = sqrt(5)
    s0, s1 = math.sqrt(3 / 16), math.sqrt(5.0)
    expected = torch.tensor([0.75 / s0, -0.25 / s0, -0.25 / s0, -0.25 / s0,
                             -3 / s1, -1 / s1, 1 / s1, 3 / s1])
    torch.testing.assert_close(adv, expected)


def test_grpo_equal_rewards_and_singleton_groups_are_zero() -> None:
    rewards = torch.tensor([1.0, 1.0, 1.0, 5.0])
    groups = torch.tensor([0, 0, 0, 9])
    for scale in (False, True):
        adv = grpo_advantages(rewards, groups, scale_by_std=scale)
        assert torch.equal(adv, torch.zeros(4))


def test_grpo_unsorted_ragged_groups_match_loop() -> None:
    g = torch.Generator().manual_seed(0)
    groups = torch.tensor([7, 2, 7, 5, 2, 2, 7, 5, 11])
    rewards = torch.randn(9, generator=g)
    for scale in (False, True):
        adv = grpo_advantages(rewards, groups, scale_by_std=scale, eps=1e-6)
        for i in range(9):
            same = [rewards[j].item() for j in range(9) if groups[j] == groups[i]]
            mean = sum(same) / len(same)
            expected = rewards[i].item() - mean
            if scale:
                std = math.sqrt(sum((x - mean) ** 2 for x in same) / len(same))
                expected /= std + 1e-6
            assert adv[i].item() == pytest.approx(expected, abs=1e-5)


def test_grpo_int_rewards_detached_and_shape_checked() -> None:
    adv = grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]), scale_by_std=False)
    assert adv.dtype == torch.float32 and adv.tolist() == [0.5, -0.5]
    r = torch.tensor([1.0, 2.0], requires_grad=True)
    assert not grpo_advantages(r, torch.tensor([0, 0]), scale_by_std=True).requires_grad
    with pytest.raises(ValueError, match=r"must both be \(N,\)"):
        grpo_advantages(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long), scale_by_std=False)


def test_broadcast_to_tokens() -> None:
    adv = torch.tensor([2.0, -1.0])
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    assert broadcast_to_tokens(adv, mask).tolist() == [[0.0, 2.0, 2.0], [-1.0, 0.0, 0.0]]
