"""Collation of rollout trajectories into right-padded training tensors.

A :class:`~rollout.types.Trajectory` stores, per token t, the sampler's log-probability of
*producing* token t from tokens[:t] (and the kept set it was drawn from). The trainer predicts
token t + 1 from position t, so the batch is built already shifted:

    input_ids[i, t]  = tokens[t]          t = 0 .. L-2   (the last token is never an input)
    target_ids[i, t] = tokens[t + 1]
    loss_mask[i, t]  = loss_mask[t + 1]   old_logprobs[i, t] = logprobs[t + 1]
    sampling_mask[i, t] = kept set of token t + 1
    expert_routes[i, t], topk_indices[i, t] = what the sampler computed with token t as input

so ``logits (B, N, V)`` of a forward over ``input_ids`` line up with every other (B, N) tensor,
N = max(L) - 1. Dropping the last input token also means its routes and selections (which a
sampler that stopped on it never computed) are never needed.

Compact forms: the kept sets stay bit-packed ``(B, N, ceil(V/8))`` uint8 in the batch (1 bit per
vocabulary entry) and are expanded per micro-batch by :func:`kept_sets`, which returns kept token
ids ``(b, N, K)`` when every kept set is small (top-k, a sharp nucleus) and a dense bool mask
otherwise. A trajectory recorded without a sampling mask (full vocabulary) gets an all-ones set on
its trained positions when others in the batch have one. Positions that are not trained on get an
empty set (their log-probability is then exactly 0 and never read).

Padding rows of replayed DSA selections select only the query itself, so padding queries stay
finite (an all -1 row would attend to nothing and produce NaN). Selections are positions within
the trajectory (0 = its first token); with right padding these equal the model's slot indices.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from rollout.types import Trajectory, unpack_mask


@dataclass
class TrainBatch:
    """B trajectories as right-padded tensors, shifted for next-token prediction (module doc)."""

    input_ids: Tensor
    """(B, N) int64, tokens[:-1], padded with ``pad_id``."""
    attention_mask: Tensor
    """(B, N) bool, False on padding."""
    position_ids: Tensor
    """(B, N) int64, 0..L-2 on each row (right padding: positions do not depend on padding)."""
    target_ids: Tensor
    """(B, N) int64, tokens[1:] (the token each position predicts)."""
    loss_mask: Tensor
    """(B, N) bool: the target was sampled by the policy (trained on)."""
    old_logprobs: Tensor
    """(B, N) fp32: the sampler's log-probability of each target (0 where not trained)."""
    advantages: Tensor
    """(B,) fp32 per-sequence advantages."""
    sampling_mask: Tensor | None = None
    """(B, N, ceil(V/8)) uint8 bit-packed kept set of each target, or None (full vocabulary)."""
    expert_routes: Tensor | None = None
    """(B, N, n_moe_layers, top_k) int64 expert ids per input token, or None."""
    topk_indices: Tensor | None = None
    """(B, N, n_layers, index_topk) int64 DSA selections per input token (-1 padded), or None."""

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_tokens(self) -> Tensor:
        """() int64: real (non-padding) input tokens."""
        return self.attention_mask.sum()

    def select(self, rows: Tensor | Sequence[int]) -> TrainBatch:
        """The sub-batch of ``rows``, with trailing all-padding columns cut off."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        width = int(self.attention_mask[rows].sum(-1).max().clamp(min=1))
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f.name] = None
            elif f.name == "advantages":
                out[f.name] = v[rows]
            else:
                out[f.name] = v[rows, :width]
        return TrainBatch(**out)

    def without_loss(self) -> TrainBatch:
        """A copy that trains on nothing (loss mask all False): a filler micro-batch for a rank
        with fewer rows than its peers, so every rank runs the same forwards and backwards."""
        return replace(self, loss_mask=torch.zeros_like(self.loss_mask))

    def to(self, device: torch.device | str) -> TrainBatch:
        """Every tensor moved to ``device``. Host -> GPU copies go through page-locked (pinned)
        memory, so they run asynchronously (a copy from ordinary memory blocks the host)."""
        pin = torch.device(device).type == "cuda"

        def move(t: Tensor) -> Tensor:
            if pin and t.device.type == "cpu":
                t = t.pin_memory()
            return t.to(device, non_blocking=True)

        return TrainBatch(**{f.name: (None if getattr(self, f.name) is None else move(getattr(self, f.name)))
                             for f in fields(self)})

    def routes_per_layer(self) -> tuple[Tensor, ...] | None:
        """Expert routes as the policy's ``expert_routes=`` wants them: one (B, N, k) per MoE layer."""
        if self.expert_routes is None:
            return None
        return tuple(self.expert_routes.unbind(dim=2))

    def topk_per_layer(self) -> tuple[Tensor, ...] | None:
        """DSA selections as the policy's ``topk_indices=`` wants them: one (B, N, k) per layer."""
        if self.topk_indices is None:
            return None
        return tuple(self.topk_indices.unbind(dim=2))


