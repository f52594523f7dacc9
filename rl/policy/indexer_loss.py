"""Training losses of the lightning indexer (DeepSeek-V3.2, section 2 of the spec).

Both stages use the same per-query KL, only the support differs:
- dense warm-up: support = every causal, non-padding key; target p[t, :] = main attention
  probabilities summed over heads and L1-normalised; loss_t = KL(p[t, :] || softmax(I[t, :])).
  Everything but the indexer is frozen (`freeze_all_but_indexer`).
- sparse stage: support = the selected set S_t; KL(p[t, S_t] || softmax(I[t, S_t])); the indexer's
  inputs are detached (always, in indexer.py), so it learns only from this loss and the rest of the
  model only from the language-model loss.
d/dI[t, s] of loss_t is softmax(I[t])_s - p[t, s] on the support (tested).

The model reports `indexer_loss` = mean over layers of the mean over non-padding query tokens of
loss_t (the spec's sum over t, divided by the token count so the scale does not grow with length).
"""
from __future__ import annotations

import torch
from torch import nn


def indexer_kl(index_scores: torch.Tensor, target: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Per-query KL(target || softmax(index_scores)) over the support.

    index_scores: (..., N) logits I; target: (..., N) probabilities summing to 1 over the support
    (no gradient is taken through it); support: (..., N) bool, at least one True per row.
    Returns (...,): sum_s p_s (log p_s - log softmax_support(I)_s), with 0 log 0 = 0.
    """
    logits = index_scores.float().masked_fill(~support, float("-inf"))
    log_q = torch.log_softmax(logits, dim=-1)
    p = target.float().detach()
    terms = torch.xlogy(p, p) - p * torch.where(support, log_q, torch.zeros_like(log_q))
    return torch.where(support, terms, torch.zeros_like(terms)).sum(-1)


def indexer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every lightning indexer in `model` (names containing '.indexer.')."""
    return [p for name, p in model.named_parameters() if ".indexer." in f".{name}"]


def freeze_all_but_indexer(model: nn.Module) -> list[nn.Parameter]:
    """Dense warm-up set-up: requires_grad=False on every parameter except the indexers'.

    Returns the indexer parameters (give them to the optimizer)."""
    keep = {id(p) for p in indexer_parameters(model)}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return [p for p in model.parameters() if id(p) in keep]
