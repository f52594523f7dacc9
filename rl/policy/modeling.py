"""`DSAForCausalLM`: the DeepSeek-V3.2-style policy (MLA + DSA attention, DeepSeekMoE FFN) as a
transformers `PreTrainedModel` + `GenerationMixin`.

The forward (its keywords: cache, attention mode, top-k output and replay, expert routes, indexer
loss, attention maps) is the one every DSA policy shares: `rl.policy.decoder.DSACausalLM`. This
module supplies the MLA layers (`rl.policy.mla`), the MoE FFN (`rl.policy.moe`), the weight
initialisation and the RoPE tables.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GenerationMixin
from transformers import initialization as init

from rl.policy.configuration import DSAConfig
from rl.policy.decoder import DecoderLayer, DSACausalLM, DSACausalLMOutput, DSAPreTrainedBase
from rl.policy.layers import RMSNorm, model_rope_tables
from rl.policy.mla import MLAttention
from rl.policy.moe import MoE, SwiGLU

__all__ = ["DSACausalLMOutput", "DSAForCausalLM", "DSAModel", "DSAPreTrainedModel"]


class DSADecoderLayer(DecoderLayer):
    """Pre-norm block: h += MLA(RMSNorm(h)); h += FFN(RMSNorm(h)) with FFN = SwiGLU or MoE."""

    def __init__(self, config: DSAConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = MLAttention(config, layer_idx)
        self.ffn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.is_moe = layer_idx in config.moe_layer_indices
        self.ffn = MoE(config) if self.is_moe else SwiGLU(config.hidden_size, config.intermediate_size)


class DSAPreTrainedModel(DSAPreTrainedBase):
    config_class = DSAConfig
    config: DSAConfig
    _no_split_modules = ["DSADecoderLayer"]  # noqa: RUF012 (transformers reads a list)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, MoE):
            init.zeros_(module.e_score_correction_bias)


class DSAModel(DSAPreTrainedModel):
    """Embeddings + decoder layers + final norm."""

    def __init__(self, config: DSAConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DSADecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()


class DSAForCausalLM(DSACausalLM, DSAPreTrainedModel, GenerationMixin):
    """Causal LM over `DSAModel` with an untied LM head; forward: `rl.policy.decoder.DSACausalLM`."""

    def __init__(self, config: DSAConfig) -> None:
        super().__init__(config)
        self.model = DSAModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def rope_tables(self, h: torch.Tensor, position_ids: torch.Tensor):
        """Half-split RoPE tables (YaRN-corrected when the config has it): MLA (B, T, qk_rope_head_dim / 2)
        and indexer (B, T, index_rope_dim / 2); see `rl.policy.layers.model_rope_tables`."""
        return model_rope_tables(self.config, position_ids)


AutoConfig.register("dsa", DSAConfig)
AutoModelForCausalLM.register(DSAConfig, DSAForCausalLM)
