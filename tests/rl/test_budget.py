"""Budget accounting: limits, FLOP bookkeeping ratios, pre-training fraction, resume."""
from __future__ import annotations

import pytest

from rl.budget import Budget
from rl.config import BudgetConfig
from rl.policy import DSAConfig
from rl.policy.flops import sequence_forward_macs

CFG = DSAConfig.from_preset("tiny", vocab_size=600)


def test_rollout_and_train_flops() -> None:
    b = Budget(max_steps=10)
    b.add_rollout(CFG, [40, 80], new_tokens=50, mode="sparse")
    fwd = 2 * (sequence_forward_macs(CFG, 40, "sparse").total + sequence_forward_macs(CFG, 80, "sparse").total)
    assert b.spent.rollout_flops == pytest.approx(fwd)
    assert (b.spent.samples, b.spent.rollout_tokens) == (2, 50)
    b.add_train(CFG, [40, 80], mode="sparse", epochs=2, with_reference=True)
    assert b.spent.train_flops == pytest.approx(7 * fwd)  # 2 epochs x (fwd + 2x bwd) + 1 reference fwd
    assert b.spent.train_tokens == 240
    assert b.spent.flops == pytest.approx(8 * fwd)
    # 80 > index_topk = 32: the indexer runs and is tracked apart from the attention core.
    assert b.spent.indexer_flops > 0 and b.spent.attention_flops > 0


def test_first_limit_wins() -> None:
    b = Budget(max_steps=3, max_samples=4)
    assert b.exhausted() is None
    b.add_rollout(CFG, [10] * 4, new_tokens=4, mode="dense")
    assert b.exhausted() == "max_samples (4 >= 4)"
    b = Budget(max_steps=2)
    b.step_done()
    assert b.exhausted() is None and b.fraction_done() == 0.5
    b.step_done()
    assert b.exhausted() == "max_steps (2 >= 2)"


def test_pretrain_fraction() -> None:
    cfg = BudgetConfig(max_steps=None, pretrain_flops=1e20, pretrain_fraction=0.1)
    assert Budget.from_config(cfg).max_flops == pytest.approx(1e19)
    cfg = BudgetConfig(max_flops=5e18, pretrain_flops=1e20, pretrain_fraction=0.1)
    assert Budget.from_config(cfg).max_flops == pytest.approx(5e18)


def test_state_round_trip_keeps_seconds() -> None:
    b = Budget(max_seconds=100)
    b.add_rollout(CFG, [10], new_tokens=3, mode="sparse")
    b.step_done()
    state = b.state_dict()
    state["seconds"] = 42.0
    c = Budget(max_seconds=100)
    c.load_state_dict(state)
    assert c.spent.steps == 1 and c.spent.samples == 1
    assert 42.0 <= c.state_dict()["seconds"] < 43.0
