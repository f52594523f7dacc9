"""The record a rollout hands to the learner: one sampled trajectory.

A trajectory is one sequence: the prompt followed by every turn (policy text, tool results,
environment text). Per-token arrays all have the sequence's length L and are aligned with
``tokens``: entry t describes token t (the sampler's log-probability of *producing* token t given
tokens[:t]). Only tokens with ``loss_mask`` True were sampled by the policy and are trained on.

Memory forms (chosen to stay small at long context; see ``pack_mask`` / ``unpack_mask``):

- ``sampling_mask``: the kept vocabulary set of each token under top-k / top-p truncation, as a
  bit-packed boolean array (L, ceil(V/8)) uint8 (V/8 bytes per token: 75 B for the tiny
  tokenizer, 16 KiB for V3.2's 129K vocabulary), or None when sampling kept the full vocabulary.
- ``expert_routes``: (L, n_moe_layers, top_k) int16 expert ids (Keep Routing), or None.
- ``topk_indices``: (L, n_layers, index_topk) int32 selected key positions, -1 padded (replay of
  DSA selections), or None.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Trajectory:
    tokens: torch.Tensor
    """(L,) int64: prompt and all turns."""
    prompt_len: int
    """Leading tokens that are the prompt (before the first sampled token)."""
    loss_mask: torch.Tensor
    """(L,) bool: True where the policy sampled the token (tool/environment text is False)."""
    logprobs: torch.Tensor
    """(L,) float32: the sampler's log-probability of each sampled token, under the distribution
    it was drawn from (temperature and truncation applied, renormalised); 0 where not sampled."""
    completion: str
    """Decoded text of the sampled part (what reward functions score)."""
    finish_reason: str
    """``stop`` (EOS or stop string), ``length`` (max new tokens), ``context`` or ``turns``."""
    weight_version: int
    """Version of the weights that sampled every token of this trajectory."""
    prompt_index: int = 0
    """Index of the prompt in the step's batch (GRPO groups share it)."""
    sample_index: int = 0
    """Index of this sample within its group."""
    sampling_mask: torch.Tensor | None = None
    """(L, ceil(V/8)) uint8 bit-packed kept sets, or None (full vocabulary)."""
    expert_routes: torch.Tensor | None = None
    """(L, n_moe_layers, top_k) int16 expert ids chosen while sampling, or None."""
    topk_indices: torch.Tensor | None = None
    """(L, n_layers, index_topk) int32 DSA selections while sampling (-1 padded), or None."""
    num_turns: int = 1
    """Policy turns in the trajectory."""
    num_tool_calls: int = 0
    """Tool calls the policy made."""
    num_tool_errors: int = 0
    """Tool calls that failed (malformed, unknown tool, tool error, timeout)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Environment info (e.g. the verifier's verdict) passed to rewards and metrics."""

    @property
    def num_sampled(self) -> int:
        """Tokens the policy sampled."""
        return int(self.loss_mask.sum())


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bit-pack a boolean mask along its last dim: (..., V) bool -> (..., ceil(V/8)) uint8."""
    *lead, v = mask.shape
    pad = (-v) % 8
    bits = torch.nn.functional.pad(mask.to(torch.uint8), (0, pad)).view(*lead, -1, 8)  # (..., V/8, 8)
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (bits * weights).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: (..., ceil(V/8)) uint8 -> (..., V) bool."""
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0  # (..., V/8, 8)
    return bits.flatten(-2)[..., :vocab_size]


_POPCOUNT = torch.tensor([i.bit_count() for i in range(256)], dtype=torch.int32)


def kept_sizes(packed: torch.Tensor) -> torch.Tensor:
    """Size of each bit-packed kept set: (..., ceil(V/8)) uint8 -> (...,) int32 (popcount).

    >>> kept_sizes(pack_mask(torch.tensor([[True, False, True], [False, False, False]]))).tolist()
    [2, 0]
    """
    return _POPCOUNT.to(packed.device)[packed.long()].sum(-1, dtype=torch.int32)
