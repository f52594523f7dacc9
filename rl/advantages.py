"""Advantage estimators: pure tensor functions in a name registry.

Input form (one for every estimator): a flat batch of N sequence rewards ``rewards (N,)`` and a
group id per sequence ``group_ids (N,)`` (int64; equal ids = samples of the same prompt). Ids need
not be contiguous or sorted, and groups may have different sizes (e.g. when a failed sample was
dropped). A batch laid out as B prompts x G samples, prompt-major, has
``group_ids = torch.arange(B).repeat_interleave(G)``. Output: one advantage per sequence ``(N,)``;
:func:`broadcast_to_tokens` spreads it over a sequence's loss-masked tokens.

Departures from the paper: DeepSeek-V3.2 uses ``A_i = R_i - mean_j R_j`` with no division by the
std (as Dr. GRPO argues); ``scale_by_std=True`` restores DeepSeekMath's ``/ (std + eps)``. The std is
the population std of the group (divide by G, not G - 1), so it is defined for every group size; a
group of one sample, or of equal rewards, gets advantage 0.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from rl.registry import Registry


class AdvantageEstimator(Protocol):
    def __call__(self, rewards: Tensor, group_ids: Tensor, *, scale_by_std: bool, eps: float = ...) -> Tensor:
        ...


ADVANTAGES: Registry[AdvantageEstimator] = Registry("advantage estimator")


def register_advantage(name: str):
    """Decorator registering an advantage estimator under ``name`` (a duplicate name raises)."""
    return ADVANTAGES.register(name)


def get_advantage(name: str) -> AdvantageEstimator:
    """The advantage estimator registered as ``name``."""
    return ADVANTAGES.get(name)


def _group_index(group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Dense group index per sample ``(N,)`` in [0, K) and the size of each group ``(K,)``."""
    _, index, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    return index, counts


@register_advantage("grpo")
def grpo_advantages(rewards: Tensor, group_ids: Tensor, *, scale_by_std: bool, eps: float = 1e-6) -> Tensor:
    """Group-relative advantages ``A_i = R_i - mean_{j in g(i)} R_j`` (DeepSeek-V3.2).

    Args:
        rewards: ``(N,)`` scalar reward per sequence (integer rewards are promoted to float32).
        group_ids: ``(N,)`` integer id of the prompt each sequence answers.
        scale_by_std: also divide by ``std_g + eps`` (population std of the group), as in
            DeepSeekMath's GRPO. V3.2 does not.
        eps: keeps the division finite for groups whose rewards are all equal.

    Returns:
        ``(N,)`` advantages, in the rewards' float dtype, on the rewards' device. No gradient flows
        to the rewards (they are detached).
    """
    if rewards.dim() != 1 or group_ids.shape != rewards.shape:
        raise ValueError(f"rewards and group_ids must both be (N,); got {tuple(rewards.shape)} "
                         f"and {tuple(group_ids.shape)}")
    r = rewards.detach()
    if not r.is_floating_point():
        r = r.to(torch.float32)
    index, counts = _group_index(group_ids)  # (N,), (K,)
    counts = counts.to(r.dtype)
    sums = torch.zeros_like(counts).index_add_(0, index, r)  # (K,)
    centered = r - (sums / counts)[index]  # (N,)
    if not scale_by_std:
        return centered
    var = torch.zeros_like(counts).index_add_(0, index, centered * centered) / counts  # (K,)
    return centered / (var.sqrt()[index] + eps)


def broadcast_to_tokens(advantages: Tensor, token_mask: Tensor) -> Tensor:
    """Per-token advantages ``(N, T)``: ``advantages (N,)`` on loss-masked tokens, 0 elsewhere.

    ``token_mask`` is ``(N, T)``, bool or 0/1 float. The policy losses also accept ``(N,)``
    advantages directly; this is for logging or for estimators that want per-token values.
    """
    return torch.where(token_mask.bool(), advantages[:, None], advantages.new_zeros(()))  # (N, T)
