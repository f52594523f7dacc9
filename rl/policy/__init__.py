"""The DeepSeek Sparse Attention policy (MLA + lightning indexer + top-k, optional MoE), the
converted Llama/Qwen2 policy over the same DSA core, and the tokenizer."""
from rl.policy.cache import DSACache
from rl.policy.configuration import PRESETS, DSAConfig, DSASparseConfig
from rl.policy.decoder import DSACausalLMOutput
from rl.policy.indexer import index_scores, indices_to_mask, select_topk
from rl.policy.indexer_loss import freeze_all_but_indexer, indexer_kl, indexer_parameters
from rl.policy.llama import DSALlamaConfig, DSALlamaForCausalLM  # registers model_type "dsa_llama"
from rl.policy.modeling import DSAForCausalLM  # registers model_type "dsa"

__all__ = [
    "PRESETS",
    "DSACache",
    "DSACausalLMOutput",
    "DSAConfig",
    "DSAForCausalLM",
    "DSALlamaConfig",
    "DSALlamaForCausalLM",
    "DSASparseConfig",
    "freeze_all_but_indexer",
    "index_scores",
    "indexer_kl",
    "indexer_parameters",
    "indices_to_mask",
    "select_topk",
]
