"""Shared fixtures for rl.policy tests: a micro DSA config (fast on CPU, MoE on, k small)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from rl.policy import DSAConfig, DSAForCausalLM

MICRO: dict[str, Any] = {
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8,
    "index_n_heads": 2, "index_head_dim": 8, "index_topk": 4, "intermediate_size": 48,
    "moe_intermediate_size": 16, "n_routed_experts": 4, "num_experts_per_tok": 2,
    "first_k_dense_replace": 1, "initializer_range": 0.2,
}


def micro_config(**overrides: Any) -> DSAConfig:
    return DSAConfig(**{**MICRO, **overrides})


def micro_model(seed: int = 0, **overrides: Any) -> DSAForCausalLM:
    torch.manual_seed(seed)
    return DSAForCausalLM(micro_config(**overrides)).eval()


@pytest.fixture
def make_config() -> Callable[..., DSAConfig]:
    """Factory: micro_config(**overrides)."""
    return micro_config


@pytest.fixture
def make_model() -> Callable[..., DSAForCausalLM]:
    """Factory: micro_model(seed=0, **config_overrides), in eval mode."""
    return micro_model
