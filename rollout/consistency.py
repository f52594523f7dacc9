"""Sampler/trainer consistency: teacher-forced replay of trajectories and the log-prob mismatch metric.

`replay_batch` collates trajectories into the inputs of one teacher-forced forward of
`DSAForCausalLM` that replays what the sampler did: right padding (positions 0..L-1, so the
recorded trajectory-relative DSA selections are slot indices as they are), the recorded MoE routes
(`expert_routes=`), the recorded selections (`topk_indices=`), and the unpacked kept sets.
`logprob_mismatch` runs that forward and compares `rl.losses.masked_log_probs` with the recorded
log-probabilities on every sampled token: the gap between pi_old as recorded and pi_old as the
trainer recomputes it (fp32, same weights: ~1e-6; larger means the two code paths disagree).

Padding rows of the replay carry valid dummy routes (experts 0..k-1) and selections ([0, -1, ...]),
so no padding query attends to nothing (which would put NaN into the batch).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rollout.types import Trajectory, unpack_mask


@dataclass
class ReplayBatch:
    """Inputs of one teacher-forced forward (B trajectories, T = longest length)."""

    input_ids: torch.Tensor
    """(B, T) int64, right-padded."""
    attention_mask: torch.Tensor
    """(B, T) int64, 1 on real tokens."""
    loss_mask: torch.Tensor
    """(B, T) bool: sampled tokens."""
    logprobs: torch.Tensor
    """(B, T) fp32 recorded sampler log-probs (0 elsewhere)."""
    sampling_mask: torch.Tensor | None
    """(B, T, V) bool kept sets (all True for trajectories without one, empty on padding), or None
    when no trajectory has one."""
    expert_routes: tuple[torch.Tensor, ...] | None
    """Per MoE layer (B, T, top_k) int64, or None when not every trajectory has routes."""
    topk_indices: tuple[torch.Tensor, ...] | None
    """Per layer (B, T, index_topk) int64 (-1 padded), or None when not every trajectory has them."""


def replay_batch(trajs: Sequence[Trajectory], vocab_size: int, pad_id: int = 0,
                 device: torch.device | str | None = None) -> ReplayBatch:
    """Collate trajectories for a teacher-forced replay forward (see the module docstring)."""
    B, T = len(trajs), max(len(t.tokens) for t in trajs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    attn = torch.zeros(B, T, dtype=torch.long)
    loss = torch.zeros(B, T, dtype=torch.bool)
    lps = torch.zeros(B, T)
    any_mask = any(t.sampling_mask is not None for t in trajs)
    keep = torch.zeros(B, T, vocab_size, dtype=torch.bool) if any_mask else None
    routes = sels = None
    if all(t.expert_routes is not None for t in trajs):
        _, n_moe, k = trajs[0].expert_routes.shape
        routes = torch.arange(k).expand(B, T, n_moe, k).clone()  # (B, T, n_moe, k) dummy experts
    if all(t.topk_indices is not None for t in trajs):
        _, n_layers, kk = trajs[0].topk_indices.shape
        sels = torch.full((B, T, n_layers, kk), -1, dtype=torch.long)
        sels[..., 0] = 0  # padding queries attend to position 0
    for b, t in enumerate(trajs):
        L = len(t.tokens)
        ids[b, :L] = t.tokens
        attn[b, :L] = 1
        loss[b, :L] = t.loss_mask
        lps[b, :L] = t.logprobs
        if keep is not None:
            keep[b, :L] = True if t.sampling_mask is None else unpack_mask(t.sampling_mask, vocab_size)
        if routes is not None:
            routes[b, :L] = t.expert_routes.long()
        if sels is not None:
            sels[b, :L] = t.topk_indices.long()
    dev = device or "cpu"
    return ReplayBatch(
        input_ids=ids.to(dev), attention_mask=attn.to(dev), loss_mask=loss.to(dev), logprobs=lps.to(dev),
        sampling_mask=keep.to(dev) if keep is not None else None,
        expert_routes=tuple(routes[:, :, i].to(dev) for i in range(routes.shape[2])) if routes is not None else None,
        topk_indices=tuple(sels[:, :, i].to(dev) for i in range(sels.shape[2])) if sels is not None else None,
    )


@dataclass
class Mismatch:
    """|recorded - recomputed| log-prob over the sampled tokens."""

    max_abs: float
    mean_abs: float
    num_tokens: int


def recomputed_logprobs(model, batch: ReplayBatch, temperature: float) -> torch.Tensor:
    """(B, T) fp32 log-probs of each token under the model with the batch's replay (0 at t = 0)."""
    from rl.policy.logprobs import masked_log_probs

    out = model(batch.input_ids, attention_mask=batch.attention_mask, use_cache=False,
                expert_routes=batch.expert_routes, topk_indices=batch.topk_indices)
    mask = batch.sampling_mask[:, 1:] if batch.sampling_mask is not None else None
    lp = masked_log_probs(out.logits[:, :-1], batch.input_ids[:, 1:], mask, temperature=temperature)
    return torch.nn.functional.pad(lp, (1, 0))


def logprob_mismatch(model, trajs: Sequence[Trajectory], *, temperature: float, batch_size: int = 16) -> Mismatch:
    """Teacher-force `trajs` through `model` and compare with the recorded log-probs.

    Uses the recorded kept sets, routes and selections where the trajectories have them.
    temperature: the sampler's. Returns max and mean |difference| over every sampled token.
    """
    dev = next(model.parameters()).device
    vocab = model.config.vocab_size
    worst, total, count = 0.0, 0.0, 0
    with torch.no_grad():
        for i in range(0, len(trajs), batch_size):
            batch = replay_batch(trajs[i: i + batch_size], vocab, device=dev)
            diff = (recomputed_logprobs(model, batch, temperature) - batch.logprobs).abs()[batch.loss_mask]
            if diff.numel():
                worst = max(worst, float(diff.max()))
                total += float(diff.sum())
                count += diff.numel()
    return Mismatch(max_abs=worst, mean_abs=total / max(count, 1), num_tokens=count)
