"""rl.losses: hand-computed values for the GRPO loss, aggregations, off-policy mask and the
Keep-Sampling-Mask log-probs, plus loop-vs-vectorised equivalence and a hypothesis property test."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from rl.kl import get_kl
from rl.losses import (
    AGGREGATIONS,
    POLICY_LOSSES,
    aggregate,
    get_aggregation,
    get_policy_loss,
    grpo_policy_loss,
    off_policy_sequence_mask,
    register_aggregation,
    register_policy_loss,
)
from rl.policy.logprobs import entropy_from_logits, masked_log_probs

E = math.e
NEG_INF = float("-inf")


def _kw(**over):
    """Every scalar argument of the policy loss, spelled out (the functions have no defaults)."""
    kw = {"ref_logp": None, "seq_mask": None, "clip_low": 0.2, "clip_high": 0.2, "beta": 0.0,
          "kl_estimator": "unbiased_k3", "aggregation": "token_mean", "norm_constant": 1.0}
    kw.update(over)
    return kw


# --------------------------------------------------------------------------------------------------
# registries


def test_registries() -> None:
    assert set(POLICY_LOSSES.names()) == {"grpo", "clipped"}
    assert get_policy_loss("grpo") is grpo_policy_loss and get_policy_loss("clipped") is grpo_policy_loss
    assert set(AGGREGATIONS.names()) == {"token_mean", "seq_mean_token_mean", "seq_sum"}
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("grpo")(grpo_policy_loss)
    with pytest.raises(ValueError, match="already registered"):
        register_aggregation("token_mean")(get_aggregation("token_mean"))
    with pytest.raises(KeyError, match="unknown loss aggregation"):
        get_aggregation("sum")


# --------------------------------------------------------------------------------------------------
# masked_log_probs / entropy_from_logits

LN = [0.0, math.log(2), math.log(3), math.log(4), 5.0]  # one row of logits, V = 5


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """4 positions over the same logits: kept {1,2,3} taken 3; kept {1,2,3} taken 4 (outside);
    empty kept set (padding); everything kept, taken 0."""
    logits = torch.tensor([LN] * 4).unsqueeze(0)  # (1, 4, 5)
    tokens = torch.tensor([[3, 4, 2, 0]])
    dense = torch.tensor([[[0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]]).bool()
    ids = torch.tensor([[[1, 2, 3, -1, -1], [3, 2, 1, -1, -1], [-1] * 5, [4, 3, 2, 1, 0]]])
    return logits, tokens, dense, ids


def test_masked_log_probs_hand_values() -> None:
    logits, tokens, dense, ids = _hand_batch()
    want = [math.log(4 / 9), NEG_INF, 0.0, -math.log(10 + math.exp(5))]
    for mask in (dense, ids):
        got = masked_log_probs(logits, tokens, mask, temperature=1.0)
        assert got.dtype == torch.float32 and got.shape == (1, 4)
        assert got[0].tolist() == pytest.approx(want, abs=1e-6)
    # temperature 2: kept weights sqrt(2), sqrt(3), 2
    got = masked_log_probs(logits, tokens, dense, temperature=2.0)
    assert got[0, 0].item() == pytest.approx(math.log(2 / (math.sqrt(2) + math.sqrt(3) + 2)), abs=1e-6)
    # no mask: plain log-softmax
    got = masked_log_probs(logits, tokens, None, temperature=1.0)
    assert got[0, 0].item() == pytest.approx(math.log(4) - math.log(10 + math.exp(5)), abs=1e-6)


def test_masked_log_probs_broadcast_mask() -> None:
    logits = torch.randn(2, 3, 5)
    tokens = torch.tensor([[1, 2, 3], [3, 3, 1]])
    keep = torch.tensor([False, True, True, True, False])  # (V,): one kept set for every position
    torch.testing.assert_close(masked_log_probs(logits, tokens, keep, temperature=0.8),
                               masked_log_probs(logits, tokens, keep.expand(2, 3, 5), temperature=0.8))


def _loop_log_probs(logits: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor, temp: float) -> list:
    out = []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            kept = [v for v in range(logits.shape[2]) if keep[b, t, v]]
            tok = tokens[b, t].item()
            if not kept:
                out.append(0.0)
            elif tok not in kept:
                out.append(NEG_INF)
            else:
                x = [logits[b, t, v].item() / temp for v in kept]
                out.append(logits[b, t, tok].item() / temp - math.log(sum(math.exp(z) for z in x)))
    return out


def test_masked_log_probs_dense_and_ids_match_loop_and_each_other() -> None:
    g = torch.Generator().manual_seed(0)
    B, T, V = 3, 4, 7
    logits = torch.randn(B, T, V, generator=g) * 3
    keep = torch.rand(B, T, V, generator=g) < 0.5
    keep[0, 1] = False  # an empty kept set
    tokens = torch.randint(0, V, (B, T), generator=g)
    K = int(keep.sum(-1).max())
    ids = torch.full((B, T, K), -1)
    for b in range(B):
        for t in range(T):
            kept = keep[b, t].nonzero().flatten()
            ids[b, t, : len(kept)] = kept.flip(0)  # any order
    want = _loop_log_probs(logits, tokens, keep, 0.7)
    results = []
    for mask in (keep, ids):
        lg = logits.clone().requires_grad_(True)
        got = masked_log_probs(lg, tokens, mask, temperature=0.7)
        assert got.flatten().tolist() == pytest.approx(want, abs=1e-5)
        torch.where(got.isfinite(), got, 0.0).sum().backward()
        assert lg.grad.isfinite().all()
        results.append(lg.grad)
    torch.testing.assert_close(results[0], results[1])


def test_masked_log_probs_bf16_logits_give_fp32() -> None:
    logits, tokens, dense, _ = _hand_batch()
    got = masked_log_probs(logits.bfloat16(), tokens, dense, temperature=1.0)
    ref = masked_log_probs(logits.bfloat16().float(), tokens, dense, temperature=1.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)


def _saved_bytes_per_logit(logits: torch.Tensor, tokens: torch.Tensor, mask) -> float:
    """Bytes that autograd keeps for backward (distinct storages), per logit."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        masked_log_probs(logits, tokens, mask, temperature=0.7)
    return sum(storages.values()) / logits.numel()


