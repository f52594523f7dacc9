"""rollout.sampling: kept sets are exactly the top-k / top-p definitions; log-probs and draws follow q."""
from __future__ import annotations

import math

import pytest
import torch

from rollout.sampling import SamplingParams, kept_set, sample_next


def _direct_kept(row: list[float], top_k: int, top_p: float) -> set[int]:
    """The definitions, one row, in float64 Python: top-k with ties kept, then the nucleus."""
    V = len(row)
    ids = set(range(V))
    if 0 < top_k < V:
        kth = sorted(row, reverse=True)[top_k - 1]
        ids = {i for i in range(V) if row[i] >= kth}
    if top_p < 1:
        m = max(row[i] for i in ids)
        z = sum(math.exp(row[i] - m) for i in ids)
        order = sorted(ids, key=lambda i: -row[i])
        keep, mass = set(), 0.0
        for i in order:
            if mass < top_p:
                keep.add(i)
            mass += math.exp(row[i] - m) / z
        ids = keep
    return ids


def test_top_k_hand_values() -> None:
    x = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0]])
    assert kept_set(x, 2, 1.0)[0].tolist() == [False, True, False, True, False]
    assert kept_set(x, 3, 1.0)[0].tolist() == [False, True, True, True, False]
    assert kept_set(x, 1, 1.0)[0].tolist() == [False, True, False, True, False]  # a tie at the k-th value: both
    assert kept_set(x, 0, 1.0) is None and kept_set(x, 5, 1.0) is None  # nothing truncated


def test_top_p_hand_values() -> None:
    x = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()  # masses before each id: 0, .5, .8, .95
    assert kept_set(x, 0, 0.75)[0].tolist() == [True, True, False, False]
    assert kept_set(x, 0, 0.85)[0].tolist() == [True, True, True, False]
    assert kept_set(x, 0, 0.4)[0].tolist() == [True, False, False, False]  # the top id always stays
    # top-k first (k=2 -> {0.5, 0.3} renormalised to 0.625, 0.375), then the nucleus on that
    assert kept_set(x, 2, 0.6)[0].tolist() == [True, False, False, False]
    assert kept_set(x, 2, 0.7)[0].tolist() == [True, True, False, False]


@pytest.mark.parametrize(("top_k", "top_p"), [(20, 1.0), (0, 0.9), (20, 0.9), (5, 0.5), (0, 0.3)])
def test_kept_set_equals_direct_computation(top_k: int, top_p: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 300, generator=g) * 3
    keep = kept_set(x, top_k, top_p)
    for b in range(x.shape[0]):
        assert set(keep[b].nonzero().squeeze(-1).tolist()) == _direct_kept(x[b].double().tolist(), top_k, top_p)


def test_logprob_is_renormalised_truncated_softmax() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 50, generator=g) * 2
    params = SamplingParams(temperature=0.7, top_k=10, top_p=0.8)
    tok, lp, keep = sample_next(logits, params, g)
    x = logits.double() / 0.7
    for b in range(8):
        assert keep[b, tok[b]]  # never outside the kept set
        kept = keep[b].nonzero().squeeze(-1)
        expected = x[b, tok[b]] - torch.logsumexp(x[b, kept], dim=0)
        assert abs(float(lp[b]) - float(expected)) < 1e-6


def test_draws_follow_q_and_are_seeded() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0]).expand(20000, 5)
    params = SamplingParams(temperature=1.0, top_k=3)
    tok, _, _ = sample_next(logits, params, torch.Generator().manual_seed(5))
    q = torch.softmax(torch.tensor([2.0, 1.0, 0.5]), 0)
    freq = torch.bincount(tok, minlength=5).double() / 20000
    assert freq[3:].sum() == 0
    assert torch.allclose(freq[:3], q.double(), atol=0.015)  # ~4 sigma at n=20000
    again, _, _ = sample_next(logits, params, torch.Generator().manual_seed(5))
    assert torch.equal(tok, again)


def test_greedy() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 1.0, 1.0]])
    tok, lp, keep = sample_next(logits, SamplingParams(greedy=True, top_k=1), None)
    assert tok.tolist() == [1, 0] and keep is None
    assert torch.allclose(lp, torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1))


def test_params_validation_and_config() -> None:
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=-1)
    assert not SamplingParams().truncates and SamplingParams(top_p=0.9).truncates
    assert not SamplingParams(greedy=True, top_k=5).truncates
    from rl.config import RolloutConfig

    p = SamplingParams.from_config(RolloutConfig(top_p=0.95, stop=["</a>"]), max_new_tokens=7)
    assert (p.top_p, p.stop, p.max_new_tokens) == (0.95, ("</a>",), 7)


