"""Build a DSA policy from a config or its dict, whatever its kind (native MLA "dsa", converted
Llama/Qwen2 "dsa_llama"), and count its FLOPs: what the rollout workers, the run set-up and the
budget need without knowing the kind."""
from __future__ import annotations

from typing import Any

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from rl.policy import flops  # importing the package registers every DSA model_type with the Auto classes
from rl.policy.llama import DSALlamaConfig


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


def policy_sequence_macs(config: Any, seq_len: int, mode: str = "sparse") -> flops.ForwardCost:
    """Forward MACs of one sequence: `flops.sequence_forward_macs` for a native DSA config,
    `flops.gqa_sequence_forward_macs` for a converted Llama/Qwen2."""
    if getattr(config, "model_type", None) == DSALlamaConfig.model_type:
        return flops.gqa_sequence_forward_macs(config, seq_len, mode)
    return flops.sequence_forward_macs(config, seq_len, mode)
