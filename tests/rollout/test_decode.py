"""rollout.decode.StaticDecoder: the engine's fixed-shape decode step equals the model's forward
(logits, MoE routes, DSA selections), eager and compiled; the engine gives the same trajectories
with and without it."""
from __future__ import annotations

import pytest
import torch

from rl.policy import DSAForCausalLM
from rollout.decode import StaticDecoder
from rollout.engine import EngineConfig, RolloutEngine
from rollout.sampling import SamplingParams
from tests.rollout.conftest import tiny_config
from tests.rollout.test_engine import _left_pad


def _prefilled(model, prompts, pad_id, extra):
    """Two identical caches holding the left-padded prompts; the first new tokens' positions."""
    ids, mask = _left_pad(prompts, pad_id)
    B, P = ids.shape
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = []
    for _ in range(2):
        cache = model.new_cache(B, P + extra)
        model(ids, attention_mask=mask, position_ids=pos, cache=cache, logits_to_keep=1)
        caches.append(cache)
    return caches, pos[:, -1] + 1


def _compare(model, prompts, pad_id, decoder, steps=14) -> None:
    sparse = model.config.attention_mode == "sparse"
    (ref_cache, cache), pos = _prefilled(model, prompts, pad_id, steps)
    tok = torch.arange(len(prompts)) + 20
    with torch.no_grad():
        for _ in range(steps):
            ref = model(tok[:, None], attention_mask=torch.ones(len(prompts), 1, dtype=torch.long),
                        position_ids=pos[:, None], cache=ref_cache, output_expert_routes=True,
                        output_topk_indices=sparse)
            logits, routes, sel = decoder(tok, pos, cache, want_routes=True, want_topk=sparse)
            torch.testing.assert_close(logits, ref.logits[:, -1], atol=1e-5, rtol=0)
            assert torch.equal(routes, torch.stack(ref.expert_routes, dim=2)[:, 0])
            if sparse:
                assert torch.equal(sel, torch.stack(ref.topk_indices, dim=2)[:, 0])
            else:
                assert sel is None
            tok, pos = logits.argmax(-1), pos + 1
    assert cache.seq_len == ref_cache.seq_len


@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_static_step_equals_model_forward(tok, prompts, mode) -> None:
    """Left padding, contexts from below to well past index_topk (8): same logits (1e-5), routes
    and selections as `DSAForCausalLM.forward` with the cache, step after step."""
    torch.manual_seed(0)
    model = DSAForCausalLM(tiny_config(tok, attention_mode=mode)).eval()
    _compare(model, prompts, tok.pad_token_id, StaticDecoder(model))


def test_fused_expert_weights_follow_weight_changes(tok, prompts) -> None:
    """The experts' fused weights are built once; `refresh` rebuilds them after an in-place load
    (a weight push), a replaced tensor or a dtype move (`.to()` keeps the tensor and its version,
    not its storage): the step keeps matching the model's forward."""
    torch.manual_seed(0)
    model = DSAForCausalLM(tiny_config(tok)).eval()
    decoder = StaticDecoder(model)
    first = decoder.moe_weights()
    decoder.refresh()
    assert decoder.moe_weights() is first  # reused while nothing changed
    torch.manual_seed(1)
    model.load_state_dict(DSAForCausalLM(tiny_config(tok)).state_dict())  # in place
    decoder.refresh()
    assert decoder.moe_weights() is not first
    _compare(model, prompts, tok.pad_token_id, decoder)
    i, moe = next((i, layer.ffn) for i, layer in enumerate(model.model.layers) if layer.is_moe)
    moe.experts[0].up.weight = torch.nn.Parameter(torch.randn_like(moe.experts[0].up.weight))  # replaced
    decoder.refresh()
    _compare(model, prompts, tok.pad_token_id, decoder)
    model.to(torch.float64)  # new storage, same tensors and versions
    decoder.refresh()
    assert decoder.moe_weights()[i][0].dtype == torch.float64


def test_engine_drops_fused_weights_on_a_new_weight_version(tok, prompts) -> None:
    """A collective's in-place receive (here `p.data.copy_`, which moves no version counter, as
    the worker's broadcast does) is invisible to `refresh`; setting the engine's weight_version,
    as the worker does after every load, drops the fused copy: the engine then decodes exactly as
    a fresh one over the new weights. A model made under inference mode decodes too."""
    torch.manual_seed(0)
    model = DSAForCausalLM(tiny_config(tok)).eval()
    eng = RolloutEngine(model, tok)
    params = SamplingParams(greedy=True, max_new_tokens=10)
    eng.generate(prompts, params)  # builds the fused weights
    torch.manual_seed(1)
    new = DSAForCausalLM(tiny_config(tok)).eval()
    with torch.no_grad():
        for p, q in zip(model.state_dict().values(), new.state_dict().values()):
            p.data.copy_(q)
    eng.weight_version = 1
    got = eng.generate(prompts, params)
    ref = RolloutEngine(new, tok).generate(prompts, params)
    assert all(torch.equal(a.tokens, b.tokens) and torch.allclose(a.logprobs, b.logprobs, atol=1e-6)
               for a, b in zip(got, ref))
    with torch.inference_mode():
        torch.manual_seed(0)
        frozen = DSAForCausalLM(tiny_config(tok)).eval()
    assert len(RolloutEngine(frozen, tok).generate(prompts, params)) == len(prompts)


def test_static_step_refuses_a_full_cache(model, tok) -> None:
    cache = model.new_cache(1, 3)
    with torch.no_grad():
        model(torch.tensor([[11, 12, 13]]), cache=cache)
        with pytest.raises(ValueError, match="cache is full"):
            StaticDecoder(model)(torch.tensor([5]), torch.tensor([3]), cache)


def test_engine_same_trajectories_with_and_without_static_decode(model, tok, prompts) -> None:
    """Same seed: the same tokens, log-probs (1e-5), kept sets, routes and selections."""
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=16)
    outs = [RolloutEngine(model, tok, EngineConfig(static_decode=s, record_topk=True)).generate(prompts, params, seed=3)
            for s in (True, False)]
    for a, b in zip(*outs):
        assert torch.equal(a.tokens, b.tokens) and a.finish_reason == b.finish_reason
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        assert torch.equal(a.sampling_mask, b.sampling_mask)
        assert torch.equal(a.expert_routes, b.expert_routes) and torch.equal(a.topk_indices, b.topk_indices)


@pytest.mark.slow
def test_compiled_step_and_engine(model, tok, prompts) -> None:
    """torch.compile'd step (inductor): equal to the forward; the compiled engine samples the same
    trajectories as the eager one, across compaction (rows finishing) and a second micro-batch
    of another shape (the dynamic-shape recompile)."""
    _compare(model, prompts, tok.pad_token_id, StaticDecoder(model, compile=True))
    # 50 stop ids: rows finish at different steps, so the batch is compacted (a new batch size)
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=12,
                            stop_token_ids=tuple(range(10, 60)))
    batch = prompts + [p[:4] for p in prompts]  # two micro-batches of 4 rows with other lengths
    runs = [RolloutEngine(model, tok, EngineConfig(compile=c, max_batch_size=4, record_topk=True)).generate(
        batch, params, seed=5) for c in (True, False)]
    for a, b in zip(*runs):
        assert torch.equal(a.tokens, b.tokens)
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
        assert torch.equal(a.topk_indices, b.topk_indices)
    assert len({t.num_sampled for t in runs[0]}) > 2  # rows did finish at different steps