def test_masked_log_probs_memory() -> None:
    """Dense mask: one fp32 copy of the logits (4 B) + the bool mask (1 B) per logit kept for
    backward; kept-ids form: nothing beyond the (bf16) logits themselves (2 B)."""
    g = torch.Generator().manual_seed(4)
    B, T, V = 2, 8, 1000
    logits = torch.randn(B, T, V, generator=g).bfloat16().requires_grad_(True)
    tokens = torch.randint(0, V, (B, T), generator=g)
    dense = torch.rand(B, T, V, generator=g) < 0.5
    ids = torch.randint(0, V, (B, T, 16), generator=g)
    assert _saved_bytes_per_logit(logits, tokens, dense) < 5.1
    assert _saved_bytes_per_logit(logits, tokens, ids) < 2.3


def test_sampling_mask_makes_trainer_and_sampler_log_probs_agree() -> None:
    """A top-p sampler records log-probs under its truncated distribution: applying the same kept set
    gives ratio exactly 1; the full softmax gives ratio < 1 on every token (top-p < 1)."""
    g = torch.Generator().manual_seed(3)
    B, T, V, top_p = 4, 6, 11, 0.7
    logits = torch.randn(B, T, V, generator=g) * 2
    probs, order = logits.softmax(-1).sort(-1, descending=True)
    keep_sorted = probs.cumsum(-1) - probs < top_p  # smallest prefix reaching top_p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # (B, T, V)
    trunc = torch.where(keep, logits.softmax(-1), 0.0)
    tokens = torch.multinomial(trunc.view(-1, V), 1, generator=g).view(B, T)
    sampler_logp = (trunc / trunc.sum(-1, keepdim=True)).gather(-1, tokens[..., None]).squeeze(-1).log()
    with_mask = masked_log_probs(logits, tokens, keep, temperature=1.0)
    without = masked_log_probs(logits, tokens, None, temperature=1.0)
    torch.testing.assert_close(with_mask, sampler_logp)
    assert ((without - sampler_logp).exp() < 1 - 1e-3).all()


