"""The lightning indexer of DeepSeek Sparse Attention, and deterministic top-k token selection.

    I[t, s] = sum_j w[t, j] * ReLU(q_I[t, j] . k_I[s])

- `q_I` (H_I heads x d_I) is projected from the MLA query latent c_q = RMSNorm(W_qa h);
  `k_I` (one head of d_I, shared by all indexer heads) = LayerNorm(W_k h); both get half-split RoPE
  on their first `config.index_rope_dim` dims (layout [rope, nope]; default the first half, V3.2:
  qk_rope_head_dim).
- `w` = W_w h * H_I^-0.5 * d_I^-0.5 in fp32: the d_I^-0.5 of q.k is folded into w
  (ReLU(a x) = a ReLU(x) for a > 0), so `index_scores` itself has no scale.
- Scores are computed in fp32 whatever the model dtype.
- Selection: causal and padding masks, then the top min(k, #allowed) keys; ties at the threshold
  break toward the LOWER token index, exactly (torch.topk alone does not promise that): we take the
  k-th largest value v, keep every score > v, then the lowest-index scores == v until k are chosen.
  Returned indices are sorted ascending by position and right-padded with -1 to width k.

Departures from V3.2: no Hadamard rotation and no FP8 (both speed devices; the rotation is
orthogonal, so it changes nothing in exact arithmetic). The indexer's inputs (h, c_q) are always
detached: it learns only from its own KL loss (see indexer_loss.py).
"""
from __future__ import annotations

import torch
from torch import nn

from rl.policy.configuration import DSAConfig
from rl.policy.layers import apply_rope


