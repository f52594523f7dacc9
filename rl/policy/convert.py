"""Turn a Llama/Qwen2-family checkpoint into a DSA policy: `DSALlamaForCausalLM` (model_type "dsa_llama").

`convert_pretrained(src)` loads a `transformers` Llama- or Qwen2-family causal LM (local directory or
hub id), copies every weight unchanged into a `DSALlamaForCausalLM` (same state-dict names) and
adds a freshly initialised lightning indexer to every attention layer. After `import rl.policy`
the saved result loads with `AutoModelForCausalLM.from_pretrained`.

The attention is the source model's MHA/GQA attention (q/k/v/o projections, HF rotary embedding
module, so any rope scaling the source uses is kept), made sparse by DSA:
- dense mode (`attention_mode="dense"`): plain causal attention, exactly the source model.
- sparse mode: the indexer scores every earlier key, `select_topk` keeps k per query (ties toward
  the lower position); query t attends only to its selected keys (all heads share the selection,
  like MLA's MQA mode). If every key fits in k the result is exactly dense attention.
The indexer (`rl.policy.indexer.LightningIndexer`) reads the layer's normed input h both as its
query input (there is no MLA query latent here, so `q_lora_rank` = hidden_size) and for its keys
and head weights; its inputs are detached as in the native policy. Its RoPE is the project's
half-split RoPE with the source's rope_theta (plain, no scaling).

Forward keywords are those of `DSAForCausalLM` (`attention_mode`, `output_topk_indices`,
`topk_indices` replay, `output_indexer_loss`, `labels`, `cache`: a `DSACache` whose per-layer
"latent" entry is [k (post-RoPE); v] of width 2 * num_key_value_heads * head_dim) plus
`output_attention_maps=True` -> `output.attention_maps`: per layer (head-summed, L1-normalised attention
probabilities of this call's mode (B, T, S) fp32, indexer scores (B, T, S) fp32, allowed mask (B, T, S)) for
diagnostics (recall of the true top-k). Expert routes do not exist (no MoE): passing them raises.

Also here: `convert_model` / `convert_pretrained` (and the CLI `python -m rl.policy.convert SRC DST
[--index-topk K]`), `sequence_forward_macs` (budget accounting of this model), and `policy_config` /
`build_policy` / `policy_sequence_macs`, which dispatch on `model_type` ("dsa" or "dsa_llama") for
code that builds a policy from a config dict (rollout workers, the GRPO set-up, the budget).

Departures: the sparse path computes scores against all S keys and masks the unselected ones
(no gather of the k selected keys): the result is DSA's, the cost is still O(L^2). Sliding-window
attention of Qwen2 (off by default there) is not supported.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin, LlamaConfig, PreTrainedModel
from transformers.models.llama.modeling_llama import (
    LlamaMLP,
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from rl.policy.cache import DSACache
from rl.policy.flops import ForwardCost
from rl.policy.indexer import LightningIndexer, chunk_selection, index_scores, indices_to_mask
from rl.policy.indexer_loss import freeze_all_but_indexer, indexer_kl
from rl.policy.layers import rope_cos_sin
from rl.policy.modeling import DSACausalLMOutput

SOURCE_TYPES = ("llama", "qwen2")


class DSALlamaConfig(LlamaConfig):
    """A Llama/Qwen2-family shape plus the lightning indexer and DSA settings (model_type "dsa_llama")."""

    model_type = "dsa_llama"

    index_n_heads: int = 4
    """Lightning-indexer query heads H_I."""
    index_head_dim: int = 32
    """Lightning-indexer head dim d_I (RoPE on the first half); a multiple of 4."""
    index_topk: int = 32
    """k: keys each query attends to in sparse mode."""
    attention_mode: str = "sparse"
    """'sparse' (indexer + top-k) or 'dense' (the source model exactly); per-call override."""
    attention_chunk_size: int = 1024
    """Query rows processed at once per layer (bounds the B x H x C x S score memory)."""
    indexer_loss_weight: float = 1.0
    """Weight of the indexer KL when added to `output.loss`."""
    qkv_bias: bool | None = None
    """Bias on q/k/v projections; None = `attention_bias` (Llama). Qwen2: True."""
    o_bias: bool | None = None
    """Bias on the output projection; None = `attention_bias` (Llama). Qwen2: False."""
    source_model_type: str = "llama"
    """model_type of the converted checkpoint (informational)."""

    def __post_init__(self, **kwargs: Any) -> None:
        if self.attention_mode not in ("sparse", "dense"):
            raise ValueError(f"attention_mode={self.attention_mode!r}: allowed 'sparse', 'dense'")
        if self.index_head_dim % 4 != 0:
            raise ValueError(f"index_head_dim={self.index_head_dim}: must be a multiple of 4")
        if self.index_topk < 1 or self.attention_chunk_size < 1:
            raise ValueError("index_topk and attention_chunk_size must be >= 1")
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


@dataclass
class _Ctx:
    start: int
    key_valid: torch.Tensor  # (B, S) bool
    mode: str
    rope: tuple[torch.Tensor, torch.Tensor]  # HF layout, each (B, T, head_dim)
    index_rope: tuple[torch.Tensor, torch.Tensor]  # half-split tables, each (B, T, d_I / 4)
    want_topk: bool
    want_indexer_loss: bool
    want_maps: bool


class DSALlamaAttention(nn.Module):
    """Llama/Qwen2 GQA attention (same parameter names) + lightning indexer + top-k selection."""

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

    def _allowed(self, ctx: _Ctx, q0: int, q1: int) -> torch.Tensor:
        """(B, q1-q0, S) bool: causal, not padding (a query always sees itself)."""
        S = ctx.key_valid.shape[1]
        key_pos = torch.arange(S, device=ctx.key_valid.device)
        q_pos = ctx.start + torch.arange(q0, q1, device=ctx.key_valid.device)
        causal = key_pos[None, :] <= q_pos[:, None]  # (C, S)
        is_self = key_pos[None, :] == q_pos[:, None]
        return causal & (ctx.key_valid[:, None, :] | is_self)

    def forward(self, h: torch.Tensor, ctx: _Ctx, cache: DSACache | None,
                topk_indices: torch.Tensor | None = None):
        """h (B, T, d) normed input. Returns (out (B, T, d), selection (B, T, k) | None, KL sum | None, maps)."""
        if ctx.mode == "dense" and topk_indices is not None:
            raise ValueError("topk_indices (selection replay) needs attention_mode='sparse'")
        B, T, _ = h.shape
        H, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        q = self.q_proj(h).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(h).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(h).view(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, *ctx.rope)
        index_k = self.indexer.keys(h, *ctx.index_rope)  # (B, T, d_I)
        if cache is not None:
            entry = torch.cat([k.transpose(1, 2).reshape(B, T, Hkv * D), v.transpose(1, 2).reshape(B, T, Hkv * D)], -1)
            lat, keys_i = cache.write(self.layer_idx, ctx.start, entry, index_k)  # (B, S, 2*Hkv*D), (B, S, d_I)
            S = lat.shape[1]
            k_all, v_all = (t.reshape(B, S, Hkv, D).transpose(1, 2) for t in lat.split(Hkv * D, dim=-1))
        else:
            k_all, v_all, keys_i, S = k, v, index_k, T
        need_selection = ctx.mode == "sparse" and topk_indices is None and (S > self.topk or ctx.want_topk)
        run_indexer = need_selection or ctx.want_indexer_loss or ctx.want_maps
        if run_indexer:
            iq = self.indexer.queries(h, *ctx.index_rope)  # (B, T, H_I, d_I) fp32
            iw = self.indexer.head_weights(h)  # (B, T, H_I) fp32
            keys_f = keys_i.float()
        G = H // Hkv
        kk = k_all.unsqueeze(2)  # (B, Hkv, 1, S, D): every group of G query heads shares one kv head
        vv = v_all.unsqueeze(2)
        outs, sels, maps = [], [], []
        kl_sum = h.new_zeros((), dtype=torch.float32) if ctx.want_indexer_loss else None
        for q0 in range(0, T, self.chunk):
            q1 = min(T, q0 + self.chunk)
            C = q1 - q0
            allowed = self._allowed(ctx, q0, q1)  # (B, C, S)
            scores_i = index_scores(iq[:, q0:q1], keys_f, iw[:, q0:q1]) if run_indexer else None  # (B, C, S)
            sel = None
            if ctx.mode == "sparse":
                sel = chunk_selection(topk_indices, q0, q1, scores_i, allowed, self.topk, need_selection)  # (B, C, k)
                if sel is not None and ctx.want_topk:
                    sels.append(sel)
            mask = allowed if sel is None else allowed & indices_to_mask(sel, S)
            qc = q[:, :, q0:q1].reshape(B, Hkv, G, C, D)  # (B, Hkv, G, C, D)
            scores = torch.matmul(qc, kk.transpose(-1, -2)) * self.scaling  # (B, Hkv, G, C, S)
            scores = scores.masked_fill(~mask[:, None, None], float("-inf"))
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            outs.append(torch.matmul(probs, vv).reshape(B, H, C, D))  # (B, H, C, D)
            if kl_sum is not None or ctx.want_maps:
                target = probs.detach().float().sum((1, 2))  # (B, C, S): head-summed
                target = target / target.sum(-1, keepdim=True)
                if kl_sum is not None:
                    per_query = indexer_kl(scores_i, target, mask)  # (B, C)
                    real = ctx.key_valid[:, ctx.start + q0: ctx.start + q1]
                    kl_sum = kl_sum + (per_query * real).sum()
                if ctx.want_maps:
                    maps.append((target, scores_i.detach(), allowed))
        out = torch.cat(outs, dim=2).transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        topk = torch.cat(sels, dim=1) if sels else None
        amap = tuple(torch.cat(x, dim=1) for x in zip(*maps, strict=True)) if maps else None
        return self.o_proj(out), topk, kl_sum, amap


class DSALlamaDecoderLayer(nn.Module):
    """Pre-norm block with the source's parameter names: input_layernorm, self_attn, post_attention_layernorm, mlp."""

    def __init__(self, config: DSALlamaConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DSALlamaAttention(config, layer_idx)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, h, ctx, cache, topk_indices=None):
        a, sel, kl, amap = self.self_attn(self.input_layernorm(h), ctx, cache, topk_indices)
        h = h + a
        return h + self.mlp(self.post_attention_layernorm(h)), sel, kl, amap


