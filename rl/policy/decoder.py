"""The one decoder of every DSA policy: the layer loop, the causal LM forward, replay and the cache.

`DecoderLayer` is the pre-norm block `h += attn(norm(h)); h += ffn(norm(h))` over any
`rl.policy.sparse.SparseAttention` and a dense or MoE FFN; subclasses only name their submodules
(the native MLA policy and a converted Llama keep their own state-dict names). `DSACausalLM` is the
forward shared by `DSAForCausalLM` (MLA, `modeling.py`) and `DSALlamaForCausalLM` (GQA, `llama.py`):
a model class mixes it in and supplies `rope_tables` (its RoPE layout).

Forward keywords beyond the usual (`input_ids`, `attention_mask`, `position_ids`, `labels`,
`use_cache`, `logits_to_keep`); transformers 5.x passes the cache as `cache` and reads `output.cache`:
- `cache`: a `DSACache` (created on the fly when `use_cache` and none is given).
- `attention_mode`: "sparse" | "dense", overriding `config.attention_mode` for this call.
- `output_topk_indices=True` -> `output.topk_indices`: tuple over ALL layers of LongTensor
  (B, T, index_topk): for each query token the selected key positions, ascending, right-padded
  with -1 (a query at position t with n <= t real earlier-or-same tokens has min(k, n+1) entries).
  Positions are slot indices: columns of this batch (with a cache, counted from the first cached
  slot), INCLUDING left padding. Sparse mode only (None in dense mode).
- `topk_indices=`: the same structure, enforced instead of the indexer's choice (replay).
- `output_expert_routes=True` -> `output.expert_routes`: tuple over the MoE layers only
  (`config.moe_layer_indices`) of LongTensor (B, T, num_experts_per_tok); `expert_routes=` enforces
  them (Keep Routing).
- `output_indexer_loss=True` -> `output.indexer_loss`: mean over layers of the mean over
  non-padding query tokens of the indexer KL (dense mode: warm-up loss over all causal keys; sparse
  mode: over the selected set). With `labels`, `output.loss` = LM loss + indexer_loss_weight *
  indexer_loss and `output.lm_loss` the LM part.
- `attention_allowed=` (B, T, T) bool, no cache: which keys each query sees, instead of the causal
  & not-padding rule (every query must see itself; `rl.prefix` packs several replies after one
  prompt this way). Positions then come from `position_ids`, which must be given.
- `output_attention_maps=True` -> `output.attention_maps`: per layer (head-summed, L1-normalised
  attention probabilities of this call's mode (B, T, S) fp32, indexer scores (B, T, S) fp32, allowed
  mask (B, T, S)), for diagnostics (recall of the true top-k).

Padding: `attention_mask` (B, S) with 0 for padding, S = T (no cache) or cached + T (transformers'
generate convention) or T new columns with a cache. Padded keys are never selected nor attended to;
`position_ids` default to (cumsum(mask) - 1) so a real token's result does not depend on how much
left padding precedes it. Padding queries produce finite garbage (they attend to themselves).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from rl.policy.cache import DSACache
from rl.policy.configuration import ATTENTION_MODES
from rl.policy.indexer_loss import freeze_all_but_indexer
from rl.policy.sparse import AttentionContext


@dataclass
class DSACausalLMOutput(ModelOutput):
    """Output of a DSA policy's forward (fields None unless asked for)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: DSACache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    topk_indices: tuple[torch.Tensor, ...] | None = None
    expert_routes: tuple[torch.Tensor, ...] | None = None
    indexer_loss: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    attention_maps: tuple[tuple[torch.Tensor, ...], ...] | None = None


class DSAPreTrainedBase(PreTrainedModel):
    """What every DSA policy's `PreTrainedModel` shares (subclasses set `config_class`)."""

    base_model_prefix = "model"
    main_input_name = "input_ids"

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate() must not build a transformers DynamicCache: the model creates its DSACache.
        return False


class DecoderLayer(nn.Module):
    """Pre-norm block over the submodules named by `parts` (attention norm, attention, FFN norm, FFN)."""

    parts: tuple[str, str, str, str] = ("attn_norm", "attn", "ffn_norm", "ffn")
    is_moe: bool = False

    def forward(self, h, ctx, cache, topk_indices=None, routes=None):
        """Returns (h (B, T, d), selection | None, indexer KL sum | None, routes | None, maps | None)."""
        attn_norm, attn, ffn_norm, ffn = (getattr(self, name) for name in self.parts)
        a, sel, kl_sum, maps = attn(attn_norm(h), ctx, cache, topk_indices)
        h = h + a
        if self.is_moe:
            f, routes = ffn(ffn_norm(h), routes)
        else:
            f, routes = ffn(ffn_norm(h)), None
        return h + f, sel, kl_sum, routes, maps


