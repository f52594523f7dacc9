"""The DSA attention core shared by every DSA policy, whatever its projections (MLA or GQA).

`SparseAttention` holds what DeepSeek Sparse Attention adds to an attention layer, written once:
the lightning indexer, the cache write, the causal/padding mask, the top-k selection (or the
replay of a recorded one), the chunking of query rows, the indexer KL loss and the diagnostic
attention maps. A subclass supplies only its projections and its attention core:

- `project(h, ctx)` -> dict with at least "h" (the normed input), "entry" (B, T, E) (what the
  layer caches per token) and "index_k" (B, T, d_I); plus "index_q" (B, T, H_I, d_I) fp32 and
  "index_w" (B, T, H_I) fp32 whenever the indexer runs (`indexer_needed`);
- `path(num_queries, num_keys, ctx)` -> the name of the core to use for this call;
- `prepare(p, entries, path)` -> per-call state computed once over all S keys (e.g. decompressed K/V);
- `core(state, p, entries, q0, q1, sel, allowed, path)` -> `CoreOut` for query rows q0:q1;
- `output(out)` -> the output projection of (B, T, H * dv).

Selection rule (DSA): the indexer scores every allowed key, `select_topk` keeps k per query; a
replayed selection (`topk_indices`) is used as given. When every key fits in k and nobody asked
for the selection, no selection is made and the call is exactly dense causal attention.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from rl.policy.cache import DSACache
from rl.policy.indexer import chunk_selection, index_scores
from rl.policy.indexer_loss import indexer_kl


@dataclass
class AttentionContext:
    """Per-forward inputs shared by every layer (built once by the model)."""

    start: int
    """Cache slots filled before this call (0 without a cache); the T new tokens go to start..start+T-1."""
    key_valid: torch.Tensor
    """(B, S) bool, S = start + T: False for padding slots."""
    mode: str
    """'sparse' or 'dense'."""
    rope: tuple[torch.Tensor, torch.Tensor]
    """Main-attention RoPE cos/sin in the layout the layer's projections use."""
    index_rope: tuple[torch.Tensor, torch.Tensor]
    """Indexer RoPE cos/sin, each (B, T, index_head_dim / 4)."""
    want_topk: bool
    """Return the selected positions of every query."""
    want_indexer_loss: bool
    """Compute the indexer KL loss (dense mode: warm-up loss over all keys; sparse: over the selection)."""
    want_maps: bool = False
    """Return per-layer attention maps (head-summed probabilities, indexer scores, allowed mask)."""
    allowed: torch.Tensor | None = None
    """(B, T, S) bool: which keys each query may see, replacing the causal & not-padding rule
    (packed sequences: several replies after one shared prompt, `rl.prefix`); None = that rule."""
    allowed_memo: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    """`allowed_keys` results, shared by every layer of one forward (single-chunk calls only)."""


def allowed_keys(ctx: AttentionContext, q0: int, q1: int) -> torch.Tensor:
    """(B, q1-q0, S) bool: key s visible to query slot start+i (causal, not padding, or itself).

    A query always sees itself, so rows of padding queries are never empty. Computed once per
    forward when one chunk holds every query (memoised in ctx: decode and short calls); callers
    must not modify the result. A given `ctx.allowed` is returned as is (rows q0:q1)."""
    if ctx.allowed is not None:
        return ctx.allowed[:, q0:q1]
    if (q0, q1) in ctx.allowed_memo:
        return ctx.allowed_memo[(q0, q1)]
    S = ctx.key_valid.shape[1]
    key_pos = torch.arange(S, device=ctx.key_valid.device)
    q_pos = ctx.start + torch.arange(q0, q1, device=ctx.key_valid.device)
    causal = key_pos[None, :] <= q_pos[:, None]  # (C, S)
    is_self = key_pos[None, :] == q_pos[:, None]
    allowed = causal & (ctx.key_valid[:, None, :] | is_self)
    # One chunk holds every query: keep it (memory stays O(B C S)); not under torch.compile,
    # where the dict would add guards.
    if q1 - q0 == S - ctx.start and not torch.compiler.is_compiling():
        ctx.allowed_memo[(q0, q1)] = allowed
    return allowed


class CoreOut(NamedTuple):
    """What an attention core returns for one chunk of C query rows."""

    out: torch.Tensor
    """(B, C, H, dv) head outputs (before the output projection)."""
    probs: torch.Tensor
    """Attention probabilities over N keys, heads on axis `head_axis`."""
    head_axis: int
    """1 for (B, H, C, N), 2 for (B, C, H, N)."""
    support: torch.Tensor
    """(B, C, N) bool: the keys each query attended to."""
    columns: torch.Tensor | None = None
    """(B, C, N) key positions of the N columns when they are gathered (N = k), None when N = S."""


