"""rollout.engine: greedy == generate(), recorded kept sets / routes / selections, stopping,
reproducibility, compaction."""
from __future__ import annotations

import torch

from rollout.engine import EngineConfig, RolloutEngine
from rollout.sampling import SamplingParams, kept_set
from rollout.types import unpack_mask

SAMPLED = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=20)


def _left_pad(prompts, pad_id):
    B, P = len(prompts), max(map(len, prompts))
    ids = torch.full((B, P), pad_id)
    mask = torch.zeros(B, P, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p)
        mask[b, P - len(p):] = 1
    return ids, mask


def test_greedy_equals_generate(model, tok, prompts) -> None:
    """Token for token, batched with left padding, sequences well past index_topk (sparse)."""
    eng = RolloutEngine(model, tok)
    out = eng.generate_greedy(prompts, max_new_tokens=24)
    ids, mask = _left_pad(prompts, tok.pad_token_id)
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                         pad_token_id=tok.pad_token_id)[:, ids.shape[1]:]
    for b, t in enumerate(out):
        gen = t.tokens[t.prompt_len:].tolist()
        assert gen == ref[b, : len(gen)].tolist()
        assert t.finish_reason == ("stop" if gen[-1] == tok.eos_token_id else "length")
    # and alone (no padding): the same tokens
    alone = model.generate(torch.tensor([prompts[0]]), max_new_tokens=24, do_sample=False,
                           pad_token_id=tok.pad_token_id)[0, len(prompts[0]):]
    assert out[0].tokens[out[0].prompt_len:].tolist() == alone[: out[0].num_sampled].tolist()


def test_trajectory_layout(model, tok, prompts) -> None:
    eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    eng.weight_version = 7
    out = eng.generate(prompts, SAMPLED, seed=0)
    cfg = model.config
    for i, (p, t) in enumerate(zip(prompts, out)):
        L = len(t.tokens)
        assert t.tokens[: len(p)].tolist() == p and t.prompt_len == len(p) and t.prompt_index == i
        assert t.loss_mask.tolist() == [False] * len(p) + [True] * (L - len(p))
        assert (t.logprobs[: len(p)] == 0).all() and (t.logprobs[len(p):] < 0).all()
        assert t.sampling_mask.shape == (L, (cfg.vocab_size + 7) // 8) and (t.sampling_mask[: len(p)] == 0).all()
        assert t.expert_routes.shape == (L, len(cfg.moe_layer_indices), cfg.num_experts_per_tok)
        assert t.expert_routes.dtype == torch.int16
        assert t.topk_indices.shape == (L, cfg.num_hidden_layers, cfg.index_topk)
        pos = torch.arange(L)[:, None, None]
        sel = t.topk_indices
        assert ((sel == -1) | ((sel >= 0) & (sel <= pos))).all()  # causal, inside the trajectory
        assert t.weight_version == 7
        assert t.completion == tok.decode(t.tokens[len(p):].tolist(), skip_special_tokens=True)


def test_recorded_masks_routes_selections_match_a_direct_computation(model, tok, prompts) -> None:
    """Kept sets == kept_set() of the teacher-forced logits; routes and selections == the forward's."""
    eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    for t in eng.generate(prompts, SAMPLED, seed=1):
        with torch.no_grad():
            out = model(t.tokens[None], output_expert_routes=True, output_topk_indices=True, use_cache=False)
        keep = kept_set(out.logits[0, :-1] / SAMPLED.temperature, SAMPLED.top_k, SAMPLED.top_p)  # (L-1, V)
        recorded = unpack_mask(t.sampling_mask, model.config.vocab_size)[1:]
        sampled = t.loss_mask[1:]
        assert torch.equal(recorded[sampled], keep[sampled])
        assert torch.equal(t.expert_routes.long(), torch.stack(out.expert_routes, dim=2)[0])
        assert torch.equal(t.topk_indices.long(), torch.stack(out.topk_indices, dim=2)[0])


def test_seeded_reproducible_and_recording_changes_nothing(model, tok, prompts) -> None:
    plain = RolloutEngine(model, tok, EngineConfig(record_routes=False, record_topk=False))
    rec = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    a = plain.generate(prompts, SAMPLED, seed=3)
    b = rec.generate(prompts, SAMPLED, seed=3)
    c = plain.generate(prompts, SAMPLED, seed=4)
    assert all(torch.equal(x.tokens, y.tokens) and torch.equal(x.logprobs, y.logprobs) for x, y in zip(a, b))
    assert any(not torch.equal(x.tokens, y.tokens) for x, y in zip(a, c))
    assert a[0].expert_routes is None and b[0].expert_routes is not None


def test_compaction_changes_nothing(model, tok, prompts, monkeypatch) -> None:
    """Rows finishing early (stop ids) are dropped from the batch: same records as without."""
    from rl.policy import DSACache

    calls = []
    original = DSACache.select_rows
    monkeypatch.setattr(DSACache, "select_rows", lambda self, rows: (calls.append(len(rows)), original(self, rows)))
    greedy = RolloutEngine(model, tok).generate_greedy(prompts, 16)
    stops = tuple({t.tokens[t.prompt_len + 2].item() for t in greedy[:2]})  # rows 0, 1 end early
    params = SamplingParams(greedy=True, max_new_tokens=16, stop_token_ids=stops)
    outs = []
    for frac in (0.25, 1.0):
        eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True, compact_fraction=frac))
        outs.append(eng.generate(prompts, params))
    lengths = [t.num_sampled for t in outs[0]]
    assert min(lengths) <= 3 < max(lengths) and calls  # some rows ended early, the batch shrank
    for x, y in zip(*outs):
        for f in ("tokens", "expert_routes", "topk_indices"):
            assert torch.equal(getattr(x, f), getattr(y, f)), f
        assert torch.allclose(x.logprobs, y.logprobs, atol=1e-5)  # a smaller batch: other GEMM blocking
        assert x.finish_reason == y.finish_reason


