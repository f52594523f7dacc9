"""Log-probabilities and entropy of a policy's logits under the Keep Sampling Mask: pure tensor
functions shared by the sampler's side (the rollout consistency check) and the trainer's loss
(`rl.losses`), so both compute pi_old and pi_theta with one rule.

Conventions: B sequences (rows) of T positions; no function here calls ``.item()``.
"""
from __future__ import annotations

import torch
from torch import Tensor


def _restricted_logits(logits: Tensor, sampling_mask: Tensor | None, temperature: float
                       ) -> tuple[Tensor, Tensor | None]:
    """fp32 ``logits / temperature`` restricted to the kept set, and the kept-entry mask or None.

    Dense bool mask: returns ``(B, T, V)`` with dropped entries set to the most negative finite
    float (not -inf: an empty row then stays finite, and ``0 * x`` stays 0). Kept-ids form: returns
    the gathered ``(B, T, K)`` logits of the kept ids and the ``(B, T, K)`` validity mask.
    """
    if sampling_mask is None:
        x = logits.to(torch.float32)  # no copy for fp32 logits at temperature 1
        return (x if temperature == 1.0 else x / temperature), None
    if sampling_mask.dtype == torch.bool:
        x = logits.to(torch.float32, copy=True)  # the one (B, T, V) float copy; ops below in place
        if temperature != 1.0:
            x.div_(temperature)
        x.masked_fill_(~sampling_mask, torch.finfo(torch.float32).min)
        return x, None
    valid = sampling_mask >= 0  # (B, T, K)
    x = logits.gather(-1, sampling_mask.clamp_min(0)).to(torch.float32) / temperature  # (B, T, K)
    return x.masked_fill(~valid, torch.finfo(torch.float32).min), valid


def masked_log_probs(logits: Tensor, token_ids: Tensor, sampling_mask: Tensor | None = None, *,
                     temperature: float) -> Tensor:
    """Log-probabilities ``(B, T)`` (fp32) of the taken tokens under the sampler's distribution.

    The distribution is ``softmax(logits / temperature)`` restricted to the kept set and
    renormalised (Keep Sampling Mask), i.e. ``x_tok - logsumexp_{v kept} x_v`` with
    ``x = logits / temperature``; this must be the distribution whose log-probs the rollout engine
    recorded as pi_old.

    Args:
        logits: ``(B, T, V)``, any float dtype; position t scores ``token_ids[:, t]``.
        token_ids: ``(B, T)`` int64 taken tokens.
        sampling_mask: the kept set per position, in one of three forms:
            * None: the full vocabulary (no top-p / top-k);
            * bool, broadcastable to ``(B, T, V)``, True = kept;
            * int64 ``(B, T, K)`` kept token ids, right-padded with -1 (the compact form for top-k
              or a small nucleus: then no ``(B, T, V)`` tensor is made at all).
        temperature: the sampler's temperature (> 0).

    Returns:
        ``(B, T)`` fp32. A position whose kept set is empty (padding, prompt) gets 0; a taken
        token outside a non-empty kept set gets -inf (the rollout record is inconsistent).

    Memory kept for backward, beyond the logits: dense mask, one fp32 ``(B, T, V)`` copy plus the
    inverted bool mask (5 bytes per logit); kept ids, only ``(B, T, K)`` tensors; no mask, nothing
    for fp32 logits at temperature 1, else one fp32 copy.
    """
    x, valid = _restricted_logits(logits, sampling_mask, temperature)
    idx = token_ids.unsqueeze(-1)  # (B, T, 1)
    if sampling_mask is None:
        return x.gather(-1, idx).squeeze(-1) - torch.logsumexp(x, dim=-1)
    if valid is None:  # dense bool mask
        keep = sampling_mask.expand(logits.shape)  # (B, T, V) view, no copy
        in_set = keep.gather(-1, idx).squeeze(-1)  # (B, T)
        nonempty = keep.any(dim=-1)
        taken = x.gather(-1, idx).squeeze(-1)  # the true logit wherever in_set
    else:  # kept ids
        in_set = ((sampling_mask == idx) & valid).any(dim=-1)  # (B, T)
        nonempty = valid.any(dim=-1)
        taken = logits.gather(-1, idx).squeeze(-1).to(torch.float32) / temperature
    logp = taken - torch.logsumexp(x, dim=-1)  # (B, T)
    outside = torch.where(nonempty, float("-inf"), 0.0).to(logp.dtype)
    return torch.where(in_set, logp, outside)


def entropy_from_logits(logits: Tensor, sampling_mask: Tensor | None = None, *,
                        temperature: float) -> Tensor:
    """Entropy ``(B, T)`` (fp32, nats) of the sampler's distribution at each position.

    Same distribution and ``sampling_mask`` forms as :func:`masked_log_probs`; empty kept sets
    give 0. Differentiable, but meant as a metric: call it under ``torch.no_grad()`` to avoid
    keeping two more ``(B, T, V)`` tensors for backward.
    """
    x, valid = _restricted_logits(logits, sampling_mask, temperature)
    logq = torch.log_softmax(x, dim=-1)  # dropped entries: finite, with probability exactly 0
    ent = -(logq.exp() * logq).sum(dim=-1)  # (B, T)
    if sampling_mask is None:
        return ent
    nonempty = sampling_mask.any(dim=-1) if valid is None else valid.any(dim=-1)
    return torch.where(nonempty, ent, 0.0)
