"""GRPO policy loss (DeepSeek-V3.2 variant), loss aggregations and off-policy sequence masking:
pure tensor functions, registries by name (log-probabilities under the Keep Sampling Mask:
:mod:`rl.policy.logprobs`).

The objective maximised (V3.2, section 3 of docs/deepseek-v32.md) is

    J = 1/G sum_i 1/|o_i| sum_t [ min(r A_i, clip(r, 1 - clip_low, 1 + clip_high) A_i) M_i - beta KL_t ]

with ``r = pi_theta / pi_old`` per token, ``M_i`` the off-policy sequence mask and ``KL_t`` one of the
estimators in :mod:`rl.kl` (``unbiased_k3`` in V3.2). The loss is ``-J`` per token, reduced by a
registered aggregation. Departures from the paper: separate low / high clip bounds (V3.2 has one
eps; equal bounds give it back); the reduction is selectable (V3.2's is ``seq_mean_token_mean``);
``M_i`` multiplies only the policy-gradient term, as in the formula, so a masked sequence still
feels the KL penalty and still counts in the 1/G.

Conventions: B sequences (rows) of T positions; ``token_mask (B, T)`` is 1 on tokens that are
trained on (sampled by the policy) and 0 on prompt, tool output and padding. Values at masked
positions are never read: they are replaced by 0 before any arithmetic, so an inf or nan there
cannot leak into the loss or its gradient. No function here calls ``.item()`` or otherwise waits
for the device.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from rl.kl import get_kl
from rl.registry import Registry

# --------------------------------------------------------------------------------------------------
# Aggregations: how per-token losses (B, T) become one scalar


@dataclass(frozen=True)
class Aggregation:
    """A reduction ``loss = total(values, mask, norm_constant) / units``.

    Splitting the sum from its normaliser lets a trainer that cuts a mini-batch into micro-batches
    pass the mini-batch's ``num_units`` (the sum of ``units`` over its micro-batches) so that the
    accumulated gradient equals the full mini-batch's, whatever the ragged token counts.
    """

    total: Callable[[Tensor, Tensor, float], Tensor]
    """``(values (B, T), mask (B, T) float, norm_constant) -> ()`` un-normalised sum."""
    units: Callable[[Tensor], Tensor]
    """``mask (B, T) float -> ()`` number of normalisation units in this batch."""


AGGREGATIONS: Registry[Aggregation] = Registry("loss aggregation")


def register_aggregation(name: str):
    """Decorator-style registration of an :class:`Aggregation` (a duplicate name raises)."""
    return AGGREGATIONS.register(name)


def get_aggregation(name: str) -> Aggregation:
    """The :class:`Aggregation` registered as ``name``."""
    return AGGREGATIONS.get(name)


def _token_count(mask: Tensor) -> Tensor:
    return mask.sum()


def _nonempty_rows(mask: Tensor) -> Tensor:
    return (mask.sum(dim=-1) > 0).to(mask.dtype).sum()


def _token_mean_total(values: Tensor, mask: Tensor, norm_constant: float) -> Tensor:
    return (values * mask).sum()


def _seq_mean_token_mean_total(values: Tensor, mask: Tensor, norm_constant: float) -> Tensor:
    return ((values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1)).sum()


def _seq_sum_total(values: Tensor, mask: Tensor, norm_constant: float) -> Tensor:
    return (values * mask).sum() / norm_constant


# sum_{i,t} m l / sum_{i,t} m: every trained token of the batch weighs the same (DAPO).
register_aggregation("token_mean")(Aggregation(total=_token_mean_total, units=_token_count))
# 1/G' sum_i 1/|o_i| sum_t m l (V3.2, GRPO); G' counts the rows with at least one trained token.
register_aggregation("seq_mean_token_mean")(Aggregation(total=_seq_mean_token_mean_total,
                                                        units=_nonempty_rows))
# 1/(G' C) sum_i sum_t m l (Dr. GRPO), C = norm_constant: one fixed length for every batch, such as
# the generation budget (C = 1 gives "sum over tokens, mean over sequences").
register_aggregation("seq_sum")(Aggregation(total=_seq_sum_total, units=_nonempty_rows))


def aggregate(name: str, values: Tensor, mask: Tensor, *, norm_constant: float,
              num_units: Tensor | float | None = None) -> Tensor:
    """Reduce per-token ``values (B, T)`` over ``mask (B, T)`` with the aggregation ``name``.

    ``norm_constant`` is C of ``seq_sum`` (ignored by the other modes). ``num_units``: the
    normaliser, default this batch's own ``units`` (clamped to >= 1 so an empty batch gives 0).
    """
    agg = get_aggregation(name)
    mask = mask.to(values.dtype)
    units = agg.units(mask).clamp_min(1) if num_units is None else num_units
    return agg.total(values, mask, norm_constant) / units


# --------------------------------------------------------------------------------------------------
# Off-policy sequence masking


def off_policy_sequence_mask(logp: Tensor, old_logp: Tensor, advantages: Tensor, token_mask: Tensor,
                             delta: float) -> Tensor:
    """V3.2's M_i ``(B,)`` float: 0 where ``A_i < 0`` and ``mean_t log(pi_old / pi_theta) > delta``.

    Args:
        logp: ``(B, T)`` log pi_theta of the taken tokens (used detached: the mask is a constant).
        old_logp: ``(B, T)`` log pi_old as returned by the rollout engine (so the mask catches both
            staleness and inference/training mismatch).
        advantages: ``(B,)`` per-sequence advantages. Sequences with ``A_i >= 0`` are never masked.
        token_mask: ``(B, T)``; the mean runs over each sequence's own trained tokens (an empty
            sequence has mean 0).
        delta: threshold; ``float("inf")`` disables the mask.

    Returns:
        ``(B,)`` in logp's dtype, 1 = keep, 0 = drop the policy-gradient term of the sequence.
    """
    valid = token_mask.bool()
    diff = torch.where(valid, old_logp.detach() - logp.detach(), 0.0)  # (B, T)
    mean = diff.sum(dim=-1) / valid.sum(dim=-1).clamp_min(1)  # (B,)
    drop = (advantages.detach() < 0) & (mean > delta)
    return (~drop).to(logp.dtype)


# --------------------------------------------------------------------------------------------------
# Policy losses


class PolicyLoss(Protocol):
    """A policy loss. A loss whose value and gradient are exactly 0 for a sequence with advantage 0
    when ``beta == 0`` may say so with the attribute ``zero_at_zero_advantage = True``: the trainer
    then skips the forward and backward of such sequences (GRPO groups whose rewards are all equal)."""

    def __call__(self, logp: Tensor, old_logp: Tensor, advantages: Tensor, token_mask: Tensor, *,
                 ref_logp: Tensor | None, seq_mask: Tensor | None, clip_low: float,
                 clip_high: float, beta: float, kl_estimator: str, aggregation: str,
                 norm_constant: float, num_units: Tensor | float | None = None,
                 entropy: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        ...


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")


def register_policy_loss(name: str):
    """Decorator registering a policy loss under ``name`` (a duplicate name raises)."""
    return POLICY_LOSSES.register(name)


def get_policy_loss(name: str) -> PolicyLoss:
    """The policy loss registered as ``name``."""
    return POLICY_LOSSES.get(name)


def _masked_mean(x: Tensor, valid: Tensor, n: Tensor) -> Tensor:
    return torch.where(valid, x, 0.0).sum() / n


@register_policy_loss("clipped")
@register_policy_loss("grpo")
def grpo_policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, token_mask: Tensor, *,
                     ref_logp: Tensor | None, seq_mask: Tensor | None, clip_low: float,
                     clip_high: float, beta: float, kl_estimator: str, aggregation: str,
                     norm_constant: float, num_units: Tensor | float | None = None,
                     entropy: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped-ratio GRPO loss with a KL penalty (the negated V3.2 objective; "clipped" = alias).

    Per trained token: ``-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) * M_i + beta * KL_t``,
    ``r = exp(logp - old_logp)``, reduced by the aggregation ``aggregation``.

    Args:
        logp: ``(B, T)`` log pi_theta of the taken tokens (carries the gradient).
        old_logp: ``(B, T)`` log pi_old (the rollout engine's), detached.
        advantages: ``(B,)`` per sequence or ``(B, T)`` per token, detached.
        token_mask: ``(B, T)`` bool or 0/1 float: which tokens are trained on.
        ref_logp: ``(B, T)`` log pi_ref, or None (then ``beta`` must be 0 and no KL is computed).
        seq_mask: ``(B,)`` 0/1 off-policy sequence mask M_i (:func:`off_policy_sequence_mask`), or
            None for all ones.
        clip_low, clip_high: the ratio is clipped to ``[1 - clip_low, 1 + clip_high]``.
        beta: KL coefficient; the KL term is added only when ``beta != 0``.
        kl_estimator: name in :mod:`rl.kl` (``k1``, ``k2``, ``k3``, ``unbiased_k3``).
        aggregation: name of an :class:`Aggregation` (``seq_mean_token_mean``, ``token_mean``,
            ``seq_sum``); ``norm_constant`` and ``num_units`` as in :func:`aggregate`.
        entropy: optional ``(B, T)`` per-token entropy, only reported.

    Returns:
        ``(loss, metrics)``: the scalar loss, and detached scalar tensors. Token statistics are
        means over this batch's trained tokens, whatever the aggregation: ``pg_loss`` (the policy
        term, aggregated like the loss), ``ratio_mean/min/max`` (nan when no token is trained),
        ``clip_frac_low`` (tokens with A < 0 and r < 1 - clip_low: the clip zeroes their gradient),
        ``clip_frac_high`` (A > 0 and r > 1 + clip_high), ``masked_frac`` (fraction of non-empty
        sequences with M_i = 0), and when given ``kl`` (token mean of the estimator, with or
        without beta) and ``entropy``.
    """
    if ref_logp is None and beta != 0.0:
        raise ValueError(f"beta={beta} needs ref_logp (set kl_coef to 0 to run without a reference)")
    valid = token_mask.bool()  # (B, T)
    mask = valid.to(logp.dtype)
    # Zero every input at untrained positions first (where() blocks both inf values and gradients).
    logp = torch.where(valid, logp, 0.0)
    old_logp = torch.where(valid, old_logp.detach(), 0.0)
    adv = advantages.detach()
    adv = adv[:, None] if adv.dim() == 1 else adv  # (B, 1) or (B, T)

    ratio = torch.exp(logp - old_logp)  # (B, T)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = -torch.minimum(ratio * adv, clipped * adv)  # (B, T)
    if seq_mask is not None:
        pg = pg * seq_mask.detach().to(pg.dtype)[:, None]
    per_token = pg
    kl = None
    if ref_logp is not None:
        kl = get_kl(kl_estimator)(logp, torch.where(valid, ref_logp.detach(), 0.0), old_logp)
        if beta != 0.0:
            per_token = pg + beta * kl
    loss = aggregate(aggregation, per_token, mask, norm_constant=norm_constant, num_units=num_units)

    with torch.no_grad():
        n_tok = mask.sum().clamp_min(1)
        any_tok = valid.any()
        adv_tok = adv.expand_as(ratio)
        nan = torch.full((), float("nan"), dtype=ratio.dtype, device=ratio.device)
        metrics = {
            "pg_loss": aggregate(aggregation, pg.detach(), mask, norm_constant=norm_constant,
                                 num_units=num_units),
            "ratio_mean": _masked_mean(ratio, valid, n_tok),
            "ratio_min": torch.where(any_tok, torch.where(valid, ratio, float("inf")).amin(), nan),
            "ratio_max": torch.where(any_tok, torch.where(valid, ratio, float("-inf")).amax(), nan),
            "clip_frac_low": (valid & (adv_tok < 0) & (ratio < 1.0 - clip_low)).sum() / n_tok,
            "clip_frac_high": (valid & (adv_tok > 0) & (ratio > 1.0 + clip_high)).sum() / n_tok,
        }
        rows = valid.any(dim=-1)  # (B,)
        if seq_mask is None:
            metrics["masked_frac"] = torch.zeros((), dtype=ratio.dtype, device=ratio.device)
        else:
            dropped = rows & (seq_mask.detach() == 0)
            metrics["masked_frac"] = dropped.sum() / rows.sum().clamp_min(1)
        if kl is not None:
            metrics["kl"] = _masked_mean(kl.detach(), valid, n_tok)
        if entropy is not None:
            metrics["entropy"] = _masked_mean(entropy.detach(), valid, n_tok)
    return loss, metrics


# -min(r A, clip(r) A) M is 0 with a 0 gradient when A = 0 (and beta = 0: no KL term).
grpo_policy_loss.zero_at_zero_advantage = True  # type: ignore[attr-defined]
