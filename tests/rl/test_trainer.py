"""Tests of rl.trainer: LR schedule by hand, sampler/trainer log-prob agreement under the Keep
Sampling Mask (and the drift without it), Keep Routing / keep indexing enforcement, the same update
under ZeRO 0-3 with 1 and 2 processes, gradient accumulation, indexer loss, Ray TrainerGroup."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _trainer_fixtures as fx

from rl.distributed import free_port
from rl.policy.indexer_loss import indexer_parameters
from rl.trainer import Trainer, lr_factor
from rollout.types import unpack_mask

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trajs():
    return fx.sample_trajectories(fx.tiny_policy(seed=0))


@pytest.fixture(scope="module")
def stage0():
    return fx.one_update(0)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal up to fp32 summation order. Adam's first step moves each weight by ~lr * g / |g|
    (here 1e-2), which amplifies the relative rounding error of near-zero gradients: a handful
    of entries differ by up to ~2e-5; the mean difference is ~1e-8."""
    assert a.keys() == b.keys()
    diffs = []
    for k, v in a.items():
        torch.testing.assert_close(v, b[k], rtol=0, atol=1e-4, msg=k)
        diffs.append((v.double() - b[k].double()).abs().flatten())
    assert torch.cat(diffs).mean() < 1e-6


# ---- LR schedule ----------------------------------------------------------------------------------
def test_lr_factor_hand_values():
    kw = {"warmup_steps": 4, "decay_steps": 8, "min_ratio": 0.1}
    assert [lr_factor(s, schedule="constant", **kw) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # cosine over steps 4..8: p = 0, 0.5, 1 -> 1, 0.1 + 0.9 * 0.5 = 0.55, 0.1; clipped after.
    got = [lr_factor(s, schedule="cosine", **kw) for s in (4, 6, 8, 20)]
    assert got == pytest.approx([1.0, 0.55, 0.1, 0.1])
    assert lr_factor(0, warmup_steps=0, schedule="constant", decay_steps=None, min_ratio=0.0) == 1.0


# ---- Keep Sampling Mask -----------------------------------------------------------------------------
def test_trainer_logprobs_equal_sampler_with_masks(trajs):
    trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0), fx.ds(0))
    batch = trainer.collate(trajs, fx.fixed_advantages(len(trajs)))
    logp = trainer.log_probs(batch)
    m = batch.loss_mask
    diff = (logp - batch.old_logprobs)[m].abs()
    assert diff.max() < 1e-5, diff.max()
    # The masks really truncated: the kept sets hold on average well under the vocabulary.
    sizes = unpack_mask(batch.sampling_mask, fx.VOCAB).sum(-1)[m].float()
    assert sizes.mean() < 0.9 * fx.VOCAB

    metrics = trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
    assert metrics["logp_mismatch_max"] < 1e-5
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_ratio_drifts_without_sampling_mask(trajs):
    trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0, keep_sampling_mask=False), fx.ds(0))
    batch = trainer.collate(trajs, fx.fixed_advantages(len(trajs)))
    logp = trainer.log_probs(batch)
    m = batch.loss_mask
    ratio = (logp - batch.old_logprobs)[m].exp()
    # Without the kept set pi_theta spreads mass over tokens the sampler could not draw: r <= 1.
    assert (ratio <= 1 + 1e-6).all()
    assert ratio.mean() < 0.9, ratio.mean()
    metrics = trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
    assert metrics["logp_mismatch_mean"] > 0.1
    assert metrics["ratio_mean"] < 0.9


def test_routes_and_selections_are_enforced(trajs):
    trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0), fx.ds(0))
    batch = trainer.collate(trajs, fx.fixed_advantages(len(trajs)))
    base = trainer.log_probs(batch)
    m = batch.loss_mask
    moved = trainer.collate(trajs, fx.fixed_advantages(len(trajs)))
    moved.expert_routes = (moved.expert_routes + 1) % trainer.module.config.n_routed_experts
    assert (trainer.log_probs(moved) - base)[m].abs().max() > 1e-3
    # Replace every selection by the first key only (a valid but different DSA choice).
    replay = trainer.collate(trajs, fx.fixed_advantages(len(trajs)))
    replay.topk_indices = torch.where(replay.topk_indices >= 0, 0, -1)[..., :1].expand_as(
        replay.topk_indices).clone()
    replay.topk_indices[..., 1:] = -1
    assert (trainer.log_probs(replay) - base)[m].abs().max() > 1e-3