class DSALlamaPreTrainedModel(PreTrainedModel):
    config_class = DSALlamaConfig
    config: DSALlamaConfig
    base_model_prefix = "model"
    _no_split_modules = ["DSALlamaDecoderLayer"]  # noqa: RUF012 (transformers reads a list)
    main_input_name = "input_ids"

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own DSACache


class DSALlamaModel(DSALlamaPreTrainedModel):
    """Embeddings + decoder layers + final norm + the source's rotary embedding module."""

    def __init__(self, config: DSALlamaConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DSALlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.post_init()


class DSALlamaForCausalLM(DSALlamaPreTrainedModel, GenerationMixin):
    """Causal LM over `DSALlamaModel`; forward as `DSAForCausalLM` (see the module docstring)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}  # noqa: RUF012 (used iff tie_word_embeddings)

    def __init__(self, config: DSALlamaConfig) -> None:
        super().__init__(config)
        self.model = DSALlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def freeze_all_but_indexer(self) -> list[nn.Parameter]:
        """Dense warm-up: freeze everything except the lightning indexers; returns their parameters."""
        return freeze_all_but_indexer(self)

    def new_cache(self, batch_size: int, max_len: int) -> DSACache:
        """A preallocated DSACache ([k; v] entries + indexer keys) on this model's device and dtype."""
        return DSACache.allocate(self.config, batch_size, max_len, self.device, self.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: DSACache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        attention_mode: str | None = None,
        output_topk_indices: bool = False,
        topk_indices: Sequence[torch.Tensor] | None = None,
        output_expert_routes: bool = False,
        expert_routes: Sequence[torch.Tensor] | None = None,
        output_indexer_loss: bool = False,
        output_attention_maps: bool = False,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DSACausalLMOutput:
        """input_ids (B, T) -> logits (B, T or logits_to_keep, vocab) fp32; see the module docstring."""
        cfg = self.config
        if "past_key_values" in kwargs:
            raise TypeError("DSALlamaForCausalLM takes the cache as `cache=`, not past_key_values")
        if expert_routes:
            raise ValueError("expert_routes given, but a converted Llama/Qwen2 model has no MoE layers")
        mode = attention_mode or cfg.attention_mode
        if mode not in ("sparse", "dense"):
            raise ValueError(f"attention_mode={mode!r}: allowed 'sparse', 'dense'")
        if topk_indices is not None and len(topk_indices) != cfg.num_hidden_layers:
            raise ValueError(f"topk_indices has {len(topk_indices)} entries; expected {cfg.num_hidden_layers}")
        h = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        B, T, _ = h.shape
        if use_cache is None:
            use_cache = cfg.use_cache and not self.training
        if cache is None and use_cache:
            cache = self.new_cache(B, T)
        start = cache.seq_len if cache is not None else 0
        if cache is not None:
            key_valid = cache.update_valid(start, attention_mask, T)
        elif attention_mask is not None:
            key_valid = attention_mask.bool()
        else:
            key_valid = torch.ones(B, T, dtype=torch.bool, device=h.device)
        if position_ids is None:
            position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
        theta = float(cfg.rope_parameters["rope_theta"])
        ctx = _Ctx(start=start, key_valid=key_valid, mode=mode, rope=self.model.rotary_emb(h, position_ids),
                   index_rope=rope_cos_sin(position_ids, cfg.index_head_dim // 2, theta),
                   want_topk=output_topk_indices and mode == "sparse", want_indexer_loss=output_indexer_loss,
                   want_maps=output_attention_maps)
        all_hidden = [h] if output_hidden_states else None
        sels, kls, maps = [], [], []
        for i, layer in enumerate(self.model.layers):
            h, sel, kl, amap = layer(h, ctx, cache, topk_indices[i] if topk_indices is not None else None)
            if sel is not None:
                sels.append(sel)
            if kl is not None:
                kls.append(kl)
            if amap is not None:
                maps.append(amap)
            if all_hidden is not None:
                all_hidden.append(h)
        if cache is not None:
            cache.advance(T)
        h = self.model.norm(h)
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        logits = self.lm_head(h).float()
        indexer_loss = None
        if output_indexer_loss:
            indexer_loss = torch.stack(kls).mean() / key_valid[:, start:].sum().clamp(min=1)
        loss = lm_loss = None
        if labels is not None:
            lm_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                      ignore_index=-100)
            loss = lm_loss if indexer_loss is None else lm_loss + cfg.indexer_loss_weight * indexer_loss
        out = DSACausalLMOutput(
            loss=loss, logits=logits, cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            topk_indices=tuple(sels) if output_topk_indices and mode == "sparse" else None,
            expert_routes=() if output_expert_routes else None, indexer_loss=indexer_loss, lm_loss=lm_loss)
        out.attention_maps = tuple(maps) if output_attention_maps else None
        return out


# ---- conversion ---------------------------------------------------------------------------------
def dsa_config_from(source: Any, **indexer: Any) -> DSALlamaConfig:
    """A `DSALlamaConfig` from a Llama/Qwen2 config object; `indexer` sets the DSA fields
    (index_n_heads, index_head_dim, index_topk, attention_mode, ...)."""
    mt = source.model_type
    if mt not in SOURCE_TYPES:
        raise ValueError(f"model_type {mt!r} cannot be converted: supported {SOURCE_TYPES}")
    d = source.to_dict()
    if mt == "qwen2":
        if d.get("use_sliding_window"):
            raise ValueError("Qwen2 with use_sliding_window=true is not supported")
        d = {**d, "qkv_bias": True, "o_bias": False, "attention_bias": False, "mlp_bias": False}
    drop = ("model_type", "architectures", "transformers_version", "use_sliding_window", "sliding_window",
            "max_window_layers", "layer_types")
    base = {k: v for k, v in d.items() if k not in drop}
    return DSALlamaConfig(**{**base, "source_model_type": mt, **indexer})


def convert_model(src: nn.Module, seed: int = 0, **indexer: Any) -> DSALlamaForCausalLM:
    """A `DSALlamaForCausalLM` holding `src`'s weights (unchanged) plus new indexers (seeded init).

    src: a loaded Llama/Qwen2 causal LM. Raises if any source weight has no place in the new model."""
    cfg = dsa_config_from(src.config, **indexer)
    torch.manual_seed(seed)
    model = DSALlamaForCausalLM(cfg).to(dtype=next(src.parameters()).dtype)
    state = src.state_dict()
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad_missing = [k for k in missing if ".indexer." not in k and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if bad_missing or unexpected:
        raise ValueError(f"weights do not map: missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]}")
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(next(src.parameters()).device).eval()


def convert_pretrained(src: str, dst: str | Path | None = None, seed: int = 0, **indexer: Any) -> nn.Module:
    """Load `src` (local dir or hub id) with AutoModelForCausalLM, convert, and (if `dst`) save the
    model and the source's tokenizer files there. A `deepseek_v3` / `deepseek_v32` directory goes to
    `rl.policy.deepseek` instead (streamed into the native `DSAForCausalLM`)."""
    from transformers import AutoTokenizer

    from rl.policy.deepseek import is_deepseek_dir

    if is_deepseek_dir(src):
        return convert_deepseek_pretrained(src, dst, seed=seed, **indexer)
    indexer = {k: v for k, v in indexer.items() if v is not None}

    model = convert_model(AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32), seed=seed, **indexer)
    if dst is not None:
        model.save_pretrained(dst)
        try:
            AutoTokenizer.from_pretrained(src).save_pretrained(dst)
        except (OSError, ValueError):
            pass  # no tokenizer next to the weights: give model.tokenizer= later
    return model


def convert_deepseek_pretrained(src: str | Path, dst: str | Path | None = None, seed: int = 0,
                                dtype: torch.dtype = torch.float32, **indexer: Any) -> nn.Module:
    """A DeepSeek-V3/V3.2 directory as a loaded `DSAForCausalLM` (written to `dst`, or to a temporary
    directory when `dst` is None)."""
    import tempfile

    from rl.policy.deepseek import convert_deepseek
    from rl.policy.modeling import DSAForCausalLM

    if dst is not None:
        convert_deepseek(src, dst, dtype=dtype, seed=seed, **indexer)
        return DSAForCausalLM.from_pretrained(dst, dtype=dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        convert_deepseek(src, tmp, dtype=dtype, seed=seed, **indexer)
        return DSAForCausalLM.from_pretrained(tmp, dtype=dtype).eval()


def sequence_forward_macs(config: DSALlamaConfig, seq_len: int, mode: str = "sparse") -> ForwardCost:
    """Forward MACs of one sequence (as `rl.policy.flops.sequence_forward_macs`, for this model).

    Linear: q/k/v/o + indexer projections + SwiGLU + LM head per token. Attention: H * (D + D) per
    (query, attended key); the masked sparse path still scores every key but counts as attending k
    (what a gathered kernel would cost). Indexer: H_I * (d_I + 1) per (query, key) when it runs."""
    c, L = config, seq_len
    d, H, Hkv, D = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    attn_lin = d * H * D * 2 + d * Hkv * D * 2
    idx_lin = d * c.index_n_heads * c.index_head_dim + d * c.index_head_dim + d * c.index_n_heads
    linear = L * (c.num_hidden_layers * (attn_lin + idx_lin + 3 * d * c.intermediate_size) + d * c.vocab_size)
    all_pairs = L * (L + 1) // 2
    m = min(c.index_topk, L)
    pairs = all_pairs if mode == "dense" else m * (m + 1) // 2 + (L - m) * c.index_topk
    indexer = c.num_hidden_layers * c.index_n_heads * (c.index_head_dim + 1) * all_pairs \
        if mode == "sparse" and L > c.index_topk else 0
    return ForwardCost(linear=linear, attention=c.num_hidden_layers * H * 2 * D * pairs, indexer=indexer)


def policy_config(config: Any) -> Any:
    """A policy config from a config object or its ``to_dict()`` (dispatch on ``model_type``:
    "dsa" -> DSAConfig, "dsa_llama" -> DSALlamaConfig). For code that ships configs as dicts."""
    if not isinstance(config, dict):
        return config
    d = {k: v for k, v in config.items() if k != "model_type"}
    return AutoConfig.for_model(config.get("model_type", "dsa"), **d)


def build_policy(config: Any) -> nn.Module:
    """A randomly initialised policy of the class registered for ``config`` (a config or its dict)."""
    return AutoModelForCausalLM.from_config(policy_config(config))


def policy_sequence_macs(config: Any, seq_len: int, mode: str = "sparse") -> ForwardCost:
    """`rl.policy.flops.sequence_forward_macs` for a native DSA config, this module's for dsa_llama."""
    if getattr(config, "model_type", None) == DSALlamaConfig.model_type:
        return sequence_forward_macs(config, seq_len, mode)
    from rl.policy import flops

    return flops.sequence_forward_macs(config, seq_len, mode)


if __name__ != "__main__":  # `python -m rl.policy.convert` runs this file a second time as __main__
    AutoConfig.register("dsa_llama", DSALlamaConfig)
    AutoModelForCausalLM.register(DSALlamaConfig, DSALlamaForCausalLM)


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m rl.policy.convert SRC DST [--index-topk K] [--index-n-heads H] [--index-head-dim D]
    [--dtype float32|bfloat16]. SRC: a Llama/Qwen2 checkpoint (indexer defaults 32 / 4 / 32) or a
    deepseek_v32 / deepseek_v3 directory (V3.2 keeps its indexers; V3 defaults: top-2048, heads / 2,
    2 * qk_rope_head_dim)."""
    import argparse
    import sys

    from rl.policy.deepseek import CheckpointError, convert_deepseek, is_deepseek_dir

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--index-topk", type=int, default=None)
    p.add_argument("--index-n-heads", type=int, default=None)
    p.add_argument("--index-head-dim", type=int, default=None)
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    indexer = {"index_topk": a.index_topk, "index_n_heads": a.index_n_heads, "index_head_dim": a.index_head_dim}
    cfg_file = Path(a.src) / "config.json"
    if cfg_file.is_file():
        import json

        mt = json.loads(cfg_file.read_text()).get("model_type")
        supported = (*SOURCE_TYPES, "deepseek_v3", "deepseek_v32")
        if mt not in supported:
            sys.exit(f"error: {a.src}: model_type {mt!r} cannot be converted; supported: {', '.join(supported)}")
    try:
        if is_deepseek_dir(a.src):  # streamed: never the whole model in memory
            convert_deepseek(a.src, a.dst, dtype=getattr(torch, a.dtype), seed=a.seed, **indexer)
        else:
            convert_pretrained(a.src, a.dst, seed=a.seed, **indexer)
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    print(f"converted {a.src} -> {a.dst}")


if __name__ == "__main__":
    from rl.policy.convert import main as _registered_main  # the classes registered on `import rl.policy`

    _registered_main()
