"""Sampling of the next token with the exact kept set and log-probability (pure tensor functions).

The distribution a token is drawn from (and whose log-probability is recorded as pi_old):

    x = logits / temperature                          (fp32)
    keep = top-k set of x, then the top-p nucleus of softmax(x) restricted to that set
    q = softmax(x restricted to keep)                 (renormalised)

- **top-k** (k > 0): every id whose scaled logit is >= the k-th largest value. Ties at the
  threshold are all kept, so the set can exceed k (never smaller than k, for k <= V).
- **top-p** (p < 1): on the top-k distribution, the shortest prefix of the ids sorted by
  decreasing probability whose mass reaches p: id j (in that order) is kept iff the mass of the
  ids strictly before it is < p. The most probable id is always kept. Applied after top-k
  (the order of `transformers`' warpers).
- **greedy**: argmax of the logits; its recorded log-probability is under the untruncated
  softmax(x) and no kept set is recorded.

A kept set is recorded only when truncation is on (top-k > 0 or top-p < 1): bool (B, V) here,
bit-packed by the engine with `rollout.types.pack_mask`. `rl.losses.masked_log_probs` with the same
temperature and mask computes the same q (the consistency check in `rollout.consistency`).

One uniform draw per row per step (inverse CDF; `torch.multinomial` draws V exponentials per row,
~10x slower here), from the caller's `torch.Generator`: reproducible for a given seed, batch
composition and device.
"""
from __future__ import annotations

import torch

from rollout.params import SamplingParams

__all__ = ["SamplingParams", "sample_next"]


def _truncate(x: torch.Tensor, top_k: int, top_p: float):
    """Apply top-k then top-p to scaled logits x (B, V).

    Returns (keep (B, V) bool or None, nucleus) where nucleus is None without top-p, else
    (cum (B, n) cumulative sorted probabilities of the top-k distribution, order (B, n) the sorted
    ids, n_kept (B, 1) size of the kept prefix, sorted_x (B, n) their scaled logits), n = V, or
    n = k when no id ties with the k-th largest value."""
    V = x.shape[-1]
    keep = None
    if 0 < top_k < V:
        vals, order = x.topk(top_k, dim=-1)  # (B, k), sorted descending
        keep = x >= vals[:, -1:]  # every id tied with the k-th largest value is kept too
        if top_p >= 1.0:
            return keep, None
        if not bool((keep.sum(-1) > top_k).any()):
            # No tie across the k-th value: the top-k ids are the whole set, already sorted, so the
            # nucleus needs k entries instead of a sort of all V (the same sets, ~3x faster here).
            return _nucleus(vals, order, top_p, x.shape)
    if top_p >= 1.0:
        return keep, None
    if keep is None:
        found = _nucleus_from_top(x, top_p)
        if found is not None:
            return found
    xk = x if keep is None else x.masked_fill(~keep, float("-inf"))
    sorted_x, order = xk.sort(dim=-1, descending=True)
    keep_p, nucleus = _nucleus(sorted_x, order, top_p, x.shape)
    return (keep_p if keep is None else keep & keep_p), nucleus


NUCLEUS_CANDIDATES = (64, 1024)
"""Top-p without top-k first looks for every row's nucleus among this many most probable ids
(`_nucleus_from_top`), and sorts all V only when one is wider. Sorting a (64, 49152) row block
cost 112 ms on two cores, `topk(64)` 2.8 ms and `topk(1024)` 14 ms."""
NUCLEUS_MIN_VOCAB = 8192
"""Below this vocabulary size top-p sorts every row in full (cheap there; the tiny policy's 600
ids keep their earlier draws)."""


def _nucleus_from_top(x: torch.Tensor, top_p: float):
    """Top-p of scaled logits x (B, V), sorting as little as it can: if the n most probable ids
    of a row (n in `NUCLEUS_CANDIDATES`) hold mass >= top_p, the (n+1)-th already has mass >=
    top_p before it, so the row's nucleus is a prefix of them and equals the one a full sort finds
    (up to the order of tied logits); only the rows whose nucleus is wider are sorted in full.
    Returns what `_nucleus` does (candidate columns padded to the widest row's: logits -inf, mass
    repeated, so nothing is drawn there), or None when every row needs the full sort (or V is
    below `NUCLEUS_MIN_VOCAB`)."""
    B, V = x.shape
    if not NUCLEUS_CANDIDATES or NUCLEUS_CANDIDATES[0] >= V or V < NUCLEUS_MIN_VOCAB:
        return None
    lse = torch.logsumexp(x, dim=-1, keepdim=True)  # (B, 1): probabilities over all V ids
    for n in NUCLEUS_CANDIDATES:
        if n >= V:
            break
        vals, order = x.topk(n, dim=-1)  # (B, n) descending
        cum = (vals - lse).exp().cumsum(-1)  # (B, n) mass of the first j+1 ids
        wide = cum[:, -1] < top_p  # (B,) rows whose nucleus is not inside these n ids
        if not bool(wide.any()):
            break
    if bool(wide.all()):
        return None
    if bool(wide.any()):  # sort those rows in full; pad the others to width V
        rows = wide.nonzero().squeeze(-1)
        s_x, s_order = x[rows].sort(dim=-1, descending=True)  # (b, V)
        pad = V - vals.shape[-1]
        vals = torch.nn.functional.pad(vals, (0, pad), value=float("-inf"))
        order = torch.nn.functional.pad(order, (0, pad), value=0)
        cum = torch.cat([cum, cum[:, -1:].expand(B, pad)], dim=-1)
        vals[rows], order[rows] = s_x, s_order
        cum[rows] = (s_x - lse[rows]).exp().cumsum(-1)
    before = torch.nn.functional.pad(cum[:, :-1], (1, 0))
    keep_sorted = (before < top_p) & (vals > float("-inf"))
    return _scatter_kept(x.shape, order, keep_sorted), (cum, order, keep_sorted.sum(-1, keepdim=True), vals)