def test_entropy_hand_values() -> None:
    logits, _, dense, ids = _hand_batch()
    p = [2 / 9, 3 / 9, 4 / 9]
    h_kept = -sum(x * math.log(x) for x in p)
    z = 10 + math.exp(5)
    full = [1 / z, 2 / z, 3 / z, 4 / z, math.exp(5) / z]
    h_full = -sum(x * math.log(x) for x in full)
    for mask in (dense, ids):
        got = entropy_from_logits(logits, mask, temperature=1.0)
        assert got[0].tolist() == pytest.approx([h_kept, h_kept, 0.0, h_full], abs=1e-5)
    got = entropy_from_logits(torch.zeros(1, 1, 6), torch.tensor([1, 1, 1, 0, 0, 0]).bool(), temperature=3.0)
    assert got.item() == pytest.approx(math.log(3), abs=1e-6)
    assert entropy_from_logits(logits, None, temperature=1.0)[0, 0].item() == pytest.approx(h_full, abs=1e-5)


# --------------------------------------------------------------------------------------------------
# aggregations

AGG_VALUES = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
AGG_MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # ragged; row 2 empty


@pytest.mark.parametrize(("name", "want"), [
    ("token_mean", 36 / 5),  # (1+2+3+10+20) / 5 tokens
    ("seq_mean_token_mean", (6 / 3 + 30 / 2) / 2),  # two non-empty rows
    ("seq_sum", 36 / (2 * 4)),  # C = 4
])
def test_aggregation_hand_values(name: str, want: float) -> None:
    assert aggregate(name, AGG_VALUES, AGG_MASK, norm_constant=4.0).item() == pytest.approx(want)
    empty = aggregate(name, AGG_VALUES, torch.zeros(3, 4), norm_constant=4.0)
    assert empty.item() == 0.0


