"""Indexer KL: hand values, gradient softmax(I) - p, freezing, detached inputs, and a dense warm-up
that lowers the loss and raises the overlap with the true attention top-k."""
from __future__ import annotations

import math

import torch

from rl.policy import indexer_kl
from rl.policy.indexer import index_scores
from rl.policy.sparse import allowed_keys


def test_kl_hand_value() -> None:
    scores = torch.tensor([0.0, math.log(3.0)])  # softmax = [1/4, 3/4]
    p = torch.tensor([0.5, 0.5])
    want = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    got = indexer_kl(scores, p, torch.tensor([True, True]))
    torch.testing.assert_close(got, torch.tensor(want))
    # a key outside the support changes nothing, whatever its score
    got = indexer_kl(torch.tensor([0.0, math.log(3.0), 50.0]), torch.tensor([0.5, 0.5, 0.0]),
                     torch.tensor([True, True, False]))
    torch.testing.assert_close(got, torch.tensor(want))


def test_kl_zero_target_entries() -> None:
    scores = torch.tensor([0.0, math.log(3.0)])
    got = indexer_kl(scores, torch.tensor([1.0, 0.0]), torch.tensor([True, True]))
    torch.testing.assert_close(got, torch.tensor(-math.log(0.25)))


def test_gradient_is_softmax_minus_target() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(3, 6, generator=g, requires_grad=True)
    support = torch.rand(3, 6, generator=g) > 0.3
    support[:, 0] = True
    p = torch.rand(3, 6, generator=g) * support
    p = p / p.sum(-1, keepdim=True)
    indexer_kl(scores, p, support).sum().backward()
    q = torch.softmax(scores.detach().masked_fill(~support, float("-inf")), -1)
    torch.testing.assert_close(scores.grad, torch.where(support, q - p, torch.zeros_like(q)))


def test_freeze_all_but_indexer(make_model) -> None:
    model = make_model()
    params = model.freeze_all_but_indexer()
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".indexer." in n for n in names)
    assert len(params) == len(names) == 5 * model.config.num_hidden_layers  # wq, wk, k_norm w+b, weights_proj
    assert sum(1 for n, _ in model.named_parameters() if ".indexer." in n) == len(names)


def test_indexer_learns_only_from_its_loss(make_model) -> None:
    model = make_model().train()
    x = torch.randint(0, 64, (2, 12))
    out = model(x, labels=x, output_indexer_loss=True, use_cache=False)
    out.indexer_loss.backward(retain_graph=True)
    for n, p in model.named_parameters():
        if ".indexer." in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n
    model.zero_grad(set_to_none=True)
    out.lm_loss.backward()
    for n, p in model.named_parameters():
        if ".indexer." in n:
            assert p.grad is None, n
    torch.testing.assert_close(out.loss, out.lm_loss + model.config.indexer_loss_weight * out.indexer_loss)


@torch.no_grad()
def test_sparse_indexer_loss_under_replay_equals_fresh(make_model) -> None:
    model = make_model()
    x = torch.randint(0, 64, (2, 14))
    fresh = model(x, output_topk_indices=True, output_indexer_loss=True, use_cache=False)
    replay = model(x, topk_indices=fresh.topk_indices, output_indexer_loss=True, use_cache=False)
    torch.testing.assert_close(replay.indexer_loss, fresh.indexer_loss)
    assert fresh.indexer_loss > 0


def _attention_and_index_scores(model, x):
    """Per layer: (head-summed, L1-normalised dense attention probs (B, T, T), index scores (B, T, T)),
    recomputed from each attention layer's inputs (captured with hooks during a dense forward)."""
    captured = []
    hooks = [layer.attn.register_forward_pre_hook(lambda m, args: captured.append((m, args[0], args[1])))
             for layer in model.model.layers]
    with torch.no_grad():
        model(x, attention_mode="dense", use_cache=False)
    for hk in hooks:
        hk.remove()
    result = []
    with torch.no_grad():
        for attn, h, ctx in captured:
            T = h.shape[1]
            p = attn.project(h, ctx)
            lat = p["entry"]
            w = attn.kv_b.weight.view(attn.n_heads, attn.dn + attn.dv, attn.kv_lora)  # (H, dn+dv, kv_lora)
            k_nope = torch.einsum("bsc,hnc->bshn", lat[..., : attn.kv_lora], w[:, : attn.dn])
            values = torch.einsum("bsc,hvc->bshv", lat[..., : attn.kv_lora], w[:, attn.dn:])
            allowed = allowed_keys(ctx, 0, T)
            _, probs = attn._dense(p["q_nope"], p["q_rope"], k_nope, lat, values, allowed)
            target = probs.sum(1)
            target = target / target.sum(-1, keepdim=True)
            iq = attn.indexer.queries(p["q_latent"], *ctx.index_rope)
            scores = index_scores(iq, p["index_k"].float(), attn.indexer.head_weights(h))
            result.append((target, scores.masked_fill(~allowed, float("-inf"))))
    return result


def test_model_warmup_loss_is_mean_kl_over_tokens_and_layers(make_model) -> None:
    model = make_model()
    x = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        got = model(x, attention_mode="dense", output_indexer_loss=True, use_cache=False).indexer_loss
    per_layer = [indexer_kl(scores, target, torch.isfinite(scores)).mean()
                 for target, scores in _attention_and_index_scores(model, x)]
    torch.testing.assert_close(got, torch.stack(per_layer).mean())


def _topk_overlap(model, x, k: int) -> float:
    """Mean |top-k(indexer) & top-k(attention)| / k over queries t >= k, all layers."""
    total, count = 0.0, 0
    for target, scores in _attention_and_index_scores(model, x):
        top_p = target[:, k:].topk(k, dim=-1).indices
        top_i = scores[:, k:].topk(k, dim=-1).indices
        same = (top_p.unsqueeze(-1) == top_i.unsqueeze(-2)).any(-1).float()  # (B, T-k, k)
        total += same.mean().item()
        count += 1
    return total / count


def dense_warmup(model, steps: int, lr: float, seq_len: int = 32, batch: int = 8, seed: int = 0):
    """Train only the indexers on the dense warm-up loss; return (loss/overlap before, after)."""
    g = torch.Generator().manual_seed(seed)
    held_out = torch.randint(0, model.config.vocab_size, (8, seq_len), generator=g)
    k = model.config.index_topk

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            loss = model(held_out, attention_mode="dense", output_indexer_loss=True, use_cache=False).indexer_loss
        return loss.item(), _topk_overlap(model, held_out, k)

    before = measure()
    opt = torch.optim.Adam(model.freeze_all_but_indexer(), lr=lr)
    for _ in range(steps):
        x = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=g)
        loss = model(x, attention_mode="dense", output_indexer_loss=True, use_cache=False).indexer_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, measure()


def test_dense_warmup_lowers_loss_and_raises_overlap(make_model) -> None:
    model = make_model(seed=1)
    (loss0, overlap0), (loss1, overlap1) = dense_warmup(model, steps=40, lr=1e-2)
    print(f"\ndense warm-up: indexer KL {loss0:.4f} -> {loss1:.4f}; top-k overlap {overlap0:.3f} -> {overlap1:.3f}")
    assert loss1 < 0.7 * loss0
    assert overlap1 > overlap0 + 0.05
