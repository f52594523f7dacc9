"""rl.prefix: the packed layout by hand; the packed training forward equals the plain one (log-probs
and gradients) on the native MLA + MoE policy with replayed routes and selections and on a
converted Llama; the trainer's update with `share_prefix` / `group_minibatches` is the plain one."""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
import _trainer_fixtures as fx

from rl.batch import collate, kept_sets
from rl.policy.convert import convert_model
from rl.policy.logprobs import masked_log_probs
from rl.prefix import first_trained, pack_groups, packed_logits, prefix_groups, slot_of
from rl.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trajs():
    return fx.sample_trajectories(fx.tiny_policy(seed=0))  # 2 prompts (6, 7 tokens) x 4 samples


def test_layout_by_hand(trajs):
    batch = collate(trajs, torch.zeros(len(trajs)), vocab_size=fx.VOCAB)
    f = first_trained(batch)
    assert f.tolist() == [5] * 4 + [6] * 4  # the last prompt token predicts the first sample
    assert prefix_groups(batch).tolist() == [0] * 4 + [1] * 4
    rows = batch.select([0, 1, 4])  # group 0: rows 0, 1 (prefix 5); group 1: row 4 (prefix 6)
    pg = pack_groups(rows)
    n = (rows.attention_mask.sum(1) - first_trained(rows)).tolist()  # continuation lengths
    P, T = 6, 6 + max(n[0] + n[1], n[2])
    assert pg.prefix_width == P and pg.input_ids.shape == (2, T)
    # group 0: one padding slot, its prefix at slots 1-5, row 0's continuation, then row 1's
    assert pg.valid[0].tolist() == [False] + [True] * (5 + n[0] + n[1]) + [False] * (T - 6 - n[0] - n[1])
    assert torch.equal(pg.input_ids[0, 1:6], rows.input_ids[0, :5])
    assert torch.equal(pg.input_ids[0, 6:6 + n[0]], rows.input_ids[0, 5:5 + n[0]])
    assert torch.equal(pg.input_ids[0, 6 + n[0]:6 + n[0] + n[1]], rows.input_ids[1, 5:5 + n[1]])
    assert pg.position_ids[0, 1:6].tolist() == [0, 1, 2, 3, 4]
    assert pg.position_ids[0, 6 + n[0]:6 + n[0] + 2].tolist() == [5, 6]  # row 1 starts at position 5 too
    q = 6 + n[0]  # row 1's first continuation slot sees the prefix and itself, not row 0's reply
    assert pg.allowed[0, q].nonzero().squeeze(-1).tolist() == [1, 2, 3, 4, 5, q]
    assert pg.allowed[0, 3].nonzero().squeeze(-1).tolist() == [1, 2, 3]
    assert pg.allowed[0, 0].nonzero().squeeze(-1).tolist() == [0]  # padding sees itself only
    # rows: continuation layout, unpacking reads the right slots
    assert pg.rows.attention_mask.sum(1).tolist() == n
    assert torch.equal(pg.rows.loss_mask[:, 0], torch.ones(3, dtype=torch.bool))
    marks = torch.arange(2 * (T - P)).view(2, T - P)
    assert pg.unpack(marks)[1, :2].tolist() == [n[0], n[0] + 1] and pg.unpack(marks)[2, :2].tolist() == [T - P, T - P + 1]
    # selections: prefix position 2 of group 0 -> slot 3; row 1's position 5 -> slot 6 + n[0]
    assert slot_of(torch.tensor([2, 5, -1]), torch.tensor(5), P, torch.tensor(n[0])).tolist() == [3, 6 + n[0], -1]


def test_no_packing_when_every_prefix_differs(trajs):
    batch = collate(trajs, torch.zeros(len(trajs)), vocab_size=fx.VOCAB)
    assert pack_groups(batch.select([0, 4])) is None


