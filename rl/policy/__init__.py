"""The DeepSeek Sparse Attention policy (MLA + lightning indexer + top-k, optional MoE) and its tokenizer."""
from rl.policy.cache import DSACache
from rl.policy.configuration import PRESETS, DSAConfig
from rl.policy.convert import DSALlamaConfig, DSALlamaForCausalLM  # registers model_type "dsa_llama"
from rl.policy.indexer import index_scores, indices_to_mask, select_topk
from rl.policy.indexer_loss import freeze_all_but_indexer, indexer_kl, indexer_parameters
from rl.policy.modeling import DSACausalLMOutput, DSAForCausalLM

__all__ = [
    "PRESETS",
    "DSACache",
    "DSACausalLMOutput",
    "DSAConfig",
    "DSAForCausalLM",
    "DSALlamaConfig",
    "DSALlamaForCausalLM",
    "freeze_all_but_indexer",
    "index_scores",
    "indexer_kl",
    "indexer_parameters",
    "indices_to_mask",
    "select_topk",
]