def collate(trajectories: Sequence[Trajectory], advantages: Tensor | Sequence[float], *,
            vocab_size: int, pad_id: int = 0) -> TrainBatch:
    """Stack trajectories into a right-padded, next-token-shifted :class:`TrainBatch` (on CPU).

    Args:
        trajectories: B records; each needs at least 2 tokens.
        advantages: (B,) one advantage per trajectory, in the same order.
        vocab_size: V of the policy (width of the unpacked kept sets).
        pad_id: token id written into padding (never attended to nor trained on).

    Raises:
        ValueError: on inconsistent records (length mismatches, routes or selections recorded for
            some trajectories but not for others, a packed mask of the wrong width).
    """
    B = len(trajectories)
    if B == 0:
        raise ValueError("collate needs at least one trajectory")
    adv = torch.as_tensor(advantages, dtype=torch.float32).detach().cpu().reshape(-1)
    if adv.shape[0] != B:
        raise ValueError(f"got {adv.shape[0]} advantages for {B} trajectories")
    lengths = [int(t.tokens.shape[0]) for t in trajectories]
    if min(lengths) < 2:
        raise ValueError("every trajectory needs at least 2 tokens (a prompt token and a sampled one)")
    N = max(lengths) - 1
    input_ids = torch.full((B, N), pad_id, dtype=torch.long)
    target_ids = torch.full((B, N), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, N, dtype=torch.bool)
    loss_mask = torch.zeros(B, N, dtype=torch.bool)
    old_logprobs = torch.zeros(B, N, dtype=torch.float32)
    for i, t in enumerate(trajectories):
        n = lengths[i] - 1
        for name, arr in (("loss_mask", t.loss_mask), ("logprobs", t.logprobs)):
            if arr.shape[0] != lengths[i]:
                raise ValueError(f"trajectory {i}: {name} has length {arr.shape[0]}, tokens {lengths[i]}")
        input_ids[i, :n] = t.tokens[:-1]
        target_ids[i, :n] = t.tokens[1:]
        attention_mask[i, :n] = True
        loss_mask[i, :n] = t.loss_mask[1:].bool()
        old_logprobs[i, :n] = t.logprobs[1:].float()
    old_logprobs = torch.where(loss_mask, old_logprobs, 0.0)
    position_ids = torch.arange(N).expand(B, N).clone()
    return TrainBatch(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        target_ids=target_ids, loss_mask=loss_mask, old_logprobs=old_logprobs, advantages=adv,
        sampling_mask=_collate_sampling_masks(trajectories, loss_mask, vocab_size),
        expert_routes=_collate_routes(trajectories, N),
        topk_indices=_collate_topk(trajectories, N),
    )


def _collate_sampling_masks(trajectories: Sequence[Trajectory], loss_mask: Tensor,
                            vocab_size: int) -> Tensor | None:
    if all(t.sampling_mask is None for t in trajectories):
        return None
    B, N = loss_mask.shape
    width = (vocab_size + 7) // 8
    packed = torch.full((B, N, width), 0xFF, dtype=torch.uint8)  # full vocabulary by default
    for i, t in enumerate(trajectories):
        if t.sampling_mask is None:
            continue
        m = t.sampling_mask
        if m.shape != (t.tokens.shape[0], width):
            raise ValueError(f"trajectory {i}: sampling_mask shape {tuple(m.shape)}, expected "
                             f"({t.tokens.shape[0]}, {width}) for vocab_size={vocab_size}")
        packed[i, : m.shape[0] - 1] = m[1:]
    packed[~loss_mask] = 0  # untrained positions: empty kept set -> log-prob exactly 0
    return packed


def _all_or_none(trajectories: Sequence[Trajectory], name: str) -> bool:
    present = [getattr(t, name) is not None for t in trajectories]
    if any(present) and not all(present):
        raise ValueError(f"{name} recorded for {sum(present)} of {len(present)} trajectories: "
                         "record it for all of them or none")
    return all(present)


def _collate_routes(trajectories: Sequence[Trajectory], N: int) -> Tensor | None:
    if not _all_or_none(trajectories, "expert_routes"):
        return None
    _, n_layers, k = trajectories[0].expert_routes.shape
    # Padding tokens get experts 0..k-1 (distinct, valid ids; their output is never used).
    out = torch.arange(k).expand(len(trajectories), N, n_layers, k).clone()
    for i, t in enumerate(trajectories):
        n = t.tokens.shape[0] - 1
        out[i, :n] = t.expert_routes[:n].long()
    return out


def _collate_topk(trajectories: Sequence[Trajectory], N: int) -> Tensor | None:
    if not _all_or_none(trajectories, "topk_indices"):
        return None
    _, n_layers, k = trajectories[0].topk_indices.shape
    out = torch.full((len(trajectories), N, n_layers, k), -1, dtype=torch.long)
    out[..., 0] = torch.arange(N).view(1, N, 1)  # padding queries select only themselves
    for i, t in enumerate(trajectories):
        n = t.tokens.shape[0] - 1
        out[i, :n] = t.topk_indices[:n].long()
    return out


def kept_sets(packed: Tensor, vocab_size: int, *, max_ids_fraction: float = 0.125) -> Tensor:
    """Expand bit-packed kept sets into the form :func:`rl.losses.masked_log_probs` takes.

    Args:
        packed: (b, N, ceil(V/8)) uint8.
        vocab_size: V.
        max_ids_fraction: use kept token ids when the largest kept set has at most this fraction
            of V (then ``(b, N, K)`` int64 costs no more than the ``(b, N, V)`` bool mask).

    Returns:
        int64 ``(b, N, K)`` kept ids right-padded with -1, or bool ``(b, N, V)``.
    """
    dense = unpack_mask(packed, vocab_size)  # (b, N, V) bool
    counts = dense.sum(-1).reshape(-1)  # (b N,)
    k_max = int(counts.max()) if dense.numel() else 0
    if k_max == 0 or k_max > max_ids_fraction * vocab_size:
        return dense
    # Kept ids in ascending order, left-aligned: nonzero() lists them row by row, ascending
    # (an argsort over V per position cost 3x more at V = 49,152).
    rows, ids = dense.reshape(-1, vocab_size).nonzero(as_tuple=True)
    col = torch.arange(rows.numel(), device=rows.device) - (counts.cumsum(0) - counts)[rows]
    out = torch.full((counts.numel(), k_max), -1, dtype=torch.long, device=dense.device)
    out[rows, col] = ids
    return out.view(*dense.shape[:-1], k_max)