def test_equal_prompts_prefilled_once(model, tok, prompts, monkeypatch) -> None:
    """A GRPO group's G copies of a prompt are prefilled once (one model call over the unique
    prompts); records and greedy tokens are those of prefilling every copy."""
    rows = [prompts[1], prompts[3], prompts[1], prompts[0], prompts[3], prompts[1]]
    seen = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward",
                        lambda self, input_ids=None, **kw: (seen.append(input_ids.shape), forward(self, input_ids, **kw))[1])
    eng = RolloutEngine(model, tok, EngineConfig(record_routes=True, record_topk=True))
    params = SamplingParams(greedy=True, max_new_tokens=12)
    out = eng.generate(rows, params)
    assert seen[0][0] == 3  # the prefill: 3 unique prompts, not 6 rows
    monkeypatch.undo()
    alone = [eng.generate([r], params)[0] for r in (prompts[1], prompts[3], prompts[0])]
    by_prompt = {tuple(a.tokens[: a.prompt_len].tolist()): a for a in alone}
    for t in out:
        a = by_prompt[tuple(t.tokens[: t.prompt_len].tolist())]
        for f in ("tokens", "expert_routes", "topk_indices"):
            assert torch.equal(getattr(t, f), getattr(a, f)), f
        assert torch.allclose(t.logprobs, a.logprobs, atol=1e-5)


def test_compaction_keeps_two_rows(model, tok, prompts, monkeypatch) -> None:
    """Every row but one ends early: the batch shrinks to the live row plus a finished passenger
    (a 1-row batch would recompile the compiled step), with the same records as without compaction."""
    from rl.policy import DSACache

    calls = []
    original = DSACache.select_rows
    monkeypatch.setattr(DSACache, "select_rows", lambda self, rows: (calls.append(len(rows)), original(self, rows)))
    greedy = RolloutEngine(model, tok).generate_greedy(prompts, 12)
    last = set(greedy[-1].tokens[greedy[-1].prompt_len:].tolist())
    stops = tuple({t.tokens[t.prompt_len + 1].item() for t in greedy[:-1]} - last)
    params = SamplingParams(greedy=True, max_new_tokens=12, stop_token_ids=stops)
    outs = [RolloutEngine(model, tok, EngineConfig(compact_fraction=frac)).generate(prompts, params)
            for frac in (0.25, 1.0)]
    lengths = [t.num_sampled for t in outs[0]]
    assert lengths[-1] == 12 and sum(n < 12 for n in lengths) >= 2, lengths
    assert calls and min(calls) == 2
    for x, y in zip(*outs):
        assert torch.equal(x.tokens, y.tokens) and x.finish_reason == y.finish_reason
        assert torch.allclose(x.logprobs, y.logprobs, atol=1e-5)


