"""Shared-prefix packing for the training forward: a GRPO group's G replies share their prompt.

A micro-batch of a GRPO step holds G samples of each prompt. The plain forward runs every row's
prompt again and pads every reply to the longest one. Here each row is split at its first trained
input position f_i (the prompt less its last token, which predicts the first sampled token):
prefix = input_ids[i, :f_i], identical within a group, and continuation = input_ids[i, f_i:].
Each group becomes one packed row:

    slots [0, P)        the prefix, right-aligned (P = max f; padding slots first)
    slots [P, T)        the group's continuations one after another, no padding between them

with each token's own RoPE position (prefix s - (P - f), continuation j at f_i + j) and an explicit
(T, T) visibility mask (`attention_allowed` of the policy's forward): a prefix token sees the
prefix causally; a continuation token sees the whole prefix and its own continuation causally,
never another reply. So every real token attends to exactly the keys, at exactly the positions,
of the plain forward; the result equals it up to float summation order (tests: log-probs and
gradients, native MLA + MoE with replayed routes and selections, converted Llama). The logits
are computed only for slots [P, T) (`logits_to_keep`), and the backward sums the G replies'
gradients into the one prefix.

Cost: the prompt is run once per group instead of G times, and replies are not padded to the
longest one (packed rows are padded only to the longest group). Replayed DSA selections are
trajectory positions; `slot_of` maps them into the packed row (selection order is kept: the map
is increasing on the keys a query may see).

Not packed (the caller falls back to the plain forward): micro-batches where no two rows share a
prefix, and forwards that need the indexer KL (its per-query mean would count a shared prompt once
instead of G times).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from rl.batch import TrainBatch


@dataclass
class PackedGroups:
    """A micro-batch packed one row per distinct prefix (module docstring); U groups, b rows."""

    input_ids: Tensor
    """(U, T) int64 packed tokens (pad 0)."""
    valid: Tensor
    """(U, T) bool, False on padding slots."""
    position_ids: Tensor
    """(U, T) int64 RoPE positions (0 on padding)."""
    allowed: Tensor
    """(U, T, T) bool: keys each query may see (every slot sees itself)."""
    prefix_width: int
    """P: the continuations start at slot P; logits are kept for the T - P slots after it."""
    target_ids: Tensor
    """(U, T - P) the token each continuation slot predicts."""
    sampling_mask: Tensor | None
    """(U, T - P, ceil(V/8)) uint8 kept sets of those targets, or None."""
    expert_routes: Tensor | None
    """(U, T, n_moe, k) replayed routes, or None."""
    topk_indices: Tensor | None
    """(U, T, n_layers, index_topk) replayed selections as packed slots, or None."""
    unpack_index: Tensor
    """(b, C) flat index into (U, T - P) of each row's continuation column j (0 past its end)."""
    rows: TrainBatch
    """(b, C) the rows' continuations: loss mask, pi_old, kept sets, targets, advantages of input
    positions f_i + j; what the per-row losses read, aligned with `unpack`."""

    def unpack(self, packed: Tensor) -> Tensor:
        """(U, T - P) per-slot values -> (b, C) per-row continuation values (0 past a row's end)."""
        out = packed.reshape(-1).gather(0, self.unpack_index.reshape(-1)).view_as(self.unpack_index)
        return torch.where(self.rows.attention_mask, out, torch.zeros((), dtype=out.dtype, device=out.device))


def first_trained(mb: TrainBatch) -> Tensor:
    """(b,) int64: each row's first trained input position f_i (its length if none is trained)."""
    N = mb.loss_mask.shape[1]
    pos = torch.arange(N, device=mb.loss_mask.device).expand_as(mb.loss_mask)
    return torch.where(mb.loss_mask, pos, N).min(dim=1).values.minimum(mb.attention_mask.sum(1))


def prefix_groups(mb: TrainBatch, split: Tensor | None = None) -> Tensor:
    """(b,) int64 group ids: rows with equal prefixes (input_ids[:f_i]) share one, numbered in
    order of first appearance; ``split`` is `first_trained(mb)` when the caller has it."""
    f = (first_trained(mb) if split is None else split).tolist()
    keys: dict[tuple[int, ...], int] = {}
    return torch.tensor([keys.setdefault(tuple(mb.input_ids[i, : f[i]].tolist()), len(keys))
                         for i in range(len(f))], dtype=torch.long)


def slot_of(q: Tensor, split: Tensor, prefix_width: int, offset: Tensor) -> Tensor:
    """Trajectory positions q (..., k) of one row -> packed slots: q < split -> q + P - split (the
    right-aligned prefix), q >= split -> P + offset + q - split (its continuation); -1 stays -1.
    split, offset broadcast against q's leading dims."""
    slot = torch.where(q < split, q + prefix_width - split, prefix_width + offset + q - split)
    return torch.where(q < 0, q, slot)


