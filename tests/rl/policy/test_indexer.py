"""Lightning indexer: index_scores hand values, deterministic lower-index tie-break, masks."""
from __future__ import annotations

import torch

from rl.policy.indexer import LightningIndexer, index_scores, indices_to_mask, select_topk


def brute_topk(scores: list[float], allowed: list[bool], k: int) -> list[int]:
    cands = [s for s in range(len(scores)) if allowed[s]]
    return sorted(sorted(cands, key=lambda s: (-scores[s], s))[:k])


def test_index_scores_hand_value() -> None:
    q = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])  # (B=1, T=1, H=2, D=2)
    k = torch.tensor([[[2.0, -1.0], [-1.0, 3.0]]])  # (B=1, S=2, D=2)
    w = torch.tensor([[[0.5, 2.0]]])  # (B=1, T=1, H=2)
    # s0: 0.5*relu(2) + 2*relu(-1) = 1;  s1: 0.5*relu(-1) + 2*relu(3) = 6
    torch.testing.assert_close(index_scores(q, k, w), torch.tensor([[[1.0, 6.0]]]))


def test_index_scores_key_blocks_do_not_change_result() -> None:
    g = torch.Generator().manual_seed(0)
    q, k, w = torch.randn(2, 3, 4, 8, generator=g), torch.randn(2, 50, 8, generator=g), torch.randn(2, 3, 4, generator=g)
    torch.testing.assert_close(index_scores(q, k, w, key_block=7), index_scores(q, k, w))


def test_ties_break_toward_lower_index() -> None:
    scores = torch.tensor([[[1.0, 3.0, 3.0, 3.0, 0.0]]])
    allowed = torch.ones(1, 1, 5, dtype=torch.bool)
    assert select_topk(scores, allowed, 2).tolist() == [[[1, 2]]]
    assert select_topk(scores, allowed, 4).tolist() == [[[0, 1, 2, 3]]]
    zeros = torch.zeros(1, 1, 6)  # ReLU makes exact zeros common
    assert select_topk(zeros, torch.ones(1, 1, 6, dtype=torch.bool), 3).tolist() == [[[0, 1, 2]]]


def test_padding_with_minus_one_and_masking() -> None:
    scores = torch.tensor([[[5.0, 1.0, 9.0, 2.0]]])
    allowed = torch.tensor([[[True, True, False, False]]])
    assert select_topk(scores, allowed, 3).tolist() == [[[0, 1, -1]]]
    # k larger than S: width is still k
    assert select_topk(scores, torch.ones(1, 1, 4, dtype=torch.bool), 6).tolist() == [[[0, 1, 2, 3, -1, -1]]]


def test_select_topk_matches_brute_force_with_many_ties() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (3, 7, 20), generator=g).float()  # heavy ties
    allowed = torch.rand(3, 7, 20, generator=g) > 0.3
    for k in (1, 3, 8, 25):
        got = select_topk(scores, allowed, k)
        for b in range(3):
            for t in range(7):
                want = brute_topk(scores[b, t].tolist(), allowed[b, t].tolist(), k)
                row = got[b, t].tolist()
                assert row == want + [-1] * (k - len(want))


def test_indices_to_mask_keeps_position_zero() -> None:
    idx = torch.tensor([[[0, 2, -1]]])
    assert indices_to_mask(idx, 4).tolist() == [[[True, False, True, False]]]


def test_head_weights_are_fp32_and_scaled(make_config) -> None:
    cfg = make_config()
    ix = LightningIndexer(cfg).to(torch.bfloat16)
    h = torch.randn(1, 3, cfg.hidden_size).bfloat16()
    w = ix.head_weights(h)
    assert w.dtype == torch.float32
    expected = ix.weights_proj(h).float() * cfg.index_n_heads ** -0.5 * cfg.index_head_dim ** -0.5
    torch.testing.assert_close(w, expected)


def test_rope_only_on_first_half_of_indexer_dims(make_config) -> None:
    cfg = make_config()
    ix = LightningIndexer(cfg)
    h = torch.randn(1, 1, cfg.hidden_size)
    half = cfg.index_head_dim // 2
    zero = torch.zeros(1, 1, half // 2)
    k0 = ix.keys(h, torch.ones_like(zero), zero)  # position 0: no rotation
    k1 = ix.keys(h, torch.full_like(zero, 0.3), torch.full_like(zero, 0.95))
    torch.testing.assert_close(k0[..., half:], k1[..., half:])
    assert (k0[..., :half] - k1[..., :half]).abs().max() > 1e-3


def test_select_topk_continuous_scores_match_brute_force() -> None:
    """Without ties (the one-topk fast path) the selection is the brute-force top-k."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 9, 40, generator=g)
    allowed = torch.rand(2, 9, 40, generator=g) > 0.2
    for k in (1, 5, 33, 40, 50):
        got = select_topk(scores, allowed, k)
        for b in range(2):
            for t in range(9):
                want = brute_topk(scores[b, t].tolist(), allowed[b, t].tolist(), k)
                assert got[b, t].tolist() == want + [-1] * (k - len(want))


def test_chunk_selection_replays_or_selects() -> None:
    from rl.policy.indexer import chunk_selection

    scores = torch.tensor([[[0.0, 3.0, 1.0], [2.0, 2.0, 5.0]]])  # (B=1, C=2, S=3)
    allowed = torch.ones(1, 2, 3, dtype=torch.bool)
    replay = torch.tensor([[[9, 8], [7, 6], [5, 4]]])  # (B, T=3, k=2)
    assert chunk_selection(replay, 1, 3, scores, allowed, 2, True).tolist() == [[[7, 6], [5, 4]]]
    assert chunk_selection(None, 0, 2, scores, allowed, 2, False) is None
    # top-2 by hand, ascending positions: row 0 -> {1, 2}; row 1 -> {2} and the tie 0/1 goes to 0.
    assert chunk_selection(None, 0, 2, scores, allowed, 2, True).tolist() == [[[1, 2], [0, 2]]]


def test_keyed_selection_is_the_exact_rule() -> None:
    """The branch-free rule used under torch.compile: heavy ties, -0.0 == +0.0, padding, k > S."""
    from rl.policy.indexer import _select_keyed

    g = torch.Generator().manual_seed(2)
    scores = torch.randint(-2, 3, (3, 5, 20), generator=g).float()
    scores[0, 0, :10] = -0.0  # equal to +0.0: ties broken by position only
    scores[0, 0, 10:] = 0.0
    allowed = torch.rand(3, 5, 20, generator=g) > 0.3
    masked = scores.masked_fill(~allowed, float("-inf"))
    for k in (1, 4, 9, 25):
        got = _select_keyed(masked, allowed, k)
        assert torch.equal(got, select_topk(scores, allowed, k))
        for b in range(3):
            for t in range(5):
                want = brute_topk(scores[b, t].tolist(), allowed[b, t].tolist(), k)
                assert got[b, t].tolist() == want + [-1] * (k - len(want))