def test_missing_records_fail_loudly(trajs):
    trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0), fx.ds(0))
    bare = [fx.Trajectory(**{**t.__dict__, "expert_routes": None}) for t in trajs]
    with pytest.raises(ValueError, match="record_routes"):
        trainer.train_step(bare, fx.fixed_advantages(len(trajs)))


# ---- the update -----------------------------------------------------------------------------------
def test_update_metrics_and_movement(stage0):
    metrics, weights = stage0
    init = fx.tiny_policy(seed=0).state_dict()
    for key in ("loss", "pg_loss", "kl", "entropy", "ratio_mean", "ratio_min", "ratio_max", "clip_frac_low",
                "clip_frac_high", "masked_frac", "grad_norm", "lr", "logp_mismatch_mean", "tokens_per_s"):
        assert math.isfinite(metrics[key]), key
    assert metrics["num_updates"] == 1 and metrics["lr"] == pytest.approx(1e-2)
    assert metrics["kl"] == pytest.approx(0.0, abs=1e-6)  # pi_ref = pi_theta before the update
    moved = max((weights[k] - init[k]).abs().max() for k in init if k in weights)
    assert moved > 1e-3


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_same_update_under_every_zero_stage(stage, stage0):
    metrics, weights = fx.one_update(stage)
    assert metrics["loss"] == pytest.approx(stage0[0]["loss"], rel=1e-5, abs=1e-7)
    assert metrics["grad_norm"] == pytest.approx(stage0[0]["grad_norm"], rel=1e-4)
    assert_same_weights(weights, stage0[1])


def test_micro_batching_does_not_change_the_update(stage0):
    metrics, weights = fx.one_update(0, micro_batch_size=8)
    assert metrics["loss"] == pytest.approx(stage0[0]["loss"], rel=1e-5)
    assert_same_weights(weights, stage0[1])


def test_several_updates_per_batch(trajs):
    trainer = Trainer(fx.tiny_policy, fx.algo(mini_batch_size=3, micro_batch_size=2, epochs_per_batch=2,
                                              warmup_steps=2), fx.ds(0))
    metrics = trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
    assert metrics["num_updates"] == 2 * 3  # ceil(8 / 3) mini-batches x 2 epochs
    assert trainer.global_step == 6
    assert metrics["lr"] == pytest.approx(1e-2)  # warm-up over: 2 steps
    assert metrics["ratio_max"] > metrics["ratio_min"]  # later mini-batches are off-policy


def test_indexer_loss_trains_only_with_weight(trajs):
    policy = fx.tiny_policy()
    idx_ids = {id(p) for p in indexer_parameters(policy)}
    idx_names = {n for n, p in policy.named_parameters() if id(p) in idx_ids}
    assert idx_names
    init = fx.tiny_policy(seed=0).state_dict()
    for weight in (0.0, 1.0):
        trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0, keep_indexing=False, indexer_loss_weight=weight),
                          fx.ds(0))
        metrics = trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
        sd = trainer.export_state_dict()
        moved = max((sd[n] - init[n]).abs().max() for n in idx_names)
        if weight == 0.0:
            assert moved == 0 and "indexer_loss" not in metrics
        else:
            assert moved > 1e-4 and metrics["indexer_loss"] > 0


def test_indexer_loss_trains_under_replayed_selections(trajs):
    """keep_indexing replays the sampler's selections, and the indexer still runs for its KL loss."""
    policy = fx.tiny_policy()
    idx_names = {n for n, p in policy.named_parameters() if id(p) in {id(q) for q in indexer_parameters(policy)}}
    init = fx.tiny_policy(seed=0).state_dict()
    trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0, keep_indexing=True, indexer_loss_weight=1.0), fx.ds(0))
    metrics = trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
    sd = trainer.export_state_dict()
    assert metrics["indexer_loss"] > 0 and max((sd[n] - init[n]).abs().max() for n in idx_names) > 1e-4