def test_stop_strings_ids_and_limits(model, tok, prompts) -> None:
    eng = RolloutEngine(model, tok)
    free = eng.generate_greedy(prompts[:1], 20)[0]
    gen = free.tokens[free.prompt_len:].tolist()
    # a stop string: the text of the 6th token; generation ends at the first token completing it
    stop = tok.decode(gen[5:6], skip_special_tokens=True).strip() or "x"
    n = next((k for k in range(1, len(gen) + 1) if stop in tok.decode(gen[:k], skip_special_tokens=True)), None)
    t = eng.generate(prompts[:1], SamplingParams(greedy=True, max_new_tokens=20, stop=(stop,)))[0]
    assert n is not None and t.tokens[t.prompt_len:].tolist() == gen[:n] and t.finish_reason == "stop"
    # a stop id
    t = eng.generate(prompts[:1], SamplingParams(greedy=True, max_new_tokens=20, stop_token_ids=(gen[3],)))[0]
    assert t.num_sampled == gen.index(gen[3]) + 1 and t.finish_reason == "stop"
    # length and context limits, and a prompt that fills the context
    t = eng.generate(prompts[:1], SamplingParams(greedy=True, max_new_tokens=4))[0]
    assert t.num_sampled == 4 and t.finish_reason == "length"
    short = RolloutEngine(model, tok, EngineConfig(max_seq_len=17))  # prompts of 14 and 3 tokens
    a, b = short.generate(prompts[1:3], SamplingParams(greedy=True, max_new_tokens=20))
    assert (a.num_sampled, a.finish_reason, b.num_sampled, b.finish_reason) == (3, "context", 14, "context")
    b = short.generate(prompts[2:3], SamplingParams(greedy=True, max_new_tokens=14))[0]
    assert (b.num_sampled, b.finish_reason) == (14, "length")  # both limits: the caller's wins
    c = short.generate([prompts[3]], SamplingParams(greedy=True, max_new_tokens=20))[0]
    assert (c.num_sampled, c.finish_reason, c.completion) == (0, "context", "")


def test_micro_batches_and_encode(model, tok) -> None:
    eng = RolloutEngine(model, tok, EngineConfig(max_batch_size=2))
    ps = eng.encode(["12+3=", [{"role": "user", "content": "What is 2+2?"}], "7"])
    assert ps[1][0] == tok.bos_token_id and ps[1][-1] == tok.convert_tokens_to_ids("<|assistant|>")
    out = eng.generate_greedy(ps, 6)
    whole = RolloutEngine(model, tok).generate_greedy(ps, 6)
    assert [t.prompt_index for t in out] == [0, 1, 2]
    assert all(torch.equal(x.tokens, y.tokens) for x, y in zip(out, whole))


def test_warm_up_shapes_and_no_op_when_eager(model, tok, monkeypatch) -> None:
    """Compiled: a full batch and a 3-row batch of uneven non-pad prompts longer than the top-k;
    eager: nothing at all. (generate is recorded, not run: no compile in the fast suite.)"""
    calls = []
    for compile_ in (False, True):
        eng = RolloutEngine(model, tok, EngineConfig(compile=compile_, max_batch_size=5))
        monkeypatch.setattr(eng, "generate", lambda prompts, params, seed, c=compile_: calls.append((c, prompts, params)))
        eng.warm_up()
    assert [c for c, _, _ in calls] == [True, True]  # the eager engine made no call
    k = model.config.index_topk
    for (_, prompts, params), rows in zip(calls, (5, 3)):
        assert [len(p) for p in prompts] == [k + 16 - i % 2 for i in range(rows)]
        assert all(t != eng.pad_id for p in prompts for t in p)
        assert params.greedy and params.max_new_tokens == 2 and params.ignore_eos
