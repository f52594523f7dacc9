"""Multi-head Latent Attention (MLA) with DeepSeek Sparse Attention (DSA).

Projections (per token h, shapes for one token):
    c_q = RMSNorm(W_qa h)                        (q_lora)        also the indexer's query input
    [q_nope; q_rope] = W_qb c_q                  (H, dn + dr)    RoPE on q_rope
    [c_kv; k_rope] = W_kva h                     (kv_lora + dr)  c_kv RMSNorm'd, RoPE on k_rope
    cached entry  e_s = [c_kv; k_rope]           (kv_lora + dr)  shared by all heads
    W_kvb = [W_UK; W_UV] per head                (H, dn + dv, kv_lora)
    score_h(t, s) = (q_nope_h . W_UK_h c_s + q_rope_h . k_rope_s) / sqrt(dn + dr)

Three attention paths, all over keys `allowed` = causal & not padding (a query always sees itself,
so rows of padding queries are never empty):
- dense (`attention_mode="dense"`): classic MLA, K and V decompressed per head from the latents.
  The test oracle and the mode of the dense indexer warm-up.
- sparse, masked: MQA/absorbed form (q_abs_h = W_UK_h^T q_nope_h, attention against the latent
  entries, W_UV applied after), logits of unselected keys set to -inf. Used when every key fits in
  k (then it is exactly dense causal attention and the indexer is skipped unless its output or loss
  is asked for) and for long multi-token prefill chunks where gathering k latents per query would
  cost more memory than the score matrix.
- sparse, gathered: absorbed form over the k gathered latent entries of each query: one gather of
  [c_kv; k_rope] serves every head. Decode and short chunks.
The path is a function of shapes only, so replaying a selection runs the same arithmetic.

Memory bound of one layer's prefill: queries are processed in chunks of C = attention_chunk_size
rows; per chunk the largest tensors are the indexer logits (B, C, H_I, S) fp32 and the attention
scores (B, H, C, S) (masked path) or the gathered latents (B, C, k, kv_lora + dr): all O(B C S).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rl.policy.cache import DSACache
from rl.policy.configuration import DSAConfig
from rl.policy.indexer import LightningIndexer, index_scores, indices_to_mask, select_topk
from rl.policy.indexer_loss import indexer_kl
from rl.policy.layers import RMSNorm, apply_rope


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
    """MLA RoPE cos/sin, each (B, T, qk_rope_head_dim / 2)."""
    index_rope: tuple[torch.Tensor, torch.Tensor]
    """Indexer RoPE cos/sin, each (B, T, index_head_dim / 4)."""
    want_topk: bool
    """Return the selected positions of every query."""
    want_indexer_loss: bool
    """Compute the indexer KL loss (dense mode: warm-up loss over all keys; sparse: over the selection)."""


@dataclass
class AttentionOutput:
    hidden: torch.Tensor
    """(B, T, d) attention output after W_o."""
    topk_indices: torch.Tensor | None
    """(B, T, index_topk) long, ascending positions, -1 padded; sparse mode only."""
    indexer_kl_sum: torch.Tensor | None
    """Scalar: sum over non-padding queries of the per-query indexer KL."""


def use_gather_path(num_keys: int, k: int, n_heads: int) -> bool:
    """True when gathering k latents per query beats scoring all S keys: a rule on shapes only.

    Multiply-adds per query: gathered ~ k * (H + 1) latent widths, masked ~ H * S. So gather iff
    k * (H + 1) < H * S, i.e. essentially whenever k < S.
    """
    return k * (n_heads + 1) < n_heads * num_keys


class MLAttention(nn.Module):
    """One MLA + DSA attention layer (projections, lightning indexer, cache writes, attention)."""

    def __init__(self, config: DSAConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.dn, self.dr, self.dv = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.kv_lora = config.kv_lora_rank
        self.topk = config.index_topk
        self.chunk = config.attention_chunk_size
        self.scale = (self.dn + self.dr) ** -0.5
        self.q_a = nn.Linear(config.hidden_size, config.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(config.q_lora_rank, config.rms_norm_eps)
        self.q_b = nn.Linear(config.q_lora_rank, self.n_heads * (self.dn + self.dr), bias=False)
        self.kv_a = nn.Linear(config.hidden_size, self.kv_lora + self.dr, bias=False)
        self.kv_norm = RMSNorm(self.kv_lora, config.rms_norm_eps)
        self.kv_b = nn.Linear(self.kv_lora, self.n_heads * (self.dn + self.dv), bias=False)
        self.o = nn.Linear(self.n_heads * self.dv, config.hidden_size, bias=False)
        self.indexer = LightningIndexer(config)

    # ---- pieces ---------------------------------------------------------------------------------
    def _uk_uv(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.kv_b.weight.view(self.n_heads, self.dn + self.dv, self.kv_lora)  # (H, dn+dv, kv_lora)
        return w[:, : self.dn], w[:, self.dn:]  # (H, dn, kv_lora), (H, dv, kv_lora)

    def _allowed(self, ctx: AttentionContext, q0: int, q1: int) -> torch.Tensor:
        """(B, q1-q0, S) bool: key s visible to query slot start+i (causal, not padding, or itself)."""
        S = ctx.key_valid.shape[1]
        key_pos = torch.arange(S, device=ctx.key_valid.device)
        q_pos = ctx.start + torch.arange(q0, q1, device=ctx.key_valid.device)
        causal = key_pos[None, :] <= q_pos[:, None]  # (C, S)
        is_self = key_pos[None, :] == q_pos[:, None]
        return causal & (ctx.key_valid[:, None, :] | is_self)

    def _absorb_query(self, q_nope: torch.Tensor) -> torch.Tensor:
        """(B, T, H, dn) -> q_abs (B, T, H, kv_lora) = W_UK_h^T q_nope_h (bmm on strided weight views)."""
        B, T, H, _ = q_nope.shape
        w_uk, _ = self._uk_uv()
        q = q_nope.permute(2, 0, 1, 3).reshape(H, B * T, self.dn)  # (H, B*T, dn)
        return torch.bmm(q, w_uk).view(H, B, T, self.kv_lora).permute(1, 2, 0, 3)

    def _expand_values(self, o_lat: torch.Tensor) -> torch.Tensor:
        """(B, C, H, kv_lora) -> (B, C, H, dv): apply W_UV_h after attending over latents."""
        B, C, H, _ = o_lat.shape
        _, w_uv = self._uk_uv()
        o = o_lat.permute(2, 0, 1, 3).reshape(H, B * C, self.kv_lora)  # (H, B*C, kv_lora)
        return torch.bmm(o, w_uv.transpose(1, 2)).view(H, B, C, self.dv).permute(1, 2, 0, 3)

    def project(self, h: torch.Tensor, ctx: AttentionContext) -> dict[str, torch.Tensor]:
        """Per-token projections of h (B, T, d): query latent, RoPE'd queries, the new cache entries,
        and (sparse mode / indexer loss) the absorbed query and the indexer's queries and head weights.
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
        if ctx.mode == "sparse":  # absorbed query [W_UK^T q_nope; q_rope]: (B, T, H, kv_lora+dr)
            p["q_cat"] = torch.cat([self._absorb_query(q_nope), p["q_rope"]], dim=-1)
        if ctx.mode == "sparse" or ctx.want_indexer_loss:
            p["index_q"] = self.indexer.queries(q_latent, *ctx.index_rope)  # (B, T, H_I, d_I) fp32
            p["index_w"] = self.indexer.head_weights(h)  # (B, T, H_I) fp32
        return p

    def forward(
        self,
        h: torch.Tensor,
        ctx: AttentionContext,
        cache: DSACache | None,
        topk_indices: torch.Tensor | None = None,
    ) -> AttentionOutput:
        """h: (B, T, d). topk_indices: optional (B, T, index_topk) selection to enforce (replay)."""
        if ctx.mode == "dense" and topk_indices is not None:
            raise ValueError("topk_indices (selection replay) needs attention_mode='sparse'")
        p = self.project(h, ctx)
        if cache is not None:
            latents, keys_i = cache.write(self.layer_idx, ctx.start, p["entry"], p["index_k"])  # (B, S, .)
        else:
            latents, keys_i = p["entry"], p["index_k"]
        out, topk, kl_sum = self.attend(p, latents, keys_i, ctx, topk_indices)
        return AttentionOutput(self.o(out), topk, kl_sum)

    def attend(
        self,
        p: dict[str, torch.Tensor],
        latents: torch.Tensor,
        keys_i: torch.Tensor,
        ctx: AttentionContext,
        topk_indices: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The attention proper, given projections `p` and all keys: latents (B, S, kv_lora+dr),
        indexer keys (B, S, d_I). Returns (heads output (B, T, H*dv) before W_o, selection, KL sum)."""
        h, q_nope, q_rope = p["h"], p["q_nope"], p["q_rope"]
        B, T, H, _ = q_nope.shape
        S = latents.shape[1]
        # Select with the indexer unless replaying, or unless every key fits in k and nobody asked.
        need_selection = ctx.mode == "sparse" and topk_indices is None and (S > self.topk or ctx.want_topk)
        run_indexer = need_selection or ctx.want_indexer_loss
        if run_indexer:
            index_q, index_w, keys_f = p["index_q"], p["index_w"], keys_i.float()
        if ctx.mode == "dense":
            w_uk, w_uv = self._uk_uv()
            k_nope = torch.einsum("bsc,hnc->bshn", latents[..., : self.kv_lora], w_uk)  # (B, S, H, dn)
            values = torch.einsum("bsc,hvc->bshv", latents[..., : self.kv_lora], w_uv)  # (B, S, H, dv)
        else:
            q_cat = p["q_cat"]

        outs, sels = [], []
        kl_sum = h.new_zeros((), dtype=torch.float32) if ctx.want_indexer_loss else None
        for q0 in range(0, T, self.chunk):
            q1 = min(T, q0 + self.chunk)
            allowed = self._allowed(ctx, q0, q1)  # (B, C, S)
            scores_i = index_scores(index_q[:, q0:q1], keys_f, index_w[:, q0:q1]) if run_indexer else None
            if ctx.mode == "dense":
                o, probs = self._dense(q_nope[:, q0:q1], q_rope[:, q0:q1], k_nope, latents, values, allowed)
                if kl_sum is not None:
                    kl_sum = kl_sum + self._kl(scores_i, probs, 1, allowed, ctx, q0)
                outs.append(o)
                continue
            if topk_indices is not None:
                sel = topk_indices[:, q0:q1]
            elif need_selection:
                sel = select_topk(scores_i, allowed, self.topk)  # (B, C, k)
            else:
                sel = None
            if sel is not None and ctx.want_topk:
                sels.append(sel)
            if use_gather_path(S, self.topk, H):
                o_lat, probs, support = self._gathered(q_cat[:, q0:q1], latents, sel)
                if kl_sum is not None:
                    scores_sel = scores_i.gather(-1, sel.clamp(min=0))  # (B, C, k)
                    kl_sum = kl_sum + self._kl(scores_sel, probs, 2, support, ctx, q0)
            else:
                mask = allowed if sel is None else allowed & indices_to_mask(sel, S)
                o_lat, probs = self._masked(q_cat[:, q0:q1], latents, mask)
                if kl_sum is not None:
                    kl_sum = kl_sum + self._kl(scores_i, probs, 1, mask, ctx, q0)
            outs.append(self._expand_values(o_lat))  # (B, C, H, dv)
        out = torch.cat(outs, dim=1).reshape(B, T, H * self.dv)
        topk = torch.cat(sels, dim=1) if sels else None
        return out, topk, kl_sum

    # ---- attention cores ------------------------------------------------------------------------
    def _dense(self, q_nope, q_rope, k_nope, latents, values, allowed):
        """Non-absorbed MLA over allowed keys. Returns out (B, C, H, dv), probs (B, H, C, S)."""
        k_rope = latents[..., self.kv_lora:]  # (B, S, dr)
        scores = torch.einsum("bthn,bshn->bhts", q_nope, k_nope)
        scores = scores + torch.einsum("bthr,bsr->bhts", q_rope, k_rope)
        scores = (scores * self.scale).masked_fill(~allowed[:, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(values.dtype)  # (B, H, C, S)
        return torch.einsum("bhts,bshv->bthv", probs, values), probs

    def _masked(self, q_cat, latents, mask):
        """Absorbed attention over all S latents, -inf outside mask (B, C, S).

        Returns o_lat (B, C, H, kv_lora) and probs (B, H, C, S)."""
        scores = torch.einsum("bthd,bsd->bhts", q_cat * self.scale, latents)  # (B, H, C, S)
        scores = scores.masked_fill_(~mask[:, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(latents.dtype)
        return torch.einsum("bhts,bsc->bthc", probs, latents[..., : self.kv_lora]), probs

    def _gathered(self, q_cat, latents, sel):
        """Absorbed attention over the k gathered latents of each query (MQA: one gather, all heads).

        q_cat (B, C, H, D); latents (B, S, D); sel (B, C, k) with -1 padding.
        Returns o_lat (B, C, H, kv_lora), probs (B, C, H, k) and the support mask (B, C, k)."""
        B, C, H, D = q_cat.shape
        k = sel.shape[-1]
        support = sel >= 0
        rows = torch.arange(B, device=sel.device).view(B, 1, 1)
        picked = latents[rows, sel.clamp(min=0)].view(B * C, k, D)  # (B*C, k, D): whole rows copied
        q = (q_cat * self.scale).reshape(B * C, H, D)
        scores = torch.bmm(q, picked.transpose(1, 2))  # (B*C, H, k)
        scores = scores.view(B, C, H, k).masked_fill_(~support[:, :, None], float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(latents.dtype)  # (B, C, H, k)
        o_lat = torch.bmm(probs.view(B * C, H, k), picked[..., : self.kv_lora])  # (B*C, H, kv_lora)
        return o_lat.view(B, C, H, self.kv_lora), probs, support

    def _kl(self, scores_i, probs, head_dim, support, ctx, q0):
        """Sum of indexer KL over the real (non-padding) queries of this chunk (target detached).

        scores_i: (B, C, N); probs: (B, H, C, N) (head_dim 1) or (B, C, H, N) (head_dim 2);
        support: (B, C, N) bool. The target is the head sum of probs, L1-normalised over N."""
        C = scores_i.shape[1]
        target = probs.detach().float().sum(head_dim)  # (B, C, N)
        target = target / target.sum(-1, keepdim=True)
        per_query = indexer_kl(scores_i, target, support)  # (B, C)
        real = ctx.key_valid[:, ctx.start + q0: ctx.start + q0 + C]
        return (per_query * real).sum()
