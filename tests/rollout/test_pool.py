"""rollout.pool on a local Ray cluster: order, weight pushes, a worker crash mid-rollout.

One module-scoped `ray.init(num_cpus=2)` and one pool of 2 workers serve every test (actors
cost seconds to start on 2 cores).
"""
from __future__ import annotations

import pytest
import torch

from rollout.engine import EngineConfig, RolloutEngine
from rollout.sampling import SamplingParams

ray = pytest.importorskip("ray")

PARAMS = SamplingParams(temperature=0.9, top_p=0.9, top_k=20, max_new_tokens=8)


@pytest.fixture(scope="module")
def pool(model, tok):
    from rollout.pool import RolloutPool

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    p = RolloutPool(model.config, engine_config=EngineConfig(record_routes=True), num_workers=2,
                    state_dict=model.state_dict(), chunk_size=2)
    yield p
    p.shutdown()
    if started:
        ray.shutdown()


def _key(t):
    return (t.prompt_index, t.sample_index)


def test_groups_in_prompt_order_and_reproducible(pool, model, tok, prompts) -> None:
    out = pool.generate(prompts, PARAMS, group_size=3, seed=5)
    assert [_key(t) for t in out] == [(p, s) for p in range(4) for s in range(3)]
    assert all(t.tokens[: t.prompt_len].tolist() == prompts[t.prompt_index] for t in out)
    assert all(t.expert_routes is not None and t.sampling_mask is not None for t in out)
    again = pool.generate(prompts, PARAMS, group_size=3, seed=5)  # chunks may land on other workers
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(out, again))
    # chunk 0 holds items (0, 0), (0, 1); its seed is seed * 100003 + 0, whichever worker ran it
    local = RolloutEngine(model, tok, EngineConfig(record_routes=True)).generate(prompts[:1] * 2, PARAMS,
                                                                                 seed=5 * 100_003)
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(out[:2], local))


def test_weight_push_reaches_every_worker(pool, make_model, tok, prompts) -> None:
    new = make_model(seed=2)
    pool.push_weights(new.state_dict(), version=1)
    assert pool.versions() == [1, 1]
    greedy = SamplingParams(greedy=True, max_new_tokens=8)
    out = pool.generate(prompts * 2, greedy)  # 4 chunks of 2 rows over both workers
    ref = RolloutEngine(new, tok).generate(prompts * 2, greedy)
    assert all(torch.equal(a.tokens, b.tokens) and a.weight_version == 1 for a, b in zip(out, ref))


def test_worker_crash_mid_rollout_loses_and_duplicates_nothing(pool, prompts) -> None:
    pid_before = ray.get(pool.workers[0].pid.remote())
    reference = pool.generate(prompts, PARAMS, group_size=4, seed=9)
    ray.get(pool.workers[0].crash_on_call.remote(2))  # dies on its 2nd chunk, with chunks in flight
    out = pool.generate(prompts, PARAMS, group_size=4, seed=9)
    assert pool.restarts[0] == 1
    assert ray.get(pool.workers[0].pid.remote()) != pid_before
    assert [_key(t) for t in out] == [_key(t) for t in reference]  # each exactly once, in order
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(out, reference))  # per-chunk seeds
    assert pool.versions() == [pool.version] * 2  # the new worker got the latest weights
    assert all(t.weight_version == pool.version for t in out)


def test_default_chunks_are_an_even_share_round_robin(pool, model, prompts) -> None:
    """Without chunk_size, 4 prompts x 2 samples on 2 workers make 2 chunks of 4 (one engine batch
    each, since 4 <= max_batch_size), dealt round robin: chunk 1 runs on worker 1, whose distinct
    weight version marks its trajectories."""
    assert [pool.default_chunk_size(n) for n in (128, 8, 5, 300, 1)] == [64, 4, 3, 64, 1]  # batch 64
    pool.chunk_size = None
    try:
        ray.get(pool.workers[1].load_weights.remote(model.state_dict(), 77))
        out = pool.generate(prompts, SamplingParams(greedy=True, max_new_tokens=4), group_size=2)
        assert [t.weight_version for t in out] == [pool.version] * 4 + [77] * 4
    finally:
        pool.chunk_size = 2
        pool.push_weights(model.state_dict(), version=pool.version)