def test_zero_advantage_rows_are_skipped_with_the_same_update(trajs):
    """Rows with A = 0 are not forwarded (kl_coef 0), yet the update equals the one that forwards
    them: they add a zero gradient and still count in the seq-mean normaliser. A second step with
    every advantage 0 trains no row, yet AdamW still steps (momentum), through filler micro-batches."""
    adv = fx.fixed_advantages(len(trajs))
    adv[[0, 3, 4, 6]] = 0.0
    out = {}
    for skip in (True, False):
        trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0, mini_batch_size=4), fx.ds(0))
        assert trainer._skip_zero_adv
        trainer._skip_zero_adv = skip
        metrics = trainer.train_step(trajs, adv)
        before = trainer.export_state_dict()
        idle = trainer.train_step(trajs, torch.zeros(len(trajs)))
        moved = max((v - before[k]).abs().max() for k, v in trainer.export_state_dict().items())
        out[skip] = (metrics, trainer.export_state_dict(), trainer.global_step, idle, moved)
    (m_skip, w_skip, steps_skip, idle_skip, moved_skip), (m_all, w_all, steps_all, _, _) = out[True], out[False]
    assert m_skip["skipped_frac"] == pytest.approx(4 / 8) and m_all["skipped_frac"] == 0
    assert idle_skip["skipped_frac"] == 1.0 and idle_skip["num_tokens"] == 0 and moved_skip > 1e-4
    assert steps_skip == steps_all == 4
    assert m_skip["loss"] == pytest.approx(m_all["loss"], rel=1e-5)
    assert m_skip["num_tokens"] < m_all["num_tokens"]
    assert_same_weights(w_skip, w_all)


def test_no_skipping_when_something_else_trains():
    assert not Trainer(fx.tiny_policy, fx.algo(kl_coef=0.1), fx.ds(0))._skip_zero_adv
    assert not Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0, keep_indexing=False, indexer_loss_weight=1.0),
                       fx.ds(0))._skip_zero_adv


def test_no_reference_without_kl():
    trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0), fx.ds(0))
    assert trainer.ref is None


# ---- 2 processes ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_same_update_with_two_processes(tmp_path, stage0):
    out = tmp_path / "two.pt"
    torch.multiprocessing.start_processes(fx.zero_matrix_worker, args=(2, free_port(), str(out), [0, 1, 2, 3]),
                                          nprocs=2, start_method="spawn")
    results = torch.load(out, weights_only=False)
    for stage, (metrics, weights) in results.items():
        assert metrics["loss"] == pytest.approx(stage0[0]["loss"], rel=1e-5, abs=1e-7), stage
        assert_same_weights(weights, stage0[1])


@pytest.mark.slow
def test_ray_trainer_group_matches_single_process(trajs, stage0):
    ray = pytest.importorskip("ray")
    from rl.distributed import make_trainer

    here = str(Path(__file__).parent)  # the actors unpickle fx.tiny_policy from here
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": here}})
    try:
        group = make_trainer(fx.tiny_policy, num_processes=2, algo=fx.algo(), ds=fx.ds(2))
        metrics = group.train_step(trajs, fx.fixed_advantages(len(trajs)))
        assert metrics["loss"] == pytest.approx(stage0[0]["loss"], rel=1e-5)
        assert_same_weights(group.export_state_dict(), stage0[1])
        group.shutdown()
    finally:
        ray.shutdown()


def test_trainer_logprobs_equal_rollout_engine():
    """The same agreement against the real batched sampler (left padding, KV cache, top-p)."""
    import functools

    from rl.policy.tokenizer import load_tokenizer
    from rollout.engine import EngineConfig, RolloutEngine
    from rollout.sampling import SamplingParams

    tok = load_tokenizer()
    factory = functools.partial(fx.tiny_policy, vocab_size=len(tok))
    engine = RolloutEngine(factory().eval(), tok, EngineConfig(record_topk=True))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, len(tok), (n,), generator=g).tolist() for n in (5, 9, 7, 12)]
    trajs = engine.generate(prompts, SamplingParams(temperature=0.8, top_p=0.7, max_new_tokens=12,
                                                    ignore_eos=True), seed=0)
    for keep, bound in ((True, 1e-4), (False, None)):
        trainer = Trainer(factory, fx.algo(kl_coef=0.0, keep_sampling_mask=keep), fx.ds(0), temperature=0.8)
        batch = trainer.collate(trajs, torch.zeros(len(trajs)))
        diff = (trainer.log_probs(batch) - batch.old_logprobs)[batch.loss_mask]
        if keep:
            assert diff.abs().max() < bound, diff.abs().max()
        else:
            assert diff.max() <= 1e-5 and diff.mean() < -0.1  # r = pi_theta / pi_old < 1