def _logp_and_grads(model, batch, packed: bool, keep: bool):
    """Log-probs laid out as the plain batch (zeros off the loss mask) and the gradients of a fixed
    weighted sum of them."""
    model.zero_grad()
    V = model.config.vocab_size
    if packed:
        pg = pack_groups(batch)
        assert pg is not None
        logits = packed_logits(model, pg, keep_routing=keep, keep_indexing=keep)
        kept = kept_sets(pg.sampling_mask, V) if pg.sampling_mask is not None else None
        lp = pg.unpack(masked_log_probs(logits, pg.target_ids, kept, temperature=1.0))
        f = first_trained(batch)
        logp = torch.zeros(batch.loss_mask.shape)
        for i in range(len(batch)):
            n = int(pg.rows.attention_mask[i].sum())
            logp = logp.index_put((torch.full((n,), i), torch.arange(f[i], f[i] + n)), lp[i, :n])
    else:
        kept = kept_sets(batch.sampling_mask, V) if batch.sampling_mask is not None else None
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids, use_cache=False,
                       expert_routes=batch.routes_per_layer() if keep else None,
                       topk_indices=batch.topk_per_layer() if keep else None).logits
        logp = masked_log_probs(logits, batch.target_ids, kept, temperature=1.0)
    logp = torch.where(batch.loss_mask, logp, 0.0)
    w = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    (logp * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach(), grads


def _assert_equal_runs(model, batch, keep: bool):
    lp0, g0 = _logp_and_grads(model, batch, packed=False, keep=keep)
    lp1, g1 = _logp_and_grads(model, batch, packed=True, keep=keep)
    assert lp0.abs().sum() > 0
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=2e-5)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("keep", [True, False], ids=["replayed-routes-and-selections", "own-selection"])
def test_native_policy_packed_equals_plain(trajs, keep):
    model = fx.tiny_policy(seed=0).train()
    batch = collate(trajs, torch.zeros(len(trajs)), vocab_size=fx.VOCAB)
    assert model.config.attention_mode == "sparse" and batch.input_ids.shape[1] > model.config.index_topk
    _assert_equal_runs(model, batch, keep)


def test_converted_llama_packed_equals_plain(trajs):
    torch.manual_seed(0)
    src = LlamaForCausalLM(LlamaConfig(vocab_size=fx.VOCAB, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       initializer_range=0.1))
    model = convert_model(src, index_topk=6, index_n_heads=2, index_head_dim=16).train()
    trajs = [replace(t, expert_routes=None, topk_indices=None) for t in trajs]  # the native policy's records
    batch = collate(trajs, torch.zeros(len(trajs)), vocab_size=fx.VOCAB)
    for mode in ("sparse", "dense"):
        model.config.attention_mode = mode
        _assert_equal_runs(model, batch, keep=False)


@pytest.mark.parametrize("overrides", [{"share_prefix": True},
                                       {"share_prefix": True, "group_minibatches": True, "mini_batch_size": 8}],
                         ids=["share", "share-groups"])
def test_trainer_update_is_the_plain_update(overrides):
    plain_metrics, plain = fx.one_update(0)
    metrics, weights = fx.one_update(0, **overrides)
    assert metrics["loss"] == pytest.approx(plain_metrics["loss"], rel=1e-5, abs=1e-7)
    assert metrics["num_tokens"] == plain_metrics["num_tokens"]
    for k, v in plain.items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=1e-4, msg=k)


def test_group_minibatches_keep_groups_together(trajs):
    trainer = Trainer(fx.tiny_policy, fx.algo(mini_batch_size=4, micro_batch_size=4, group_minibatches=True,
                                              share_prefix=True), fx.ds(0))
    seen = []
    orig = trainer._micro_step

    def spy(mb, *a, **k):
        seen.append(prefix_groups(mb).unique().numel())
        return orig(mb, *a, **k)

    trainer._micro_step = spy
    trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
    assert seen == [1, 1]  # each mini-batch of 4 is one group: one prompt forwarded
