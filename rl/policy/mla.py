"""Multi-head Latent Attention (MLA) with DeepSeek Sparse Attention (DSA).

Projections (per token h, shapes for one token):
    c_q = RMSNorm(W_qa h)                        (q_lora)        also the indexer's query input
    [q_nope; q_rope] = W_qb c_q                  (H, dn + dr)    RoPE on q_rope
    [c_kv; k_rope] = W_kva h                     (kv_lora + dr)  c_kv RMSNorm'd, RoPE on k_rope
    cached entry  e_s = [c_kv; k_rope]           (kv_lora + dr)  shared by all heads
    W_kvb = [W_UK; W_UV] per head                (H, dn + dv, kv_lora)
    score_h(t, s) = (q_nope_h . W_UK_h c_s + q_rope_h . k_rope_s) / sqrt(dn + dr)

Sparse mode has three paths over keys `allowed & selected` (`allowed` = causal & not padding; a
query always sees itself, so rows of padding queries are never empty), chosen by `attention_path`
from shapes only, so replaying a selection runs the same arithmetic:
- "gather" (decode, short chunks): MQA/absorbed form (q_abs_h = W_UK_h^T q_nope_h) over the k
  gathered latent entries of each query: one gather of [c_kv; k_rope] serves every head, W_UV applied
  after attending.
- "absorbed": the same absorbed form over all S latents, logits of unselected keys -inf. Used when
  every key fits in k (then it is exactly dense causal attention and the indexer is skipped unless
  its output or loss is asked for), when k per query is a large part of S, and for mid-sized calls.
- "expanded" (training / prefill calls of many queries): K and V decompressed per head once per
  call (classic MLA, as dense mode), logits of unselected keys -inf. Per-head scores over
  dn + dr dims instead of kv_lora + dr: cheaper once a call has more queries than ~kv_lora
  (exact rule in `attention_path`). Results agree with the other paths to float rounding (~1e-6),
  and with themselves across query-chunk sizes to the same rounding.
Dense mode (`attention_mode="dense"`) is classic MLA over all allowed keys: the test oracle and the
mode of the dense indexer warm-up.

ZeRO-3: every weight is used through a module call (the up-projection `kv_b` is a
`KVUpProjection`, an `nn.Linear` whose forward also applies its absorbed forms), and submodules
return tensors or tuples of tensors, so ZeRO-3's per-module hooks gather and release every
parameter in forward and backward without help.

Memory bound of one layer's prefill: queries are processed in chunks of C = attention_chunk_size
rows; per chunk the largest tensors are the indexer logits (B, C, H_I, S) fp32 and the attention
scores (B, H, C, S) (absorbed / expanded paths) or the gathered latents (B, C, k, kv_lora + dr): all
O(B C S). The expanded path also holds the decompressed K/V (B, S, H, dn + dv) for the whole call,
which it only takes when dn + dv <= C, so that stays within the O(B H C S) of the scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rl.policy.configuration import DSAConfig
from rl.policy.indexer import LightningIndexer, indices_to_mask
from rl.policy.layers import RMSNorm, apply_rope, yarn_softmax_scale
from rl.policy.sparse import AttentionContext, CoreOut, SparseAttention

PATHS = ("gather", "absorbed", "expanded")


GATHER_MAX_QUERIES = 16
"""Calls with more query rows than this never take the gather path (see `attention_path`)."""


def attention_path(
    num_queries: int, num_keys: int, k: int, n_heads: int, kv_lora: int, dn: int, dv: int, chunk: int
) -> str:
    """Sparse-attention path of a call with `num_queries` query rows over `num_keys` keys, k selected
    per query (MLA dims kv_lora, dn, dv; query chunk `chunk`): a rule on shapes only (see the module
    docstring), the same for every query chunk of the call.

    - every key fits in k: "absorbed" (no gather, no selection mask needed);
    - "expanded" when decompressing K/V once for the call costs less than the absorbed form's extra
      per-(query, key) width: T (2 kv_lora - dn - dv) > (dn + dv) kv_lora, and dn + dv <= the chunk
      rows (so the decompressed (B, S, H, dn + dv) stays within the O(B H C S) bound of the scores);
    - up to GATHER_MAX_QUERIES rows (decode): "gather" when k (H + 1) < H S (the multiply-adds of
      the gathered rows plus their copy, against scoring all S keys), else "absorbed".
    Measured on CPU, tiny preset (1 thread): decode, B = 64, S 33..160, k = 32: gather 4564 tok/s,
    absorbed 3843. Training fwd + bwd of 16 x T tokens (tok/s, gather / absorbed / expanded):
    T = 48: 3584 / 4651 / 4837; T = 192: 3308 / 3843 / 3980 (small batched GEMMs and the gather's
    scatter-add backward make "gather" the slowest in training although it has the fewest MACs).
    """
    if num_keys <= k:
        return "absorbed"
    if num_queries * (2 * kv_lora - dn - dv) > (dn + dv) * kv_lora and dn + dv <= min(num_queries, chunk):
        return "expanded"
    if num_queries <= GATHER_MAX_QUERIES and k * (n_heads + 1) < n_heads * num_keys:
        return "gather"
    return "absorbed"


class KVUpProjection(nn.Linear):
    """MLA's up-projection W_kvb = [W_UK; W_UV] per head: weight (H * (dn + dv), kv_lora), no bias.

    `forward(x, form)` applies it in one of three forms, so the weight is only ever read inside
    this module's own call (what ZeRO-3's hooks gather):
    - "latents": x (..., kv_lora) -> (..., H * (dn + dv)), the plain linear (K/V decompression);
    - "absorb_query": x = q_nope (B, T, H, dn) -> W_UK_h^T q_nope_h (B, T, H, kv_lora);
    - "expand_values": x = o_lat (B, C, H, kv_lora) -> W_UV_h o_lat_h (B, C, H, dv).
    """

    def __init__(self, kv_lora: int, n_heads: int, dn: int, dv: int) -> None:
        super().__init__(kv_lora, n_heads * (dn + dv), bias=False)
        self.n_heads, self.dn, self.dv, self.kv_lora = n_heads, dn, dv, kv_lora

    def forward(self, x: torch.Tensor, form: str = "latents") -> torch.Tensor:
        if form == "latents":
            return F.linear(x, self.weight)
        H, dn, dv, c = self.n_heads, self.dn, self.dv, self.kv_lora
        w = self.weight.view(H, dn + dv, c)  # (H, dn+dv, kv_lora)
        B, T = x.shape[:2]
        if form == "absorb_query":
            q = x.permute(2, 0, 1, 3).reshape(H, B * T, dn)  # (H, B*T, dn)
            return torch.bmm(q, w[:, :dn]).view(H, B, T, c).permute(1, 2, 0, 3)
        if form == "expand_values":
            o = x.permute(2, 0, 1, 3).reshape(H, B * T, c)  # (H, B*C, kv_lora)
            return torch.bmm(o, w[:, dn:].transpose(1, 2)).view(H, B, T, dv).permute(1, 2, 0, 3)
        raise ValueError(f"form={form!r}: allowed 'latents', 'absorb_query', 'expand_values'")


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows of x (B, S, D) at positions idx (B, C, k) in [0, S) -> (B, C, k, D), one flat
    `index_select` (no advanced indexing). x may be a slice [:, :S] of a larger (B, capacity, D)
    buffer (a cache): the rows are then addressed through the buffer's own strides, without a copy."""
    B, S, D = x.shape
    C, k = idx.shape[1:]
    if B > 1 and x.stride(2) == 1 and x.stride(1) == D and x.stride(0) % D == 0 and not x.requires_grad:
        rows = x.stride(0) // D  # rows between two batch entries (capacity for a cache slice)
        flat = x.as_strided(((B - 1) * rows + S, D), (D, 1))  # (rows of every batch entry, D)
    else:
        rows = S
        flat = x.reshape(B * S, D)  # a view when x is contiguous
    offset = torch.arange(B, device=idx.device).view(B, 1, 1) * rows
    return flat.index_select(0, (idx + offset).view(-1)).view(B, C, k, D)


