"""rollout.consistency: a teacher-forced replay reproduces the sampler's log-probs (< 1e-5, fp32)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from rollout.consistency import logprob_mismatch, recomputed_logprobs, replay_batch
from rollout.engine import EngineConfig, RolloutEngine
from rollout.sampling import SamplingParams

COMBOS = [
    SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=24),
    SamplingParams(temperature=1.0, top_k=20, max_new_tokens=24),
    SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=24),
    SamplingParams(temperature=1.0, max_new_tokens=24),
    SamplingParams(greedy=True, temperature=0.9, max_new_tokens=24),
]


@pytest.mark.parametrize("params", COMBOS, ids=lambda p: f"T{p.temperature}-k{p.top_k}-p{p.top_p}-g{int(p.greedy)}")
def test_replay_reproduces_recorded_logprobs(model, tok, prompts, params) -> None:
    """Ragged prompts, each twice (8 rows), sequences up to 45 tokens with index_topk = 8."""
    eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    trajs = eng.generate(prompts * 2, params, seed=11)
    m = logprob_mismatch(model, trajs, temperature=params.temperature, batch_size=5)
    assert m.num_tokens == sum(t.num_sampled for t in trajs) > 100
    assert m.max_abs < 1e-5, m


def test_mismatch_detects_a_wrong_record(model, tok, prompts) -> None:
    params = COMBOS[2]
    eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    trajs = eng.generate(prompts, params, seed=2)
    bad = dataclasses.replace(trajs[1], logprobs=trajs[1].logprobs.clone())
    bad.logprobs[bad.prompt_len + 2] += 1e-3
    assert abs(logprob_mismatch(model, [trajs[0], bad], temperature=params.temperature).max_abs - 1e-3) < 1e-5
    assert logprob_mismatch(model, trajs, temperature=1.0).max_abs > 1e-2  # wrong temperature


def test_replay_batch_padding_is_valid(model, tok, prompts) -> None:
    """Right padding with dummy routes / selections: finite log-probs, padding rows contribute 0."""
    eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    trajs = eng.generate(prompts, COMBOS[0], seed=3)
    batch = replay_batch(trajs, model.config.vocab_size)
    T = max(len(t.tokens) for t in trajs)
    assert batch.input_ids.shape == (4, T) and batch.sampling_mask.shape == (4, T, model.config.vocab_size)
    assert len(batch.expert_routes) == len(model.config.moe_layer_indices)
    assert len(batch.topk_indices) == model.config.num_hidden_layers
    short = min(range(4), key=lambda b: len(trajs[b].tokens))
    assert batch.topk_indices[0][short, -1].tolist() == [0] + [-1] * (model.config.index_topk - 1)
    with torch.no_grad():
        lp = recomputed_logprobs(model, batch, COMBOS[0].temperature)
    assert torch.isfinite(lp).all()
    assert (lp[~batch.attention_mask.bool()] == 0).all()  # padding: empty kept set -> 0
