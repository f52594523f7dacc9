"""Forward multiply-add (MAC) accounting for DSA policies, from the config alone (no weights).

Counted per token: every weight matmul the token goes through (active parameters only: shared +
top-k routed experts, the LM head; not the embedding lookup, norms, softmax or RoPE), plus the
attention core and the lightning indexer, which grow with the context:
- attention core over n keys, absorbed/MQA form (how sparse mode and the decode benchmark run):
  H * n * (kv_lora + dr)  [q . [c_kv; k_rope]]  +  H * n * kv_lora  [probs @ c_kv];
  per-head form (dense mode's non-absorbed MLA): H * n * (dn + dr + dv).
  The per-token W_UK/W_UV (absorbed) or kv_b (per-head) matmul costs the same either way and is in
  `linear`.
- indexer over all L keys when L > index_topk (below that every key is selected and the indexer is
  skipped): H_I * L * d_I (q.k) + H_I * L (head-weighted sum).
Dense mode attends n = L keys; sparse mode n = min(index_topk, L). FLOPs = 2 x MACs; a training
step (forward + backward) is ~3x the forward.

V3.2 at L = 128K, one layer's core, absorbed dense vs DSA: 128*(576+512) = 139,264 MACs per key vs
64*128 + 64 = 8,256 per key plus 139,264 * 2048: ratio ~13.4 (limit ~16.9 as L grows).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rl.policy.configuration import DSAConfig


@dataclass(frozen=True)
class ForwardCost:
    """Multiply-adds of one forward pass (of one token, or summed over a sequence)."""

    linear: int
    """Weight matmuls (projections, active experts, LM head)."""
    attention: int
    """Main attention core (scores + weighted sum of values)."""
    indexer: int
    """Lightning-indexer scoring."""

    @property
    def total(self) -> int:
        return self.linear + self.attention + self.indexer

    @property
    def flops(self) -> int:
        return 2 * self.total


def linear_macs_per_token(config: DSAConfig) -> int:
    """MACs of every weight matmul one token passes through (active experts only, LM head included)."""
    c = config
    H, d = c.num_attention_heads, c.hidden_size
    attn = (d * c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim + d * c.latent_dim
            + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim) + H * c.v_head_dim * d)
    indexer = c.q_lora_rank * c.index_n_heads * c.index_head_dim + d * c.index_head_dim + d * c.index_n_heads
    dense_ffn = 3 * d * c.intermediate_size
    moe_ffn = d * c.n_routed_experts + 3 * d * c.moe_intermediate_size * (c.num_experts_per_tok + c.n_shared_experts)
    n_moe = len(c.moe_layer_indices)
    ffn = n_moe * moe_ffn + (c.num_hidden_layers - n_moe) * dense_ffn
    return c.num_hidden_layers * (attn + indexer) + ffn + d * c.vocab_size


def attention_macs_per_key(config: DSAConfig, absorbed: bool) -> int:
    """Main-attention MACs per (query, attended key) pair, all heads of one layer."""
    c = config
    if absorbed:
        return c.num_attention_heads * (c.latent_dim + c.kv_lora_rank)
    return c.num_attention_heads * (c.qk_head_dim + c.v_head_dim)


def indexer_macs_per_key(config: DSAConfig) -> int:
    """Indexer MACs per (query, scored key) pair, one layer."""
    return config.index_n_heads * (config.index_head_dim + 1)


def forward_macs_per_token(
    config: DSAConfig, context_len: int, mode: str = "sparse", absorbed: bool | None = None
) -> ForwardCost:
    """MACs to run one token whose query sees `context_len` keys (itself included), all layers.

    mode: 'sparse' (attends min(index_topk, L) keys + indexer when L > index_topk) or 'dense'.
    absorbed: attention form; default True for sparse, False for dense (what the code runs).
    """
    if mode not in ("sparse", "dense"):
        raise ValueError(f"mode={mode!r}: allowed 'sparse', 'dense'")
    absorbed = (mode == "sparse") if absorbed is None else absorbed
    L, k, n_layers = context_len, config.index_topk, config.num_hidden_layers
    n_keys = L if mode == "dense" else min(k, L)
    indexer = n_layers * indexer_macs_per_key(config) * L if mode == "sparse" and L > k else 0
    return ForwardCost(
        linear=linear_macs_per_token(config),
        attention=n_layers * attention_macs_per_key(config, absorbed) * n_keys,
        indexer=indexer,
    )


def attended_pairs(seq_len: int, k: int, mode: str) -> tuple[int, int]:
    """(query, attended key) pairs of one causal sequence: (attended, all causal). Token t (1-based)
    sees t keys; sparse mode attends min(k, t) of them.

    >>> attended_pairs(4, 2, "sparse")  # 1 + 2 + 2 + 2 attended of 1 + 2 + 3 + 4
    (7, 10)
    """
    all_pairs = seq_len * (seq_len + 1) // 2  # sum_t t
    if mode == "dense":
        return all_pairs, all_pairs
    m = min(k, seq_len)
    return m * (m + 1) // 2 + (seq_len - m) * k, all_pairs  # sum_t min(k, t)


def sequence_forward_macs(
    config: DSAConfig, seq_len: int, mode: str = "sparse", absorbed: bool | None = None
) -> ForwardCost:
    """MACs of one forward over a whole sequence of `seq_len` tokens (prefill / training), all layers.

    Token t (1-based) sees t keys. In sparse mode the indexer runs for every query iff
    seq_len > index_topk (as the code does)."""
    if mode not in ("sparse", "dense"):
        raise ValueError(f"mode={mode!r}: allowed 'sparse', 'dense'")
    absorbed = (mode == "sparse") if absorbed is None else absorbed
    L, k, n_layers = seq_len, config.index_topk, config.num_hidden_layers
    pairs, all_pairs = attended_pairs(L, k, mode)
    indexer = n_layers * indexer_macs_per_key(config) * all_pairs if mode == "sparse" and L > k else 0
    return ForwardCost(
        linear=linear_macs_per_token(config) * L,
        attention=n_layers * attention_macs_per_key(config, absorbed) * pairs,
        indexer=indexer,
    )


def parameter_count(config: DSAConfig, active_only: bool = False) -> int:
    """Parameters of `DSAForCausalLM(config)` computed from shapes (no weights built).

    active_only: count only the shared + top-k routed experts of each MoE layer (and skip the
    embedding table, as active-parameter figures usually do not)."""
    c = config
    H, d = c.num_attention_heads, c.hidden_size
    attn = (d * c.q_lora_rank + c.q_lora_rank + c.q_lora_rank * H * c.qk_head_dim + d * c.latent_dim
            + c.kv_lora_rank + c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim) + H * c.v_head_dim * d)
    indexer = (c.q_lora_rank * c.index_n_heads * c.index_head_dim + d * c.index_head_dim + 2 * c.index_head_dim
               + d * c.index_n_heads)
    expert = 3 * d * c.moe_intermediate_size
    n_experts = c.num_experts_per_tok if active_only else c.n_routed_experts
    moe = d * c.n_routed_experts + expert * (n_experts + c.n_shared_experts)
    n_moe = len(c.moe_layer_indices)
    layers = c.num_hidden_layers * (attn + indexer + 2 * d) + n_moe * moe
    layers += (c.num_hidden_layers - n_moe) * 3 * d * c.intermediate_size
    embed = 0 if active_only else c.vocab_size * d
    return layers + embed + d + d * c.vocab_size


def gqa_sequence_forward_macs(config: Any, seq_len: int, mode: str = "sparse") -> ForwardCost:
    """Forward MACs of one sequence of a converted Llama/Qwen2 (`dsa_llama`).

    Linear: q/k/v/o + indexer projections + SwiGLU + LM head per token. Attention: H * (D + D) per
    (query, attended key); the masked sparse path still scores every key but counts as attending k
    (what a gathered kernel would cost). Indexer: H_I * (d_I + 1) per (query, key) when it runs."""
    c, L = config, seq_len
    d, H, Hkv, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    attn_lin = d * H * D * 2 + d * Hkv * D * 2
    idx_lin = d * c.index_n_heads * c.index_head_dim + d * c.index_head_dim + d * c.index_n_heads
    linear = L * (c.num_hidden_layers * (attn_lin + idx_lin + 3 * d * c.intermediate_size) + d * c.vocab_size)
    pairs, all_pairs = attended_pairs(L, c.index_topk, mode)
    indexer = c.num_hidden_layers * c.index_n_heads * (c.index_head_dim + 1) * all_pairs \
        if mode == "sparse" and L > c.index_topk else 0
    return ForwardCost(linear=linear, attention=c.num_hidden_layers * H * 2 * D * pairs, indexer=indexer)