def index_scores(q: torch.Tensor, k: torch.Tensor, w: torch.Tensor, key_block: int | None = None) -> torch.Tensor:
    """Lightning-indexer scores, any scaling already folded into q and w by the caller.

    q: (B, T, H_I, d_I) queries; k: (B, S, d_I) keys (one head, shared); w: (B, T, H_I) head weights.
    Returns (B, T, S): out[b, t, s] = sum_j w[b, t, j] * ReLU(q[b, t, j, :] . k[b, s, :]).
    No masking here: callers mask non-causal / padded keys. Keys are processed in blocks of
    `key_block` (default: ~256 K logits per block, so the (B, T, H_I, block) ReLU tensor stays in
    cache at decode: measured ~1.5x faster than one block at 128K keys), into reused scratch
    buffers; the result does not depend on the blocking.
    """
    B, T, H, D = q.shape
    S = k.shape[1]
    qf = q.reshape(B, T * H, D)
    block = key_block or max(1024, (1 << 18) // max(1, B * T * H))
    if block >= S:
        logits = torch.matmul(qf, k.transpose(1, 2)).relu_().view(B, T, H, S)  # (B, T, H, S)
        return torch.matmul(w.unsqueeze(2), logits).squeeze(2)  # (B, T, 1, S) -> (B, T, S)
    # Blocks reuse two scratch buffers (fresh ~1 MB allocations per block cost page faults).
    wf = w.reshape(B * T, 1, H)
    scratch = q.new_empty(B * T * H * block)
    part = q.new_empty(B * T * block)
    out = q.new_empty(B, T, S)
    for s0 in range(0, S, block):
        n = min(S, s0 + block) - s0
        logits = scratch[: B * T * H * n].view(B, T * H, n)
        torch.bmm(qf, k[:, s0:s0 + n].transpose(1, 2), out=logits).relu_()  # (B, T*H, n)
        ws = part[: B * T * n].view(B * T, 1, n)
        torch.bmm(wf, logits.view(B * T, H, n), out=ws)  # (B*T, 1, n)
        out[..., s0:s0 + n] = ws.view(B, T, n)
    return out


def select_topk(scores: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k key positions per query with ties broken toward the lower position.

    scores: (B, T, S) index scores; allowed: (B, T, S) bool (causal, not padding); k >= 1.
    Returns LongTensor (B, T, k): the selected positions of each query, ascending, then -1 padding
    (a row has min(k, allowed.sum()) real entries). Deterministic for any input.

    One `topk` gives the k-th largest value v and a candidate set. The set is already exact unless
    some score == v was left out (a tie across the boundary, which `topk` breaks arbitrarily): only
    those rows get the exact rule (everything > v, then the lowest-index scores == v). Positions
    are put in ascending order by sorting the k chosen indices (not another pass over S).
    """
    B, T, S = scores.shape
    k_eff = min(k, S)
    masked = scores.float().masked_fill(~allowed, float("-inf"))
    if torch.compiler.is_compiling():  # branch-free (no graph break): the exact rule on every row
        return _select_keyed(masked, allowed, k)
    vals, idx = masked.topk(k_eff, dim=-1, sorted=False)  # (B, T, k_eff), any order
    threshold = vals.amin(-1, keepdim=True)  # (B, T, 1): the k-th largest value
    # A row is ambiguous iff its threshold is a real score tied with an entry topk left out.
    left_out_ties = (masked == threshold).sum(-1, keepdim=True) > (vals == threshold).sum(-1, keepdim=True)
    ambiguous = (left_out_ties & (threshold > float("-inf"))).view(B * T)  # (B*T,)
    idx = torch.where(vals > float("-inf"), idx, S)  # not allowed -> S: sorts last, becomes -1
    idx = idx.sort(dim=-1).values
    idx = torch.where(idx < S, idx, -1)
    if k_eff < k:
        idx = torch.cat([idx, idx.new_full((B, T, k - k_eff), -1)], dim=-1)
    if bool(ambiguous.any()):  # only those rows (a few % at random init, where ReLU zeros tie)
        rows = ambiguous.nonzero().squeeze(-1)
        exact = _select_exact(masked.view(B * T, S)[rows].unsqueeze(0), threshold.view(B * T, 1)[rows].unsqueeze(0),
                              allowed.reshape(B * T, S)[rows].unsqueeze(0), k)  # (1, n, k)
        idx = idx.view(B * T, k).index_copy(0, rows, exact[0]).view(B, T, k)
    return idx


def _select_keyed(masked: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """The exact rule of `select_topk` in one `topk`, without branches (what runs under
    `torch.compile`): each score becomes a unique int64 key, its float order in the high 32 bits
    (the sign-magnitude bit pattern mapped to a two's-complement order; -0.0 counted as +0.0) and
    S - 1 - position in the low bits, so equal scores rank the lower position first.
    masked: (B, T, S) fp32 with -inf outside `allowed`. Returns (B, T, k) as select_topk."""
    B, T, S = masked.shape
    k_eff = min(k, S)
    bits = (masked + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order == float order
    pos = torch.arange(S, device=masked.device)
    key = ordered.to(torch.int64) * (1 << 32) + (S - 1 - pos)  # (B, T, S), all distinct
    idx = key.topk(k_eff, dim=-1, sorted=False).indices  # (B, T, k_eff)
    idx = torch.where(allowed.gather(-1, idx), idx, S).sort(dim=-1).values  # not allowed -> S: last
    idx = torch.where(idx < S, idx, -1)
    if k_eff < k:
        idx = torch.cat([idx, idx.new_full((B, T, k - k_eff), -1)], dim=-1)
    return idx


def _select_exact(masked: torch.Tensor, threshold: torch.Tensor, allowed: torch.Tensor, k: int) -> torch.Tensor:
    """The tie-exact selection over all S keys (see `select_topk`); masked (B, T, S) with -inf
    outside `allowed`, threshold (B, T, 1) the k-th largest value. Returns (B, T, k) as select_topk."""
    B, T, S = masked.shape
    k_eff = min(k, S)
    above = masked > threshold
    at = masked == threshold
    need = k_eff - above.sum(-1, keepdim=True)
    chosen = (above | (at & (at.cumsum(-1) <= need))) & allowed  # (B, T, S), <= k_eff per row
    # Scatter each chosen position to its rank among the chosen (ascending); the rest to a spare column.
    slot = torch.where(chosen, chosen.cumsum(-1) - 1, k)
    pos = torch.arange(S, device=masked.device).expand(B, T, S)
    out = torch.full((B, T, k + 1), -1, dtype=torch.long, device=masked.device)
    out.scatter_(-1, slot, torch.where(chosen, pos, -1))
    return out[..., :k]


def chunk_selection(replay: torch.Tensor | None, q0: int, q1: int, scores: torch.Tensor | None,
                    allowed: torch.Tensor, k: int, compute: bool) -> torch.Tensor | None:
    """The selected keys of query rows q0:q1: the replayed selection when one is given (B, T, k),
    else `select_topk(scores, allowed, k)` when `compute`, else None (every allowed key is used).

    scores, allowed: (B, q1 - q0, S). Returns (B, q1 - q0, k) or None. Shared by every attention
    that runs DSA, so replay and selection follow one rule."""
    if replay is not None:
        return replay[:, q0:q1]
    return select_topk(scores, allowed, k) if compute else None


def indices_to_mask(idx: torch.Tensor, num_keys: int) -> torch.Tensor:
    """(B, T, k) positions with -1 padding -> (B, T, num_keys) bool mask of the selected positions."""
    B, T, _ = idx.shape
    target = torch.where(idx >= 0, idx, num_keys)  # padding goes to a spare column
    mask = torch.zeros(B, T, num_keys + 1, dtype=torch.bool, device=idx.device)
    mask.scatter_(-1, target, True)
    return mask[..., :num_keys]


class LightningIndexer(nn.Module):
    """Projections of the lightning indexer (queries, keys, head weights); scoring is `index_scores`."""

    def __init__(self, config: DSAConfig) -> None:
        super().__init__()
        self.n_heads = config.index_n_heads
        self.head_dim = config.index_head_dim
        self.wq = nn.Linear(config.q_lora_rank, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.hidden_size, self.head_dim, bias=False)
        self.k_norm = nn.LayerNorm(self.head_dim, eps=config.rms_norm_eps)
        self.weights_proj = nn.Linear(config.hidden_size, self.n_heads, bias=False)
        self.weight_scale = self.n_heads ** -0.5 * self.head_dim ** -0.5
        # DSAConfig says how many dims rotate; configs without the field (dsa_llama) rotate the first half.
        self.rope_dim = getattr(config, "index_rope_dim", self.head_dim // 2)

    def _rope_first_half(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """RoPE on the first `rope_dim` dims (cos/sin (..., rope_dim / 2)), the rest unchanged."""
        r = self.rope_dim
        return torch.cat([apply_rope(x[..., :r], cos, sin), x[..., r:]], dim=-1)

    def queries(self, q_latent: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """q_latent (B, T, q_lora) -> (B, T, H_I, d_I) fp32; cos/sin (B, T, rope_dim / 2)."""
        B, T, _ = q_latent.shape
        q = self.wq(q_latent.detach()).view(B, T, self.n_heads, self.head_dim)  # (B, T, H_I, d_I)
        return self._rope_first_half(q, cos.unsqueeze(2), sin.unsqueeze(2)).float()

    def keys(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) -> LayerNorm'd, RoPE'd keys (B, T, d_I) in h's dtype; cos/sin (B, T, rope_dim / 2)."""
        k = self.k_norm(self.wk(h.detach()))
        return self._rope_first_half(k, cos, sin)

    def head_weights(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, T, d) -> w (B, T, H_I) fp32, including the H_I^-0.5 and (folded) d_I^-0.5 scales."""
        return self.weights_proj(h.detach()).float() * self.weight_scale