@pytest.mark.parametrize("name", ["token_mean", "seq_mean_token_mean", "seq_sum"])
def test_aggregation_matches_loop_and_micro_batches(name: str) -> None:
    g = torch.Generator().manual_seed(5)
    values = torch.randn(6, 5, generator=g)
    mask = (torch.rand(6, 5, generator=g) < 0.6).float()
    mask[2] = 0
    rows = [[(values[i, t].item(), mask[i, t].item()) for t in range(5)] for i in range(6)]
    nonempty = [r for r in rows if sum(m for _, m in r) > 0]
    if name == "token_mean":
        want = sum(v * m for r in rows for v, m in r) / sum(m for r in rows for _, m in r)
    elif name == "seq_mean_token_mean":
        want = sum(sum(v * m for v, m in r) / sum(m for _, m in r) for r in nonempty) / len(nonempty)
    else:
        want = sum(v * m for r in rows for v, m in r) / (len(nonempty) * 3.0)
    full = aggregate(name, values, mask, norm_constant=3.0)
    assert full.item() == pytest.approx(want, abs=1e-5)
    # gradient accumulation: micro-batches normalised by the whole mini-batch's units sum to it
    agg = get_aggregation(name)
    parts = [(values[:2], mask[:2]), (values[2:5], mask[2:5]), (values[5:], mask[5:])]
    units = sum(agg.units(m) for _, m in parts)
    summed = sum(aggregate(name, v, m, norm_constant=3.0, num_units=units) for v, m in parts)
    assert summed.item() == pytest.approx(full.item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# off-policy sequence mask


def test_off_policy_mask_hand_values() -> None:
    diff = torch.tensor([  # log pi_old - log pi_theta per token
        [0.1, 0.3, 5.0],  # A<0, mean over kept tokens 0.2 > 0.15 -> masked
        [0.1, 0.3, 5.0],  # same, A>0 -> kept
        [0.1, 0.1, 0.1],  # A<0, mean 0.1 -> kept
        [-9.0, 0.2, 0.2],  # A<0, first token untrained: mean 0.2 -> masked (-2.87 if it counted)
        [3.0, 3.0, 3.0],  # A=0 -> kept
        [3.0, 3.0, 3.0],  # A<0 but no trained token -> mean 0 -> kept
    ])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 0, 0]])
    adv = torch.tensor([-1.0, 1.0, -1.0, -0.5, 0.0, -1.0])
    old = torch.full((6, 3), -1.0)
    logp = (old - diff).requires_grad_(True)
    m = off_policy_sequence_mask(logp, old, adv, mask, 0.15)
    assert m.tolist() == [0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    assert m.dtype == logp.dtype and not m.requires_grad
    assert off_policy_sequence_mask(logp, old, adv, mask, float("inf")).tolist() == [1.0] * 6


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_off_policy_mask_property(data: st.DataObject) -> None:
    B = data.draw(st.integers(1, 6))
    T = data.draw(st.integers(1, 5))
    logps = st.floats(-6.0, 0.0, allow_nan=False)
    logp = [[data.draw(logps) for _ in range(T)] for _ in range(B)]
    old = [[data.draw(logps) for _ in range(T)] for _ in range(B)]
    mask = [[data.draw(st.booleans()) for _ in range(T)] for _ in range(B)]
    adv = [data.draw(st.sampled_from([-1.0, -0.25, 0.0, 0.5]) | st.floats(-2, 2)) for _ in range(B)]
    delta = data.draw(st.floats(-0.5, 1.0))
    means = []
    for i in range(B):
        d = [old[i][t] - logp[i][t] for t in range(T) if mask[i][t]]
        means.append(sum(d) / len(d) if d else 0.0)
        assume(abs(means[-1] - delta) > 1e-9)  # no float ties at the threshold
    got = off_policy_sequence_mask(torch.tensor(logp, dtype=torch.float64), torch.tensor(old, dtype=torch.float64),
                                   torch.tensor(adv, dtype=torch.float64), torch.tensor(mask), delta)
    for i in range(B):
        want = 0.0 if (adv[i] < 0 and means[i] > delta) else 1.0
        assert got[i].item() == want
        if adv[i] >= 0:
            assert got[i].item() == 1.0  # a positive-advantage sequence is never masked


# --------------------------------------------------------------------------------------------------
# policy loss


@pytest.mark.parametrize(("log_ratio", "adv", "clip_high", "want_loss", "want_grad"), [
    (1.0, 1.0, 0.2, -1.2, 0.0),  # r = e clipped at 1 + 0.2: exactly -1.2 A, no gradient
    (1.0, 1.0, 0.28, -1.28, 0.0),  # separate high bound
    (1.0, -1.0, 0.2, E, E),  # A < 0: the unclipped (worse) branch wins, d/dlogp = -A r
    (-1.0, -1.0, 0.2, 0.8, 0.0),  # r = 1/e clipped at 1 - 0.2
    (-1.0, 1.0, 0.2, -1 / E, -1 / E),  # A > 0, r small: unclipped
    (0.1, 2.0, 0.2, -2 * math.exp(0.1), -2 * math.exp(0.1)),  # inside the trust region
])
def test_policy_loss_single_token(log_ratio: float, adv: float, clip_high: float, want_loss: float,
                                  want_grad: float) -> None:
    logp = torch.tensor([[log_ratio - 0.5]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-0.5]], dtype=torch.float64)
    loss, _ = grpo_policy_loss(logp, old, torch.tensor([adv], dtype=torch.float64), torch.ones(1, 1),
                               **_kw(clip_high=clip_high))
    loss.backward()
    assert loss.item() == pytest.approx(want_loss, abs=1e-12)
    assert logp.grad.item() == pytest.approx(want_grad, abs=1e-12)


# Two sequences, T = 3, old_logp = 0 so logp is the log-ratio; the last token of row 1 is untrained.
LOG_RATIO = [[1.0, -1.0, 0.0], [-1.0, 1.0, 9.0]]
TOKEN_MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -1.0])
# per-token policy terms: row 0 (A=1): -1.2 (clipped), -1/e, -1; row 1 (A=-1): 0.8 (clipped), e
PG = [[-1.2, -1 / E, -1.0], [0.8, E]]


