"""`DSALlamaForCausalLM` (model_type "dsa_llama"): a Llama/Qwen2-family model made sparse by DSA.

The attention is the source model's MHA/GQA attention (q/k/v/o projections with the source's
parameter names, the HF rotary embedding module, so any rope scaling the source uses is kept) over
the shared DSA core (`rl.policy.sparse.SparseAttention`) and the shared decoder and forward
(`rl.policy.decoder`): the indexer, the selection, the replay, the cache and the forward keywords
are those of the native `DSAForCausalLM`; only the projections differ.
- dense mode (`attention_mode="dense"`): plain causal attention, exactly the source model.
- sparse mode: the indexer scores every earlier key, `select_topk` keeps k per query (ties toward
  the lower position); query t attends only to its selected keys (all heads share the selection,
  like MLA's MQA mode). If every key fits in k the result is exactly dense attention.
The indexer (`rl.policy.indexer.LightningIndexer`) reads the layer's normed input h both as its
query input (there is no MLA query latent here, so `q_lora_rank` = hidden_size) and for its keys
and head weights; its inputs are detached as in the native policy. Its RoPE is the project's
half-split RoPE with the source's rope_theta (plain, no scaling). The cache's per-layer entry is
[k (post-RoPE); v] of width 2 * num_key_value_heads * head_dim. Expert routes do not exist (no MoE).

Departures: the sparse path computes scores against all S keys and masks the unselected ones
(no gather of the k selected keys): the result is DSA's, the cost is still O(L^2). Sliding-window
attention of Qwen2 (off by default there) is not supported.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, LlamaConfig
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from rl.policy.configuration import DSASparseConfig
from rl.policy.decoder import DecoderLayer, DSACausalLM, DSAPreTrainedBase
from rl.policy.indexer import LightningIndexer, indices_to_mask
from rl.policy.layers import rope_cos_sin
from rl.policy.sparse import AttentionContext, CoreOut, SparseAttention


class DSALlamaConfig(DSASparseConfig, LlamaConfig):
    """A Llama/Qwen2-family shape plus the DSA settings of `DSASparseConfig` (model_type "dsa_llama")."""

    model_type = "dsa_llama"

    qkv_bias: bool | None = None
    """Bias on q/k/v projections; None = `attention_bias` (Llama). Qwen2: True."""
    o_bias: bool | None = None
    """Bias on the output projection; None = `attention_bias` (Llama). Qwen2: False."""
    source_model_type: str = "llama"
    """model_type of the converted checkpoint (informational)."""

    def __post_init__(self, **kwargs: Any) -> None:
        if self.qkv_bias is None:
            self.qkv_bias = self.attention_bias
        if self.o_bias is None:
            self.o_bias = self.attention_bias
        super().__post_init__(**kwargs)

    # Names the shared DSA code reads (LightningIndexer, DSACache, rollout engine, trainer).
    @property
    def q_lora_rank(self) -> int:
        """Width of the indexer's query input: the layer's normed hidden state."""
        return self.hidden_size

    @property
    def latent_dim(self) -> int:
        """Width of one cached entry [k; v] per layer (DSACache)."""
        return 2 * self.num_key_value_heads * self.head_dim

    @property
    def use_moe(self) -> bool:
        return False

    @property
    def moe_layer_indices(self) -> list[int]:
        return []


class GQAttention(SparseAttention):
    """Llama/Qwen2 GQA projections (same parameter names) over the shared DSA core."""

    def __init__(self, config: DSALlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.topk, self.chunk = config.index_topk, config.attention_chunk_size
        d, H, Hkv, D = config.hidden_size, self.n_heads, self.n_kv, self.head_dim
        self.q_proj = nn.Linear(d, H * D, bias=config.qkv_bias)
        self.k_proj = nn.Linear(d, Hkv * D, bias=config.qkv_bias)
        self.v_proj = nn.Linear(d, Hkv * D, bias=config.qkv_bias)
        self.o_proj = nn.Linear(H * D, d, bias=config.o_bias)
        self.indexer = LightningIndexer(config)

    def path(self, num_queries: int, num_keys: int, ctx: AttentionContext) -> str:
        return "masked"  # one core: scores over all S keys, -inf outside the selection

    def project(self, h: torch.Tensor, ctx: AttentionContext) -> dict[str, torch.Tensor]:
        """h (B, T, d) -> RoPE'd queries (B, H, T, D), the cache entries [k; v] (B, T, 2 Hkv D), the
        indexer keys, and (when the indexer runs) its queries (read from h) and head weights."""
        B, T, _ = h.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        q = self.q_proj(h).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(h).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(h).view(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *ctx.rope)
        entry = torch.cat([k.transpose(1, 2).reshape(B, T, Hkv * D), v.transpose(1, 2).reshape(B, T, Hkv * D)], -1)
        p = {"h": h, "q": q, "entry": entry, "index_k": self.indexer.keys(h, *ctx.index_rope)}
        if self.indexer_needed(ctx):
            p["index_q"] = self.indexer.queries(h, *ctx.index_rope)  # (B, T, H_I, d_I) fp32
            p["index_w"] = self.indexer.head_weights(h)  # (B, T, H_I) fp32
        return p

    def prepare(self, p: dict[str, torch.Tensor], entries: torch.Tensor, path: str):
        """Keys and values of all S slots, (B, Hkv, 1, S, D) each: a group of G query heads shares one."""
        B, S = entries.shape[:2]
        Hkv, D = self.n_kv, self.head_dim
        k_all, v_all = (t.reshape(B, S, Hkv, D).transpose(1, 2) for t in entries.split(Hkv * D, dim=-1))
        return k_all.unsqueeze(2), v_all.unsqueeze(2)

    def core(self, state, p, entries, q0, q1, sel, allowed, path) -> CoreOut:
        """Query rows q0:q1 over all S keys, -inf outside `allowed` & the selection."""
        kk, vv = state
        q = p["q"]
        B, H, _, D = q.shape
        C, S, G = q1 - q0, entries.shape[1], H // self.n_kv
        mask = allowed if sel is None else allowed & indices_to_mask(sel, S)  # (B, C, S)
        qc = q[:, :, q0:q1].reshape(B, self.n_kv, G, C, D)  # (B, Hkv, G, C, D)
        scores = torch.matmul(qc, kk.transpose(-1, -2)) * self.scaling  # (B, Hkv, G, C, S)
        scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        out = torch.matmul(probs, vv).reshape(B, H, C, D).transpose(1, 2)  # (B, C, H, D)
        return CoreOut(out, probs.reshape(B, H, C, S), 1, mask)

    def output(self, out: torch.Tensor) -> torch.Tensor:
        return self.o_proj(out)


class DSALlamaDecoderLayer(DecoderLayer):
    """Pre-norm block with the source's parameter names: input_layernorm, self_attn, post_attention_layernorm, mlp."""

    parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")

    def __init__(self, config: DSALlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = GQAttention(config, layer_idx)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)


