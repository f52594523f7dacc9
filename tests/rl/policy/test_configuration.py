"""DSAConfig: presets, overrides, validation, derived shapes."""
from __future__ import annotations

import pytest

from rl.policy import PRESETS, DSAConfig, DSAForCausalLM


def test_defaults_are_the_tiny_preset() -> None:
    assert PRESETS["tiny"] == {}
    assert DSAConfig.from_preset("tiny").to_dict() == DSAConfig().to_dict()


def test_tiny_size_and_sparse_on_math_lengths() -> None:
    cfg = DSAConfig.from_preset("tiny", vocab_size=4096)
    n = sum(p.numel() for p in DSAForCausalLM(cfg).parameters())
    assert 1_000_000 <= n <= 5_000_000
    assert cfg.index_topk < 64 and cfg.use_moe and cfg.moe_layer_indices == [1, 2, 3]


def test_v32_shape_is_v32() -> None:
    cfg = DSAConfig.from_preset("deepseek-v3.2")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (61, 7168, 128)
    assert (cfg.q_lora_rank, cfg.kv_lora_rank, cfg.latent_dim) == (1536, 512, 576)
    assert (cfg.index_n_heads, cfg.index_head_dim, cfg.index_topk) == (64, 128, 2048)
    assert (cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_shared_experts) == (256, 8, 1)
    assert len(cfg.moe_layer_indices) == 58 and cfg.vocab_size == 129280


def test_overrides_and_dense_ffn_preset() -> None:
    cfg = DSAConfig.from_preset("tiny-dense-ffn", vocab_size=300, attention_mode="dense")
    assert cfg.vocab_size == 300 and cfg.attention_mode == "dense" and not cfg.use_moe


@pytest.mark.parametrize("bad", [{"attention_mode": "local"}, {"moe_gate": "relu"}, {"index_head_dim": 6},
                                 {"num_experts_per_tok": 9}])
def test_invalid_values_name_the_key(bad) -> None:
    key = next(iter(bad))
    with pytest.raises(ValueError, match=key):
        DSAConfig(**bad)


def test_unknown_preset() -> None:
    with pytest.raises(KeyError, match="tiny"):
        DSAConfig.from_preset("huge")