def _batch(**over):
    logp = torch.tensor(LOG_RATIO, requires_grad=True)
    loss, metrics = grpo_policy_loss(logp, torch.zeros(2, 3), ADV, TOKEN_MASK, **_kw(**over))
    return logp, loss, metrics


@pytest.mark.parametrize(("aggregation", "want"), [
    ("token_mean", (sum(PG[0]) + sum(PG[1])) / 5),
    ("seq_mean_token_mean", (sum(PG[0]) / 3 + sum(PG[1]) / 2) / 2),
    ("seq_sum", (sum(PG[0]) + sum(PG[1])) / (2 * 3)),
])
def test_policy_loss_aggregations_hand(aggregation: str, want: float) -> None:
    _, loss, metrics = _batch(aggregation=aggregation, norm_constant=3.0)
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert metrics["pg_loss"].item() == pytest.approx(want, abs=1e-6)


def test_policy_loss_metrics_hand() -> None:
    entropy = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    _, _, m = _batch(entropy=entropy)
    assert m["ratio_mean"].item() == pytest.approx((2 * E + 2 / E + 1) / 5, abs=1e-6)
    assert m["ratio_min"].item() == pytest.approx(1 / E, abs=1e-6)
    assert m["ratio_max"].item() == pytest.approx(E, abs=1e-6)  # the untrained e^9 is ignored
    assert m["clip_frac_high"].item() == pytest.approx(1 / 5)  # row 0 token 0 (A>0, r=e)
    assert m["clip_frac_low"].item() == pytest.approx(1 / 5)  # row 1 token 0 (A<0, r=1/e)
    assert m["masked_frac"].item() == 0.0
    assert m["entropy"].item() == pytest.approx(3.0)
    assert "kl" not in m
    assert all(not v.requires_grad and v.dim() == 0 for v in m.values())


def test_policy_loss_seq_mask_drops_pg_but_not_kl() -> None:
    ref = torch.full((2, 3), -0.5)
    seq_mask = torch.tensor([1.0, 0.0])
    logp, loss, m = _batch(seq_mask=seq_mask, ref_logp=ref, beta=0.1)
    kl = [[math.exp(r) * (math.exp(-0.5 - r) - (-0.5 - r) - 1) for r in row] for row in LOG_RATIO]
    kl_sum = sum(kl[0]) + kl[1][0] + kl[1][1]
    assert loss.item() == pytest.approx((sum(PG[0]) + 0.1 * kl_sum) / 5, abs=1e-6)
    assert m["kl"].item() == pytest.approx(kl_sum / 5, abs=1e-6)
    assert m["masked_frac"].item() == pytest.approx(0.5)
    loss.backward()
    # row 1 keeps only the KL gradient: d/dlogp of beta * unbiased_k3 / 5 = 0.1 r (logp - ref) / 5
    for t in (0, 1):
        r = LOG_RATIO[1][t]
        assert logp.grad[1, t].item() == pytest.approx(0.1 * math.exp(r) * (r + 0.5) / 5, abs=1e-6)


def test_policy_loss_kl_metric_without_beta_and_errors() -> None:
    ref = torch.full((2, 3), -0.5)
    _, loss_ref, m = _batch(ref_logp=ref, beta=0.0)
    _, loss_no_ref, _ = _batch()
    assert loss_ref.item() == loss_no_ref.item() and "kl" in m
    with pytest.raises(ValueError, match="needs ref_logp"):
        _batch(beta=0.1)


def test_policy_loss_ignores_inf_and_nan_at_untrained_positions() -> None:
    logp = torch.tensor([[0.1, float("-inf")]], requires_grad=True)
    old = torch.tensor([[0.0, float("nan")]])
    ref = torch.tensor([[0.0, float("nan")]])
    loss, m = grpo_policy_loss(logp, old, torch.tensor([1.0]), torch.tensor([[1, 0]]),
                               **_kw(ref_logp=ref, beta=0.5, kl_estimator="k3"))
    loss.backward()
    assert loss.isfinite() and logp.grad.isfinite().all() and logp.grad[0, 1] == 0
    assert all(v.isfinite() for v in m.values())