class DSALlamaPreTrainedModel(DSAPreTrainedBase):
    config_class = DSALlamaConfig
    config: DSALlamaConfig
    _no_split_modules = ["DSALlamaDecoderLayer"]  # noqa: RUF012 (transformers reads a list)


class DSALlamaModel(DSALlamaPreTrainedModel):
    """Embeddings + decoder layers + final norm + the source's rotary embedding module."""

    def __init__(self, config: DSALlamaConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DSALlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()


class DSALlamaForCausalLM(DSACausalLM, DSALlamaPreTrainedModel, GenerationMixin):
    """Causal LM over `DSALlamaModel`; forward: `rl.policy.decoder.DSACausalLM`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012 (used iff tie_word_embeddings)

    def __init__(self, config: DSALlamaConfig) -> None:
        super().__init__(config)
        self.model = DSALlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def rope_tables(self, h: torch.Tensor, position_ids: torch.Tensor):
        """The source's RoPE (HF layout, each (B, T, head_dim), its scaling kept) and the indexer's
        half-split tables (B, T, index_head_dim / 4) with the source's rope_theta."""
        theta = float(self.config.rope_parameters["rope_theta"])
        return (self.model.rotary_emb(h, position_ids),
                rope_cos_sin(position_ids, self.config.index_head_dim // 2, theta))


AutoConfig.register("dsa_llama", DSALlamaConfig)
AutoModelForCausalLM.register(DSALlamaConfig, DSALlamaForCausalLM)
