"""Tests of rl.batch: the next-token shift, padding, kept sets (both compact forms), routes and
selections, sub-batch selection, and loud failures on inconsistent records."""
from __future__ import annotations

import pytest
import torch

from rl.batch import collate, kept_sets
from rl.policy.logprobs import masked_log_probs
from rollout.types import Trajectory, pack_mask

V = 10


def traj(tokens, prompt_len, kept=None, routes=None, topk=None) -> Trajectory:
    L = len(tokens)
    loss_mask = torch.arange(L) >= prompt_len
    logprobs = torch.where(loss_mask, -0.1 * torch.arange(L, dtype=torch.float32), 0.0)
    return Trajectory(tokens=torch.tensor(tokens), prompt_len=prompt_len, loss_mask=loss_mask, logprobs=logprobs,
                      completion="", finish_reason="stop", weight_version=0,
                      sampling_mask=None if kept is None else pack_mask(kept),
                      expert_routes=routes, topk_indices=topk)


def test_shift_and_padding():
    a = traj([5, 6, 7, 8], prompt_len=2)
    b = traj([1, 2, 3], prompt_len=1)
    batch = collate([a, b], [0.5, -1.0], vocab_size=V, pad_id=9)
    assert batch.input_ids.tolist() == [[5, 6, 7], [1, 2, 9]]
    assert batch.target_ids.tolist() == [[6, 7, 8], [2, 3, 9]]
    assert batch.attention_mask.tolist() == [[True, True, True], [True, True, False]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 1, 2]]
    # a: tokens 7, 8 were sampled (positions 1, 2 predict them); b: tokens 2, 3.
    assert batch.loss_mask.tolist() == [[False, True, True], [True, True, False]]
    torch.testing.assert_close(batch.old_logprobs, torch.tensor([[0.0, -0.2, -0.3], [-0.1, -0.2, 0.0]]))
    assert batch.advantages.tolist() == [0.5, -1.0]
    assert batch.sampling_mask is None and batch.expert_routes is None and batch.topk_indices is None
    assert int(batch.num_tokens) == 5


def test_kept_sets_shift_fill_and_forms():
    kept = torch.zeros(4, V, dtype=torch.bool)
    kept[2, [7, 1]] = True  # token 2 (= 7) drawn from {1, 7}
    kept[3, [8]] = True  # token 3 (= 8) drawn from {8}
    a = traj([5, 6, 7, 8], prompt_len=2, kept=kept)
    b = traj([1, 2, 3], prompt_len=1)  # sampled from the full vocabulary
    batch = collate([a, b], [0.0, 0.0], vocab_size=V)
    dense = kept_sets(batch.sampling_mask, V, max_ids_fraction=0.0)  # force the bool form
    assert dense.dtype == torch.bool
    assert dense[0, 0].sum() == 0  # untrained position: empty set
    assert dense[0, 1].nonzero().flatten().tolist() == [1, 7]
    assert dense[0, 2].nonzero().flatten().tolist() == [8]
    assert dense[1, 0].all() and dense[1, 1].all()  # no record: the full vocabulary
    assert dense[1, 2].sum() == 0  # padding
    # ids form when every set is small: here b's full sets forbid it; a alone allows it.
    alone = collate([a], [0.0], vocab_size=V)
    ids = kept_sets(alone.sampling_mask, V, max_ids_fraction=0.5)
    assert ids.dtype == torch.long and ids[0, 1].tolist() == [1, 7] and ids[0, 2].tolist() == [8, -1]
    logits = torch.randn(1, 3, V)
    both = [masked_log_probs(logits, alone.target_ids, k, temperature=0.7)
            for k in (ids, kept_sets(alone.sampling_mask, V, max_ids_fraction=0.0))]
    torch.testing.assert_close(both[0], both[1])
    assert both[0][0, 2] == 0.0  # a one-token kept set: log 1
    hand = torch.log_softmax(logits[0, 1, [1, 7]] / 0.7, -1)[1]  # P(7 | {1, 7})
    torch.testing.assert_close(both[0][0, 1], hand)


def test_routes_and_topk_alignment_and_padding():
    routes_a = torch.arange(4 * 2 * 2, dtype=torch.int16).view(4, 2, 2) % 4
    routes_b = torch.zeros(3, 2, 2, dtype=torch.int16)
    topk_a = torch.full((4, 1, 3), -1, dtype=torch.int32)
    topk_b = torch.full((3, 1, 3), -1, dtype=torch.int32)
    for t in range(4):
        topk_a[t, 0, : t + 1] = torch.arange(t + 1)[:3]
    batch = collate([traj([1, 2, 3, 4], 1, routes=routes_a, topk=topk_a),
                     traj([1, 2, 3], 1, routes=routes_b, topk=topk_b)], [0.0, 0.0], vocab_size=V)
    assert batch.expert_routes.shape == (2, 3, 2, 2)
    assert torch.equal(batch.expert_routes[0], routes_a[:3].long())  # input tokens 0..2
    assert batch.expert_routes[1, 2].tolist() == [[0, 1], [0, 1]]  # padding: distinct valid experts
    assert batch.topk_indices[1, 2, 0].tolist() == [2, -1, -1]  # padding query selects itself
    assert len(batch.routes_per_layer()) == 2 and batch.routes_per_layer()[0].shape == (2, 3, 2)
    assert len(batch.topk_per_layer()) == 1


def test_select_trims_and_filler():
    batch = collate([traj([1, 2, 3, 4, 5], 1), traj([1, 2, 3], 1)], [1.0, 2.0], vocab_size=V)
    sub = batch.select([1])
    assert sub.input_ids.tolist() == [[1, 2]] and sub.advantages.tolist() == [2.0]
    assert not sub.without_loss().loss_mask.any() and sub.without_loss().attention_mask.all()


def test_inconsistent_records_raise():
    r = torch.zeros(3, 1, 1, dtype=torch.int16)
    with pytest.raises(ValueError, match="expert_routes recorded for 1 of 2"):
        collate([traj([1, 2, 3], 1, routes=r), traj([1, 2, 3], 1)], [0.0, 0.0], vocab_size=V)
    with pytest.raises(ValueError, match="advantages"):
        collate([traj([1, 2, 3], 1)], [0.0, 0.0], vocab_size=V)
    with pytest.raises(ValueError, match="sampling_mask shape"):
        collate([traj([1, 2, 3], 1, kept=torch.ones(3, V, dtype=torch.bool))], [0.0], vocab_size=20)