def test_policy_loss_token_advantages_equal_sequence_advantages() -> None:
    logp = torch.tensor(LOG_RATIO)
    a, _ = grpo_policy_loss(logp, torch.zeros(2, 3), ADV, TOKEN_MASK, **_kw())
    b, _ = grpo_policy_loss(logp, torch.zeros(2, 3), ADV[:, None].expand(2, 3), TOKEN_MASK, **_kw())
    assert a.item() == b.item()


def _loop_loss(logp, old, ref, adv, mask, seq_mask, clip_low, clip_high, beta, kl_name, agg, c) -> float:
    """The objective written token by token with python floats."""
    kl_fn = get_kl(kl_name)
    rows = []
    for i in range(logp.shape[0]):
        row = []
        for t in range(logp.shape[1]):
            if not mask[i, t]:
                continue
            lp, lo, lr = logp[i, t].item(), old[i, t].item(), ref[i, t].item()
            r = math.exp(lp - lo)
            a = adv[i].item()
            pg = -min(r * a, min(max(r, 1 - clip_low), 1 + clip_high) * a) * seq_mask[i].item()
            kl = kl_fn(torch.tensor([[lp]], dtype=torch.float64), torch.tensor([[lr]], dtype=torch.float64),
                       torch.tensor([[lo]], dtype=torch.float64)).item()
            row.append(pg + beta * kl)
        rows.append(row)
    nonempty = [r for r in rows if r]
    if agg == "token_mean":
        return sum(map(sum, rows)) / sum(map(len, rows))
    if agg == "seq_mean_token_mean":
        return sum(sum(r) / len(r) for r in nonempty) / len(nonempty)
    return sum(map(sum, rows)) / (len(nonempty) * c)


@pytest.mark.parametrize("kl_name", ["k1", "k2", "k3", "unbiased_k3"])
@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_sum"])
def test_policy_loss_matches_loop(kl_name: str, agg: str) -> None:
    g = torch.Generator().manual_seed(11)
    B, T = 5, 7
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    old = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4
    ref = logp + torch.randn(B, T, generator=g, dtype=torch.float64) * 0.4
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[3] = False
    seq_mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    loss, _ = grpo_policy_loss(logp, old, adv, mask, **_kw(
        ref_logp=ref, seq_mask=seq_mask, clip_low=0.15, clip_high=0.25, beta=0.3, kl_estimator=kl_name,
        aggregation=agg, norm_constant=7.0))
    want = _loop_loss(logp, old, ref, adv, mask, seq_mask, 0.15, 0.25, 0.3, kl_name, agg, 7.0)
    assert loss.item() == pytest.approx(want, abs=1e-10)


def test_policy_loss_micro_batches_accumulate_to_the_full_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    B, T = 6, 5
    logp = (-torch.rand(B, T, generator=g) * 2).requires_grad_(True)
    old = logp.detach() + torch.randn(B, T, generator=g) * 0.3
    adv = torch.randn(B, generator=g)
    mask = torch.rand(B, T, generator=g) < 0.6
    for agg in AGGREGATIONS.names():
        kw = _kw(aggregation=agg, norm_constant=5.0)
        full, _ = grpo_policy_loss(logp, old, adv, mask, **kw)
        (g_full,) = torch.autograd.grad(full, logp)
        units = sum(get_aggregation(agg).units(mask[s].float()) for s in (slice(0, 2), slice(2, 6)))
        acc = sum(grpo_policy_loss(logp[s], old[s], adv[s], mask[s], **kw, num_units=units)[0]
                  for s in (slice(0, 2), slice(2, 6)))
        (g_acc,) = torch.autograd.grad(acc, logp)
        torch.testing.assert_close(acc, full)
        torch.testing.assert_close(g_acc, g_full)
