"""DSAForCausalLM: sparse vs dense oracle, selection properties, replay, padding, cache, HF integration."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rl.policy import DSAConfig, DSAForCausalLM
from rl.policy.indexer import index_scores


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_sparse_equals_dense_when_k_covers_sequence(make_model) -> None:
    model = make_model(index_topk=24)
    x = tokens(2, 24)
    sparse = model(x, use_cache=False).logits
    dense = model(x, attention_mode="dense", use_cache=False).logits
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=0)


@torch.no_grad()
def test_sparse_differs_from_dense_beyond_k(make_model) -> None:
    model = make_model()
    x = tokens(2, 24)
    sparse = model(x, use_cache=False).logits
    dense = model(x, attention_mode="dense", use_cache=False).logits
    torch.testing.assert_close(sparse[:, :4], dense[:, :4], atol=1e-5, rtol=0)  # t < k: everything selected
    assert (sparse[:, 4:] - dense[:, 4:]).abs().max() > 1e-3


@torch.no_grad()
def test_selection_is_causal_distinct_and_the_indexer_topk(make_model) -> None:
    model = make_model()
    k = model.config.index_topk
    x = tokens(2, 20)
    captured = []
    hooks = [layer.attn.register_forward_pre_hook(lambda m, args: captured.append((m, args[0], args[1])))
             for layer in model.model.layers]
    out = model(x, output_topk_indices=True, use_cache=False)
    for hk in hooks:
        hk.remove()
    assert len(out.topk_indices) == model.config.num_hidden_layers
    for (attn, h, ctx), sel in zip(captured, out.topk_indices, strict=True):
        assert sel.shape == (2, 20, k) and sel.dtype == torch.long
        p = attn.project(h, ctx)
        scores = index_scores(attn.indexer.queries(p["q_latent"], *ctx.index_rope), p["index_k"].float(),
                              attn.indexer.head_weights(h))
        for b in range(2):
            for t in range(20):
                row = [s for s in sel[b, t].tolist() if s >= 0]
                assert len(row) == len(set(row)) == min(k, t + 1)
                assert all(0 <= s <= t for s in row)
                assert sel[b, t, len(row):].eq(-1).all()
                want = sorted(sorted(range(t + 1), key=lambda s: (-scores[b, t, s].item(), s))[:k])
                assert row == want


@torch.no_grad()
def test_replay_reproduces_logits_and_other_choices_change_them(make_model) -> None:
    model = make_model()
    x = tokens(2, 20)
    out = model(x, output_topk_indices=True, output_expert_routes=True, use_cache=False)
    assert len(out.expert_routes) == len(model.config.moe_layer_indices) == 1
    assert out.expert_routes[0].shape == (2, 20, model.config.num_experts_per_tok)
    again = model(x, topk_indices=out.topk_indices, expert_routes=out.expert_routes, use_cache=False)
    assert torch.equal(again.logits, out.logits)

    other = [s.clone() for s in out.topk_indices]
    other[1][:, 10:, 0] = torch.where(other[1][:, 10:, 0] == 0, 1, 0)  # swap one selected position
    other[1][:, 10:] = other[1][:, 10:].sort(-1).values
    changed = model(x, topk_indices=other, expert_routes=out.expert_routes, use_cache=False)
    assert (changed.logits[:, 10:] - out.logits[:, 10:]).abs().max() > 1e-4

    routes = [r.clone() for r in out.expert_routes]
    routes[0] = (routes[0] + 1) % model.config.n_routed_experts
    rerouted = model(x, topk_indices=out.topk_indices, expert_routes=routes, use_cache=False)
    assert (rerouted.logits - out.logits).abs().max() > 1e-4


@torch.no_grad()
def test_left_padding_does_not_change_real_tokens(make_model) -> None:
    model = make_model()
    x = tokens(1, 16)
    ref = model(x, output_topk_indices=True, use_cache=False)
    pad = 5
    xp = torch.cat([torch.zeros(1, pad, dtype=torch.long), x], 1)
    mask = torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones(1, 16, dtype=torch.long)], 1)
    out = model(xp, attention_mask=mask, output_topk_indices=True, use_cache=False)
    torch.testing.assert_close(out.logits[:, pad:], ref.logits, atol=1e-5, rtol=0)
    for got, want in zip(out.topk_indices, ref.topk_indices, strict=True):
        real = got[:, pad:]
        assert torch.equal(torch.where(real >= 0, real - pad, -1), want)  # never a padding slot
        assert torch.isfinite(out.logits).all()


def _decode_all(model, x, mask, prompt_len, mode="sparse", cache=None):
    cache = cache if cache is not None else model.new_cache(x.shape[0], 4)  # small: forces growth
    out = model(x[:, :prompt_len], attention_mask=mask[:, :prompt_len], cache=cache, attention_mode=mode,
                output_topk_indices=True)
    logits, sels = [out.logits], [out.topk_indices]
    for t in range(prompt_len, x.shape[1]):
        o = model(x[:, t:t + 1], attention_mask=mask[:, : t + 1], cache=cache, attention_mode=mode,
                  output_topk_indices=True)
        logits.append(o.logits)
        sels.append(o.topk_indices)
    return torch.cat(logits, 1), sels


@torch.no_grad()
@pytest.mark.parametrize("mode", ["sparse", "dense"])
def test_incremental_decoding_matches_full_forward_with_left_padding(make_model, mode) -> None:
    model = make_model()
    x = tokens(2, 22)
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # row 0 left-padded by 3
    full = model(x, attention_mask=mask, attention_mode=mode, output_topk_indices=True, use_cache=False)
    logits, sels = _decode_all(model, x, mask, prompt_len=6, mode=mode)
    torch.testing.assert_close(logits[0, 3:], full.logits[0, 3:], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[1], full.logits[1], atol=1e-5, rtol=0)
    if mode == "sparse":
        for layer in range(model.config.num_hidden_layers):
            inc = torch.cat([s[layer] for s in sels], 1)
            assert torch.equal(inc[:, 3:], full.topk_indices[layer][:, 3:])


@torch.no_grad()
def test_query_chunking_does_not_change_results(make_model) -> None:
    x = tokens(2, 20)
    a = make_model()(x, output_topk_indices=True, use_cache=False)
    b = make_model(attention_chunk_size=3)(x, output_topk_indices=True, use_cache=False)
    # 20 queries take the "expanded" path, whose per-chunk GEMMs round differently (~2e-6).
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    assert all(torch.equal(s, t) for s, t in zip(a.topk_indices, b.topk_indices, strict=True))


def test_sparse_training_backward_reaches_main_weights(make_model) -> None:
    model = make_model().train()
    x = tokens(2, 16)
    model(x, labels=x, use_cache=False).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["model.layers.1.attn.kv_b.weight"].abs().sum() > 0
    assert grads["model.layers.1.ffn.gate.weight"].abs().sum() > 0
    assert all(g is None for n, g in grads.items() if ".indexer." in n)


def test_dense_mode_rejects_replay(make_model) -> None:
    model = make_model()
    x = tokens(1, 6)
    sel = model(x, output_topk_indices=True, use_cache=False).topk_indices
    with pytest.raises(ValueError, match="sparse"):
        model(x, attention_mode="dense", topk_indices=sel, use_cache=False)


@torch.no_grad()
def test_save_load_roundtrip_with_auto_classes(make_model, tmp_path) -> None:
    model = make_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DSAConfig)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, DSAForCausalLM)
    x = tokens(2, 12)
    assert torch.equal(loaded(x, use_cache=False).logits, model(x, use_cache=False).logits)
    for (n, a), (m, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert n == m and torch.equal(a, b)


@torch.no_grad()
def test_generate_matches_a_plain_greedy_loop(make_model) -> None:
    model = make_model()
    x = tokens(2, 5)
    out = model.generate(x, max_new_tokens=10, do_sample=False)
    ids = x
    for _ in range(10):
        ids = torch.cat([ids, model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, ids)
    cache = model.new_cache(2, 15)
    again = model.generate(x, max_new_tokens=10, do_sample=False, cache=cache)
    assert torch.equal(again, ids) and cache.seq_len == 14


@torch.no_grad()
def test_generate_left_padded_batch_matches_unpadded_rows(make_model) -> None:
    model = make_model(pad_token_id=0)
    short, long = tokens(1, 4, seed=1) % 63 + 1, tokens(1, 7, seed=2) % 63 + 1
    batch = torch.cat([torch.cat([torch.zeros(1, 3, dtype=torch.long), short], 1), long])
    mask = (batch != 0).long()
    out = model.generate(batch, attention_mask=mask, max_new_tokens=8, do_sample=False)
    alone = model.generate(short, max_new_tokens=8, do_sample=False)
    assert torch.equal(out[0, 3:], alone[0])