def pack_groups(mb: TrainBatch) -> PackedGroups | None:
    """Pack ``mb`` one row per distinct prefix; None when no two rows share one (or none has a
    prefix), where packing saves nothing."""
    b, N = mb.input_ids.shape
    dev = mb.input_ids.device
    f_t = first_trained(mb)
    group = prefix_groups(mb, f_t).to(dev)
    U = int(group.max()) + 1
    f, g_list = f_t.tolist(), group.tolist()
    if U == b or max(f) == 0:
        return None
    lengths = mb.attention_mask.sum(1)
    n = (lengths - f_t).tolist()  # continuation lengths
    P = max(f)
    offset, fill, first_row = [0] * b, [0] * U, [-1] * U
    for i in range(b):
        u = g_list[i]
        offset[i], fill[u] = fill[u], fill[u] + n[i]
        if first_row[u] < 0:
            first_row[u] = i
    K = max(1, max(fill))
    T = P + K

    # Per packed slot: the batch row and input position it copies, its segment (0 = prefix, i + 1 =
    # row i's continuation, -1 = padding), its split f and continuation offset.
    src_row = torch.zeros(U, T, dtype=torch.long)
    src_pos = torch.zeros(U, T, dtype=torch.long)
    seg = torch.full((U, T), -1, dtype=torch.long)
    split = torch.zeros(U, T, dtype=torch.long)
    off = torch.zeros(U, T, dtype=torch.long)
    for u in range(U):
        i0, fu = first_row[u], f[first_row[u]]
        src_row[u, P - fu: P] = i0
        src_pos[u, P - fu: P] = torch.arange(fu)
        seg[u, P - fu: P] = 0
        split[u, :P] = fu
    for i in range(b):
        u, lo = g_list[i], P + offset[i]
        src_row[u, lo: lo + n[i]] = i
        src_pos[u, lo: lo + n[i]] = torch.arange(f[i], f[i] + n[i])
        seg[u, lo: lo + n[i]] = i + 1
        split[u, lo: lo + n[i]] = f[i]
        off[u, lo: lo + n[i]] = offset[i]
    src_row, src_pos, seg, split, off = (t.to(dev) for t in (src_row, src_pos, seg, split, off))
    valid = seg >= 0
    slots = torch.arange(T, device=dev)
    causal = slots[None, :] <= slots[:, None]  # (T, T) key <= query
    same = (seg[:, None, :] == 0) | (seg[:, None, :] == seg[:, :, None])  # (U, T, T): prefix or own reply
    allowed = (causal & same & valid[:, None, :]) | torch.eye(T, dtype=torch.bool, device=dev)

    def packed(t: Tensor) -> Tensor:
        return t[src_row, src_pos]  # (U, T, ...)

    cont = slice(P, T)
    topk = None
    if mb.topk_indices is not None:
        sel = slot_of(packed(mb.topk_indices), split[..., None, None], P, off[..., None, None])
        own = torch.full_like(sel, -1)
        own[..., 0] = slots.view(1, T, 1)  # padding slots select only themselves
        topk = torch.where(valid[..., None, None], sel, own)
    sampling = None
    if mb.sampling_mask is not None:
        sampling = torch.where(valid[:, cont, None], packed(mb.sampling_mask)[:, cont], 0)

    # Each row's continuation in the row layout (b, C): input position f_i + j.
    C = max(1, max(n))
    j = torch.arange(C, device=dev)
    inside = j[None, :] < torch.tensor(n, device=dev)[:, None]  # (b, C)
    src = (f_t[:, None] + j[None, :]).clamp(max=N - 1)
    unpack_index = torch.where(inside, group[:, None] * K + torch.tensor(offset, device=dev)[:, None] + j, 0)
    rows = {}
    for fld in fields(TrainBatch):
        v = getattr(mb, fld.name)
        if v is None or fld.name in ("advantages", "expert_routes", "topk_indices"):
            rows[fld.name] = v if fld.name == "advantages" else None
        elif fld.name == "attention_mask":
            rows[fld.name] = inside
        elif fld.name == "position_ids":
            rows[fld.name] = f_t[:, None] + j
        else:
            g = v.gather(1, src.view(b, C, *([1] * (v.dim() - 2))).expand(b, C, *v.shape[2:]))
            rows[fld.name] = torch.where(inside.view(b, C, *([1] * (g.dim() - 2))), g, torch.zeros_like(g))
    return PackedGroups(
        input_ids=torch.where(valid, packed(mb.input_ids), 0), valid=valid,
        position_ids=torch.where(valid, src_pos, 0), allowed=allowed,
        prefix_width=P, target_ids=torch.where(valid[:, cont], packed(mb.target_ids)[:, cont], 0),
        sampling_mask=sampling, expert_routes=packed(mb.expert_routes) if mb.expert_routes is not None else None,
        topk_indices=topk, unpack_index=unpack_index, rows=TrainBatch(**rows))


def packed_logits(model, pg: PackedGroups, *, keep_routing: bool, keep_indexing: bool) -> Tensor:
    """(U, T - P, V) fp32 logits of the continuation slots of ``pg`` under ``model`` (a DSA policy
    or its DeepSpeed engine), in one forward."""
    return model(input_ids=pg.input_ids, attention_mask=pg.valid, position_ids=pg.position_ids,
                 attention_allowed=pg.allowed, use_cache=False,
                 logits_to_keep=pg.input_ids.shape[1] - pg.prefix_width,
                 expert_routes=tuple(pg.expert_routes.unbind(2)) if keep_routing and pg.expert_routes is not None
                 else None,
                 topk_indices=tuple(pg.topk_indices.unbind(2)) if keep_indexing and pg.topk_indices is not None
                 else None).logits