def _scatter_kept(shape: torch.Size, order: torch.Tensor, keep_sorted: torch.Tensor) -> torch.Tensor:
    """(B, V) bool kept set from sorted candidates whose padding columns repeat id 0 (never kept)."""
    keep = torch.zeros(shape, dtype=torch.int8, device=order.device)
    keep.scatter_add_(-1, order, keep_sorted.to(torch.int8))
    return keep > 0


def _nucleus(sorted_x: torch.Tensor, order: torch.Tensor, top_p: float, shape: torch.Size):
    """Top-p over candidates sorted by decreasing scaled logit: sorted_x, order (B, n) (n <= V;
    ids outside the n candidates have probability 0). Returns (keep (B, V) bool, (cum (B, n),
    order (B, n), n_kept (B, 1), sorted_x))."""
    cum = torch.softmax(sorted_x, dim=-1).cumsum(-1)  # (B, n)
    before = torch.nn.functional.pad(cum[:, :-1], (1, 0))  # mass strictly before each sorted id
    keep_sorted = before < top_p  # a prefix; the first id (nothing before it) is always kept
    keep = torch.zeros(shape, dtype=torch.bool, device=sorted_x.device).scatter_(-1, order, keep_sorted)
    return keep, (cum, order, keep_sorted.sum(-1, keepdim=True), sorted_x)


def kept_set(x: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor | None:
    """The truncation's kept set of each row, or None when nothing is truncated.

    x: (B, V) fp32 scaled logits (already divided by the temperature; may hold -inf).
    Returns (B, V) bool, True = kept (see the module docstring for the exact rule).
    """
    return _truncate(x, top_k, top_p)[0]


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Draw one token per row.

    logits: (B, V) any float dtype (last-position logits).
    Returns tokens (B,) int64, logprobs (B,) fp32 (log q(token), q the distribution drawn from),
    keep (B, V) bool kept set or None (no truncation / greedy).

    Drawing is by inverse CDF with one uniform per row, u in (0, 1] times the kept mass, searched
    in the cumulative probabilities (sorted ones when top-p already sorted them): the first id
    whose cumulative mass reaches u has positive probability and is kept, always.
    """
    x = logits.float() / params.temperature  # (B, V)
    if params.greedy:
        tok = x.argmax(-1, keepdim=True)
        return tok.squeeze(-1), (x.gather(-1, tok) - torch.logsumexp(x, dim=-1, keepdim=True)).squeeze(-1), None
    u = 1.0 - torch.rand(x.shape[0], 1, generator=generator, device=x.device)  # (B, 1) in (0, 1]
    keep, nucleus = _truncate(x, params.top_k, params.top_p)
    if nucleus is not None:  # everything from the sorted candidates (the kept set is a prefix of them)
        cum, order, n_kept, sorted_x = nucleus
        idx = torch.searchsorted(cum, u * cum.gather(-1, n_kept - 1))  # (B, 1), inside the kept prefix
        prefix = torch.arange(sorted_x.shape[-1], device=x.device) < n_kept  # (B, n)
        lse = torch.logsumexp(sorted_x.masked_fill(~prefix, float("-inf")), dim=-1, keepdim=True)
        return order.gather(-1, idx).squeeze(-1), (sorted_x.gather(-1, idx) - lse).squeeze(-1), keep
    if keep is not None:
        x = x.masked_fill(~keep, float("-inf"))
    cum = torch.softmax(x, dim=-1).cumsum(-1)  # (B, V)
    tok = torch.searchsorted(cum, u * cum[:, -1:]).clamp(max=x.shape[-1] - 1)
    lp = x.gather(-1, tok) - torch.logsumexp(x, dim=-1, keepdim=True)
    return tok.squeeze(-1), lp.squeeze(-1), keep