class MLAttention(SparseAttention):
    """One MLA + DSA attention layer: MLA projections and attention cores over the shared DSA core
    (`rl.policy.sparse.SparseAttention`: indexer, cache write, selection, replay, KL)."""

    def __init__(self, config: DSAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.dn, self.dr, self.dv = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.kv_lora = config.kv_lora_rank
        self.topk = config.index_topk
        self.chunk = config.attention_chunk_size
        self.scale = yarn_softmax_scale(config.rope_yarn, (self.dn + self.dr) ** -0.5)
        self.q_a = nn.Linear(config.hidden_size, config.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
        self.q_b = nn.Linear(config.q_lora_rank, self.n_heads * (self.dn + self.dr), bias=False)
        self.kv_a = nn.Linear(config.hidden_size, self.kv_lora + self.dr, bias=False)
        self.kv_norm = RMSNorm(self.kv_lora, config.rms_norm_eps)
        self.kv_b = KVUpProjection(self.kv_lora, self.n_heads, self.dn, self.dv)
        self.o = nn.Linear(self.n_heads * self.dv, config.hidden_size, bias=False)
        self.indexer = LightningIndexer(config)

    # ---- the SparseAttention hooks --------------------------------------------------------------
    def path(self, num_queries: int, num_keys: int, ctx: AttentionContext) -> str:
        """Dense mode: "expanded"; sparse: `attention_path` (not "gather" when maps are asked for)."""
        if ctx.mode == "dense":
            return "expanded"
        path = attention_path(num_queries, num_keys, self.topk, self.n_heads, self.kv_lora, self.dn, self.dv,
                              self.chunk)
        return "absorbed" if path == "gather" and ctx.want_maps else path

    def project(self, h: torch.Tensor, ctx: AttentionContext) -> dict[str, torch.Tensor]:
        """Per-token projections of h (B, T, d): query latent, RoPE'd queries, the new cache entries
        [c_kv; k_rope], the absorbed query (unless the call takes the expanded path) and (when the
        indexer runs) the indexer's queries and head weights.
        Everything here costs O(1) per token; `attend` holds all the work that grows with context."""
        B, T, _ = h.shape
        cos, sin = ctx.rope
        q_latent = self.q_norm(self.q_a(h))  # (B, T, q_lora)
        q = self.q_b(q_latent).view(B, T, self.n_heads, self.dn + self.dr)  # (B, T, H, dn+dr)
        q_nope, q_rope = q.split([self.dn, self.dr], dim=-1)
        c_kv, k_rope = self.kv_a(h).split([self.kv_lora, self.dr], dim=-1)
        p = {
            "h": h, "q_latent": q_latent, "q_nope": q_nope,
            "q_rope": apply_rope(q_rope, cos.unsqueeze(2), sin.unsqueeze(2)),
            "entry": torch.cat([self.kv_norm(c_kv), apply_rope(k_rope, cos, sin)], dim=-1),  # (B, T, kv_lora+dr)
            "index_k": self.indexer.keys(h, *ctx.index_rope),  # (B, T, d_I)
        }
        if self.path(T, ctx.key_valid.shape[1], ctx) != "expanded":
            p["q_cat"] = torch.cat([self.kv_b(q_nope, "absorb_query"), p["q_rope"]], dim=-1)  # (B, T, H, kv_lora+dr)
        if self.indexer_needed(ctx):
            p["index_q"] = self.indexer.queries(q_latent, *ctx.index_rope)  # (B, T, H_I, d_I) fp32
            p["index_w"] = self.indexer.head_weights(h)  # (B, T, H_I) fp32
        return p

    def prepare(self, p: dict[str, torch.Tensor], latents: torch.Tensor, path: str):
        """Expanded path: K/V decompressed per head once, (B, S, H, dn) and (B, S, H, dv); else None."""
        if path != "expanded":
            return None
        B, S = latents.shape[:2]
        kv = self.kv_b(latents[..., : self.kv_lora]).view(B, S, self.n_heads, self.dn + self.dv)
        return kv.split([self.dn, self.dv], dim=-1)

    def core(self, state, p, latents, q0, q1, sel, allowed, path) -> CoreOut:
        """Query rows q0:q1 over the latents (B, S, kv_lora+dr) on `path`."""
        if path == "gather":
            o_lat, probs, support = self.attend_gathered(p["q_cat"][:, q0:q1], latents, sel)
            return CoreOut(self.kv_b(o_lat, "expand_values"), probs, 2, support, sel)  # (B, C, H, dv)
        mask = allowed if sel is None else allowed & indices_to_mask(sel, latents.shape[1])  # (B, C, S)
        if path == "expanded":
            k_nope, values = state
            o, probs = self._dense(p["q_nope"][:, q0:q1], p["q_rope"][:, q0:q1], k_nope, latents, values, mask)
        else:
            o_lat, probs = self.attend_masked(p["q_cat"][:, q0:q1], latents, mask)
            o = self.kv_b(o_lat, "expand_values")  # (B, C, H, dv)
        return CoreOut(o, probs, 1, mask)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        return self.o(out)

    # ---- attention cores (public: the rollout's static decode step calls the absorbed ones) --------
    def _dense(self, q_nope, q_rope, k_nope, latents, values, allowed):
        """Non-absorbed MLA over allowed keys (B, C, S). Returns out (B, C, H, dv), probs (B, H, C, S)."""
        k_rope = latents[..., self.kv_lora:]  # (B, S, dr)
        scores = torch.einsum("bthn,bshn->bhts", q_nope, k_nope)
        scores = scores + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)
        scores = (scores * self.scale).masked_fill(~allowed[:, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(values.dtype)  # (B, H, C, S)
        return torch.einsum("bhts,bshv->bthv", probs, values), probs

    def attend_masked(self, q_cat, latents, mask):
        """Absorbed attention over all S latents, -inf outside mask (B, C, S).

        q_cat (B, C, H, kv_lora+dr): [W_UK^T q_nope; q_rope]. Returns o_lat (B, C, H, kv_lora) and
        probs (B, H, C, S)."""
        scores = torch.einsum("bthd,bsd->bhts", q_cat * self.scale, latents)  # (B, H, C, S)
        scores = scores.masked_fill_(~mask[:, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(latents.dtype)
        return torch.einsum("bhts,bsc->bthc", probs, latents[..., : self.kv_lora]), probs

    def attend_gathered(self, q_cat, latents, sel):
        """Absorbed attention over the k gathered latents of each query (MQA: one gather, all heads).

        q_cat (B, C, H, D); latents (B, S, D); sel (B, C, k) with -1 padding.
        Returns o_lat (B, C, H, kv_lora), probs (B, C, H, k) and the support mask (B, C, k)."""
        B, C, H, D = q_cat.shape
        k = sel.shape[-1]
        support = sel >= 0
        picked = gather_rows(latents, sel.clamp(min=0)).view(B * C, k, D)  # (B*C, k, D)
        q = (q_cat * self.scale).reshape(B * C, H, D)
        scores = torch.bmm(q, picked.transpose(1, 2))  # (B*C, H, k)
        scores = scores.view(B, C, H, k).masked_fill_(~support[:, :, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(latents.dtype)  # (B, C, H, k)
        o_lat = torch.bmm(probs.view(B * C, H, k), picked[..., : self.kv_lora])  # (B*C, H, kv_lora)
        return o_lat.view(B, C, H, self.kv_lora), probs, support
