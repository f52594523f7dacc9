"""Multi-node Ray on one machine (slow): three real Ray nodes (a head without CPUs, two worker
nodes with 2 CPUs each; separate raylets and object stores), started by ``tests/rl/_multinode.py``.

* weight sync across nodes, with each ``rollout.weight_sync`` method;
* ``rl.train`` with two DeepSpeed ranks and two rollout workers, one of each per worker node
  (``cluster.placement=STRICT_SPREAD``), equal to the same run on a one-node local cluster;
* the same through ``rl.submit cluster=ray_job`` against the cluster's dashboard, with the broadcast
  weight sync;
* a worker node's raylet killed mid-run: the run stops with one line naming the node, and
  ``resume=`` on the remaining node continues from the last complete checkpoint.

Placement is read, not assumed: every rank and worker reports its own Ray node id, and the run
records them in its manifest (``rl.placement.describe``). The tests share one cluster and run in
file order (the kill test last: it leaves one worker node).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _multinode import Cluster, ray_cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = ["+experiment=math", "coldstart.sft_steps=10", "coldstart.indexer_warmup_steps=2",
        "coldstart.sparse_steps=2", "data.synth.num_train=200", "data.synth.num_test=50", "data.test_size=8",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=24", "algorithm.group_size=4",
        "algorithm.mini_batch_size=8", "algorithm.micro_batch_size=8", "logger=none", "logger.progress=false",
        "budget.max_steps=3", "budget.max_seconds=null"]
"""``+experiment=math budget.max_steps=3``, shrunk to fit 3 minutes on two shared cores."""
SPREAD = ["deepspeed.num_processes=2", "rollout.num_workers=2", "cluster.placement=STRICT_SPREAD"]
"""Two DeepSpeed ranks and two rollout workers, one of each per worker node."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    t0 = time.monotonic()
    with ray_cluster(worker_cpus=(2, 2)) as c:
        print(f"\n3-node Ray cluster up in {time.monotonic() - t0:.0f} s", file=sys.stderr)
        yield c


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """The runs' environment: one cold-start cache for all; one driver thread (its ranks and
    workers are Ray actors with their own CPUs); no inherited RAY_ADDRESS."""
    e = {**os.environ, "DSA_RL_CACHE": str(tmp_path_factory.mktemp("dsa_cache")), "OMP_NUM_THREADS": "1",
         "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    e.pop("RAY_ADDRESS", None)
    return e


def _worker_node_ids(cluster: Cluster) -> set[str]:
    return {n["nodeId"] for n in cluster.alive_nodes() if not n.get("isHeadNode")}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((run_dir / "final").glob("*.safetensors"))
    assert files, f"no final weights in {run_dir / 'final'}"
    out: dict[str, torch.Tensor] = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _check_placement(run_dir: Path, cluster: Cluster) -> dict:
    """Ranks and workers one per worker node (ids each process read itself); nothing on the head."""
    placement = json.loads((run_dir / "manifest.json").read_text())["placement"]
    workers = _worker_node_ids(cluster)
    assert len(workers) == 2
    assert len(set(placement["trainer_ranks"])) == 2 and set(placement["trainer_ranks"]) == workers
    assert len(set(placement["rollout_workers"])) == 2 and set(placement["rollout_workers"]) == workers
    by_id = {n["node_id"]: n for n in placement["nodes"]}
    assert placement["driver"] in by_id and by_id[placement["driver"]]["head"]
    assert by_id[placement["driver"]]["resources"].get("CPU", 0) == 0
    assert all(by_id[w]["resources"]["CPU"] == 2 for w in workers)
    return placement


def _train(args: list[str], env: dict[str, str], timeout: float = 600) -> str:
    p = subprocess.run([sys.executable, "-m", "rl.train", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    return out


# ---- weight sync across nodes -------------------------------------------------------------------
def test_weight_sync_across_nodes(cluster: Cluster) -> None:
    """Both methods reach workers on two other nodes: exact weights, the version, equal generations."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from rl.policy import DSAConfig, DSAForCausalLM
    from rl.policy.tokenizer import load_tokenizer
    from rollout.engine import RolloutEngine
    from rollout.pool import RolloutPool
    from rollout.sampling import SamplingParams

    t0 = time.monotonic()
    tok = load_tokenizer()
    cfg = DSAConfig.from_preset("tiny", vocab_size=len(tok), index_topk=8, initializer_range=0.1,
                                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    start, new = DSAForCausalLM(cfg).eval(), None
    torch.manual_seed(1)
    new = DSAForCausalLM(cfg).eval()
    prompts = [[11, 12, 13, 14, 15], list(range(20, 34)), [40, 41, 42], list(range(50, 71))]
    greedy = SamplingParams(greedy=True, max_new_tokens=8)
    ref = RolloutEngine(new, tok).generate(prompts, greedy)
    ray.init(address=cluster.gcs, log_to_driver=False, logging_level="ERROR")
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    try:
        assert pg.wait(60)
        pool = RolloutPool(cfg, num_workers=2, state_dict=start.state_dict(), chunk_size=2,
                           actor_options={"scheduling_strategy": PlacementGroupSchedulingStrategy(pg)})
        nodes = pool.node_ids()
        assert set(nodes) == _worker_node_ids(cluster) and ray.get_runtime_context().get_node_id() not in nodes
        outs = {}
        for version, method in enumerate(("object_store", "broadcast"), start=1):
            pool.sync_weights(start.state_dict(), version=10 * version)  # other weights in between
            pool.weight_sync = method
            pool.sync_weights(new.state_dict(), version=version)
            assert pool.versions() == [version, version]
            for got in ray.get([w.weights.remote() for w in pool.workers]):
                assert all(torch.equal(got[k], v) for k, v in new.state_dict().items())
            outs[method] = pool.generate(prompts, greedy)  # 2 chunks: one per worker, one per node
            assert [t.weight_version for t in outs[method]] == [version] * 4
        for a, b, c in zip(outs["object_store"], outs["broadcast"], ref):
            assert torch.equal(a.tokens, c.tokens) and torch.equal(b.tokens, c.tokens)
        pool.shutdown()
    finally:
        remove_placement_group(pg)
        ray.shutdown()
    print(f"weight sync across nodes (both methods): {time.monotonic() - t0:.0f} s", file=sys.stderr)