class DSACausalLM:
    """The causal-LM forward of every DSA policy (mixed into a `PreTrainedModel` whose `model` has
    `embed_tokens`, `layers` (DecoderLayer) and `norm`, with an `lm_head`)."""

    config: object
    model: nn.Module
    lm_head: nn.Linear

    def rope_tables(self, h: torch.Tensor, position_ids: torch.Tensor
                    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """(main-attention cos/sin, indexer cos/sin) for positions (B, T); h (B, T, d) gives the dtype/device."""
        raise NotImplementedError

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def freeze_all_but_indexer(self) -> list[nn.Parameter]:
        """Dense warm-up: freeze everything except the lightning indexers; returns their parameters."""
        return freeze_all_but_indexer(self)

    def new_cache(self, batch_size: int, max_len: int) -> DSACache:
        """A preallocated DSACache on this model's device and dtype."""
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
        attention_allowed: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DSACausalLMOutput:
        """See the module docstring. input_ids (B, T) -> logits (B, T or logits_to_keep, vocab) fp32."""
        cfg = self.config
        if "past_key_values" in kwargs:
            raise TypeError(f"{type(self).__name__} takes the cache as `cache=` (transformers 5.x), "
                            "not past_key_values")
        mode = attention_mode or cfg.attention_mode
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode={mode!r}: allowed {ATTENTION_MODES}")
        self._check_replay(topk_indices, expert_routes)
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
            if attention_mask.shape != (B, T):
                raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} != (B, T) = {(B, T)}")
            key_valid = attention_mask.bool()
        else:
            key_valid = torch.ones(B, T, dtype=torch.bool, device=h.device)
        if attention_allowed is not None:
            if cache is not None or position_ids is None or attention_allowed.shape != (B, T, T):
                raise ValueError(f"attention_allowed needs shape (B, T, T) = {(B, T, T)}, position_ids and no "
                                 "cache")
            attention_allowed = attention_allowed.bool()
        if position_ids is None:
            position_ids = (key_valid.long().cumsum(-1) - 1).clamp(min=0)[:, start:]
        rope, index_rope = self.rope_tables(h, position_ids)
        ctx = AttentionContext(start=start, key_valid=key_valid, mode=mode, rope=rope, index_rope=index_rope,
                               want_topk=output_topk_indices and mode == "sparse",
                               want_indexer_loss=output_indexer_loss, want_maps=output_attention_maps,
                               allowed=attention_allowed)

        all_hidden = [h] if output_hidden_states else None
        sels, routes_out, kl_terms, maps = [], [], [], []
        moe_i = 0
        for i, layer in enumerate(self.model.layers):
            given = topk_indices[i] if topk_indices is not None else None
            given_routes = None
            if layer.is_moe and expert_routes is not None:
                given_routes = expert_routes[moe_i]
            h, sel, kl_sum, routes, amap = layer(h, ctx, cache, given, given_routes)
            if layer.is_moe:
                moe_i += 1
                routes_out.append(routes)
            if sel is not None:
                sels.append(sel)
            if kl_sum is not None:
                kl_terms.append(kl_sum)
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
            n_real = key_valid[:, start:].sum().clamp(min=1)
            indexer_loss = torch.stack(kl_terms).mean() / n_real
        loss = lm_loss = None
        if labels is not None:
            lm_loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
            loss = lm_loss if indexer_loss is None else lm_loss + cfg.indexer_loss_weight * indexer_loss
        return DSACausalLMOutput(
            loss=loss, logits=logits, cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden) if all_hidden is not None else None,
            topk_indices=tuple(sels) if output_topk_indices and mode == "sparse" else None,
            expert_routes=tuple(routes_out) if output_expert_routes else None,
            indexer_loss=indexer_loss, lm_loss=lm_loss,
            attention_maps=tuple(maps) if output_attention_maps else None,
        )

    def _check_replay(self, topk_indices, expert_routes) -> None:
        cfg = self.config
        if topk_indices is not None and len(topk_indices) != cfg.num_hidden_layers:
            raise ValueError(f"topk_indices has {len(topk_indices)} entries; expected one per layer "
                             f"({cfg.num_hidden_layers})")
        n_moe = len(cfg.moe_layer_indices)
        if expert_routes and n_moe == 0:
            raise ValueError("expert_routes given, but this model has no MoE layers")
        if expert_routes is not None and len(expert_routes) != n_moe:
            raise ValueError(f"expert_routes has {len(expert_routes)} entries; expected one per MoE layer ({n_moe})")
