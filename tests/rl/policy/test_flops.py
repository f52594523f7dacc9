"""MAC accounting: hand-computed micro numbers, V3.2 ratios, sequence sums, parameter counts."""
from __future__ import annotations

import pytest

from rl.policy import DSAConfig, DSAForCausalLM
from rl.policy.flops import (
    attention_macs_per_key,
    forward_macs_per_token,
    indexer_macs_per_key,
    parameter_count,
    sequence_forward_macs,
)


def test_micro_per_key_hand_values(make_config) -> None:
    cfg = make_config()  # H=2, kv_lora 16, rope 4, nope 8, v 8, H_I=2, d_I=8
    assert attention_macs_per_key(cfg, absorbed=True) == 2 * (20 + 16)
    assert attention_macs_per_key(cfg, absorbed=False) == 2 * (12 + 8)
    assert indexer_macs_per_key(cfg) == 2 * 9


def test_token_cost_sparse_vs_dense(make_config) -> None:
    cfg = make_config()  # k = 4, 2 layers
    short = forward_macs_per_token(cfg, 3)
    assert short.indexer == 0 and short.attention == 2 * 72 * 3
    long = forward_macs_per_token(cfg, 10)
    assert long.attention == 2 * 72 * 4 and long.indexer == 2 * 18 * 10
    dense = forward_macs_per_token(cfg, 10, mode="dense")
    assert dense.attention == 2 * 40 * 10 and dense.indexer == 0 and dense.linear == long.linear
    assert long.flops == 2 * long.total


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_sequence_is_sum_of_tokens(make_config, mode) -> None:
    cfg = make_config()
    seq = sequence_forward_macs(cfg, 9, mode)
    toks = [forward_macs_per_token(cfg, t, mode) for t in range(1, 10)]
    assert seq.attention == sum(t.attention for t in toks)
    assert seq.linear == sum(t.linear for t in toks)
    if mode == "sparse":  # indexer runs for every query once the sequence exceeds k
        assert seq.indexer == 2 * 18 * sum(range(1, 10))


def test_v32_ratio_and_parameters() -> None:
    cfg = DSAConfig.from_preset("deepseek-v3.2")
    L = 128 * 1024
    dense = forward_macs_per_token(cfg, L, "dense", absorbed=True)
    sparse = forward_macs_per_token(cfg, L, "sparse")
    ratio = dense.attention / (sparse.attention + sparse.indexer)
    assert 13.0 < ratio < 13.6
    assert 660e9 < parameter_count(cfg) < 690e9  # reported: 671 B (without the MTP module)
    assert 36e9 < parameter_count(cfg, active_only=True) < 39e9  # reported: 37 B activated


@pytest.mark.parametrize("preset", ["tiny", "tiny-dense-ffn"])
def test_parameter_count_matches_model(preset) -> None:
    cfg = DSAConfig.from_preset(preset, vocab_size=100)
    assert parameter_count(cfg) == sum(p.numel() for p in DSAForCausalLM(cfg).parameters())