def test_top_k_tie_then_top_p_hand_values() -> None:
    """Row 0 ties at the k-th value (k=2): ids 1-3 all equal the 2nd largest, so all four stay for
    the nucleus (the full-sort path), masses .4 .2 .2 .2; top-p 0.7 with masses before each sorted
    id 0, .4, .6, .8 keeps id 0 and two of the tied ids (which two is the sort's order of equals)."""
    x = torch.tensor([[0.4, 0.2, 0.2, 0.2], [0.5, 0.3, 0.15, 0.05]]).log()
    keep = kept_set(x, 2, 0.7)
    assert keep[0, 0] and int(keep[0].sum()) == 3  # {0} + two of the three tied ids (mass before: 0, .4, .6)
    # row 1 has no tie: the k-candidate path; k=2 -> {.5, .3} renormalised .625/.375; p .7 keeps both
    assert keep[1].tolist() == [True, True, False, False]


def test_nucleus_draws_follow_q_with_and_without_a_tie() -> None:
    """Frequencies and log-probs of top-k + top-p draws, on the k-candidate path (row without a tie
    at the k-th value) and the full-sort path (a tie), against q computed by hand."""
    for row, k, p, want in (
        # no tie: top-3 {0, 1, 2}, q .628 .231 .140, masses before 0 .628 .859 -> p .8 keeps {0, 1}
        ([2.0, 1.0, 0.5, 0.0, -1.0], 3, 0.8, [0, 1]),
        # tie at the 2nd value: {0, 1, 2}, q .576 .212 .212, masses before 0 .576 .788 -> p .95 keeps all
        ([2.0, 1.0, 1.0, 0.0, -1.0], 2, 0.95, [0, 1, 2]),
    ):
        logits = torch.tensor(row).expand(20000, 5)
        params = SamplingParams(temperature=1.0, top_k=k, top_p=p)
        tok, lp, keep = sample_next(logits, params, torch.Generator().manual_seed(3))
        assert sorted(_direct_kept(row, k, p)) == want and keep[0].nonzero().squeeze(-1).tolist() == want
        q = torch.softmax(torch.tensor([row[i] for i in want], dtype=torch.float64), 0)
        freq = torch.bincount(tok, minlength=5).double() / 20000
        assert freq[len(want):].sum() == 0 and torch.allclose(freq[: len(want)], q, atol=0.015)
        assert torch.allclose(lp.double(), q.log()[tok], atol=1e-6)


def test_wide_vocabulary_nucleus_from_the_top_ids_equals_the_definition(monkeypatch) -> None:
    """V = 10,000: peaked rows find their nucleus among the 64 / 1,024 most probable ids, a flat
    row is sorted in full; kept sets match the definition row by row, and the draws and their
    log-probabilities are the full sort's (same generator)."""
    from rollout import sampling

    g = torch.Generator().manual_seed(0)
    V = 10_000
    assert V >= sampling.NUCLEUS_MIN_VOCAB
    x = torch.randn(3, V, generator=g)
    x[0, :10] += 12.0  # nucleus within the top 64
    x[1, :300] += 6.0  # within the top 1,024, not the top 64
    x *= torch.tensor([[1.0], [1.0], [0.1]])  # row 2: nearly flat, thousands of ids
    kept = kept_set(x, 0, 0.9)
    for r in range(3):
        assert set(kept[r].nonzero().squeeze(-1).tolist()) == _direct_kept(x[r].double().tolist(), 0, 0.9)
    assert kept[0].sum() <= 64 < kept[1].sum() <= 1024 < kept[2].sum()
    assert sampling._nucleus_from_top(x, 0.9) is not None  # rows 0-1 from the top ids, row 2 sorted
    assert sampling._nucleus_from_top(x[2:], 0.9) is None  # every row wide: the plain full sort
    assert sampling._nucleus_from_top(x[:, :5000], 0.9) is None  # a small vocabulary: always the full sort

    params = SamplingParams(top_p=0.9)
    xs = x.repeat(50, 1)  # 150 rows: enough draws to hit ids deep in the wide nucleus
    tok, lp, keep = sample_next(xs, params, torch.Generator().manual_seed(3))
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", ())  # always the full sort
    tok_s, lp_s, keep_s = sample_next(xs, params, torch.Generator().manual_seed(3))
    assert torch.equal(keep, keep_s) and torch.equal(tok, tok_s)
    torch.testing.assert_close(lp, lp_s, rtol=0, atol=1e-6)