def test_a_failed_weight_load_raises_at_the_next_call(pool, model, prompts) -> None:
    """push_weights returns before the workers load; a load that fails (here: a missing tensor)
    still raises, at the next call that uses the workers, and a good push then recovers."""
    bad = dict(model.state_dict())
    bad.pop(next(iter(bad)))
    pool.push_weights(bad, version=pool.version + 1)
    with pytest.raises(ray.exceptions.RayTaskError, match="Missing key"):
        pool.generate(prompts[:1], SamplingParams(greedy=True, max_new_tokens=2))
    pool.push_weights(model.state_dict(), version=pool.version)
    assert pool.versions() == [pool.version] * 2


def test_broadcast_sync_equals_the_object_store_path(pool, make_model, model, tok, prompts) -> None:
    """`weight_sync=broadcast` (a gloo group of this process + both workers): after a sync both
    workers hold exactly the sent weights and its version, and greedy generation equals the
    object-store push of the same weights, and the in-process engine."""
    from rollout.pool import RolloutPool

    new = make_model(seed=3)
    greedy = SamplingParams(greedy=True, max_new_tokens=8)
    pool.push_weights(new.state_dict(), version=10)
    by_store = pool.generate(prompts * 2, greedy)
    pool.push_weights(model.state_dict(), version=11)  # back to other weights
    pool.weight_sync = "broadcast"
    try:
        pool.sync_weights(new.state_dict(), version=12)
        assert pool.versions() == [12, 12] and pool.version == 12
        for got in ray.get([w.weights.remote() for w in pool.workers]):
            assert got.keys() == new.state_dict().keys()
            assert all(torch.equal(got[k], v) for k, v in new.state_dict().items())
        by_broadcast = pool.generate(prompts * 2, greedy)  # 4 chunks of 2 rows over both workers
        ref = RolloutEngine(new, tok).generate(prompts * 2, greedy)
        assert all(torch.equal(a.tokens, b.tokens) and torch.equal(a.tokens, c.tokens)
                   for a, b, c in zip(by_broadcast, by_store, ref))
        assert [t.weight_version for t in by_broadcast] == [12] * 8
        pool.sync_weights(model.state_dict(), version=13)  # the group is reused
        assert pool.versions() == [13, 13]
        w = ray.get(pool.workers[1].weights.remote())
        assert all(torch.equal(w[k], v) for k, v in model.state_dict().items())
    finally:
        pool.weight_sync = "object_store"
    with pytest.raises(ValueError, match="weight_sync='nccl': allowed object_store, broadcast"):
        RolloutPool(model.config, num_workers=0, weight_sync="nccl")


def test_broadcast_of_other_weights_names_the_difference(pool, model) -> None:
    bad = {("renamed." + k if i == 0 else k): v for i, (k, v) in enumerate(model.state_dict().items())}
    pool._group = None
    with pytest.raises(ray.exceptions.RayTaskError, match="broadcast weights do not match"):
        pool.broadcast_weights(bad, version=pool.version + 1)
    pool._group = None


@pytest.mark.slow
def test_sigkill_of_a_worker_mid_step(pool, prompts, capfd) -> None:
    """A worker's process SIGKILLed from outside while a step's chunks run: the call finishes with
    every (prompt, sample) exactly once and as seeded, and a line on stderr says what happened."""
    import os
    import signal
    import threading

    params = SamplingParams(temperature=0.9, top_p=0.9, top_k=20, max_new_tokens=48)
    many = prompts * 6
    reference = pool.generate(many, params, group_size=4, seed=21)
    victim = ray.get(pool.workers[1].pid.remote())
    restarts = pool.restarts[1]
    killer = threading.Timer(0.3, os.kill, (victim, signal.SIGKILL))
    killer.start()
    out = pool.generate(many, params, group_size=4, seed=21)
    killer.join()
    assert pool.restarts[1] == restarts + 1 and ray.get(pool.workers[1].pid.remote()) != victim
    assert [_key(t) for t in out] == [_key(t) for t in reference]
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(out, reference))
    assert "rollout worker 1 died mid-step" in capfd.readouterr().err