class SparseAttention(nn.Module):
    """Base of every DSA attention layer: see the module docstring for what a subclass supplies."""

    layer_idx: int
    topk: int
    chunk: int

    def forward(
        self,
        h: torch.Tensor,
        ctx: AttentionContext,
        cache: DSACache | None,
        topk_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """h: (B, T, d) normed input. topk_indices: optional (B, T, index_topk) selection to enforce.

        Returns a tuple (ZeRO-3's hooks see through tuples, not dataclasses):
        - hidden (B, T, d): attention output after the output projection;
        - topk_indices (B, T, index_topk) long, ascending positions, -1 padded (sparse mode and
          ctx.want_topk only, else None);
        - indexer KL sum: scalar, sum over non-padding queries of the per-query indexer KL
          (ctx.want_indexer_loss only, else None);
        - attention maps (ctx.want_maps only): (head-summed L1-normalised probabilities (B, T, S) fp32,
          indexer scores (B, T, S) fp32, allowed mask (B, T, S))."""
        if ctx.mode == "dense" and topk_indices is not None:
            raise ValueError("topk_indices (selection replay) needs attention_mode='sparse'")
        p = self.project(h, ctx)
        if cache is not None:
            entries, keys_i = cache.write(self.layer_idx, ctx.start, p["entry"], p["index_k"])  # (B, S, .)
        else:
            entries, keys_i = p["entry"], p["index_k"]
        out, topk, kl_sum, maps = self.attend(p, entries, keys_i, ctx, topk_indices)
        return self.output(out), topk, kl_sum, maps

    @staticmethod
    def indexer_needed(ctx: AttentionContext) -> bool:
        """Whether `project` must compute the indexer's queries and head weights."""
        return ctx.mode == "sparse" or ctx.want_indexer_loss or ctx.want_maps

    def attend(
        self,
        p: dict[str, torch.Tensor],
        entries: torch.Tensor,
        keys_i: torch.Tensor,
        ctx: AttentionContext,
        topk_indices: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """The attention proper, given projections `p` and all keys: entries (B, S, E), indexer keys
        (B, S, d_I). Returns (heads output (B, T, H*dv) before the output projection, selection,
        KL sum, maps)."""
        B, T = p["h"].shape[:2]
        S = entries.shape[1]
        # Select with the indexer unless replaying, or unless every key fits in k and nobody asked.
        need_selection = ctx.mode == "sparse" and topk_indices is None and (S > self.topk or ctx.want_topk)
        run_indexer = need_selection or ctx.want_indexer_loss or ctx.want_maps
        if run_indexer:
            index_q, index_w, keys_f = p["index_q"], p["index_w"], keys_i.float()
        path = self.path(T, S, ctx)
        state = self.prepare(p, entries, path)

        outs, sels, maps = [], [], []
        kl_sum = p["h"].new_zeros((), dtype=torch.float32) if ctx.want_indexer_loss else None
        for q0 in range(0, T, self.chunk):
            q1 = min(T, q0 + self.chunk)
            allowed = allowed_keys(ctx, q0, q1)  # (B, C, S)
            scores_i = None
            if run_indexer:  # no autograd graph unless the KL loss needs one
                with torch.set_grad_enabled(torch.is_grad_enabled() and ctx.want_indexer_loss):
                    scores_i = index_scores(index_q[:, q0:q1], keys_f, index_w[:, q0:q1])  # (B, C, S)
            sel = None
            if ctx.mode == "sparse":
                sel = chunk_selection(topk_indices, q0, q1, scores_i, allowed, self.topk, need_selection)  # (B, C, k)
                if sel is not None and ctx.want_topk:
                    sels.append(sel)
            o = self.core(state, p, entries, q0, q1, sel, allowed, path)
            if kl_sum is not None or ctx.want_maps:
                target = o.probs.detach().float().sum(o.head_axis)  # (B, C, N): head-summed
                target = target / target.sum(-1, keepdim=True)
                if kl_sum is not None:
                    s_i = scores_i if o.columns is None else scores_i.gather(-1, o.columns.clamp(min=0))
                    per_query = indexer_kl(s_i, target, o.support)  # (B, C)
                    real = ctx.key_valid[:, ctx.start + q0: ctx.start + q1]
                    kl_sum = kl_sum + (per_query * real).sum()
                if ctx.want_maps:
                    if o.columns is not None:
                        raise ValueError("attention maps need a path over all keys, not a gathered one")
                    maps.append((target, scores_i.detach(), allowed))
            outs.append(o.out)
        out = torch.cat(outs, dim=1).reshape(B, T, -1)  # (B, T, H*dv)
        topk = torch.cat(sels, dim=1) if sels else None
        amap = tuple(torch.cat(x, dim=1) for x in zip(*maps, strict=True)) if maps else None
        return out, topk, kl_sum, amap

    # ---- what a subclass supplies ---------------------------------------------------------------
    def project(self, h: torch.Tensor, ctx: AttentionContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def path(self, num_queries: int, num_keys: int, ctx: AttentionContext) -> str:
        raise NotImplementedError

    def prepare(self, p: dict[str, torch.Tensor], entries: torch.Tensor, path: str) -> Any:
        raise NotImplementedError

    def core(self, state: Any, p: dict[str, torch.Tensor], entries: torch.Tensor, q0: int, q1: int,
             sel: torch.Tensor | None, allowed: torch.Tensor, path: str) -> CoreOut:
        raise NotImplementedError

    def output(self, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
