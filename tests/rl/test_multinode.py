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
                       text=True, timeout=timeout, check=False)
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


# ---- rl.train across nodes ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Run directories shared by the tests (the submitted run compares with the direct one)."""
    base = tmp_path_factory.mktemp("runs")
    return {k: base / k for k in ("single", "multi", "job", "killed")}


def test_train_across_nodes_equals_one_node(cluster: Cluster, env: dict[str, str], runs: dict[str, Path]) -> None:
    """One rank and one rollout worker per worker node; weights after 3 updates equal (1e-5) the
    same run on a one-node local Ray cluster."""
    t0 = time.monotonic()
    one_node = [*SPREAD[:2], "cluster.placement=PACK", "cluster.num_cpus=4"]  # a local Ray cluster, 4 CPUs
    _train([*TINY, *one_node, f"hydra.run.dir={runs['single']}"], env)  # also trains the cold start
    t1 = time.monotonic()
    out = _train([*TINY, *SPREAD, f"cluster.address={cluster.gcs}", f"hydra.run.dir={runs['multi']}"], env)
    t2 = time.monotonic()
    _check_placement(runs["multi"], cluster)
    single = json.loads((runs["single"] / "manifest.json").read_text())["placement"]
    assert len(single["nodes"]) == 1 and len(set(single["trainer_ranks"] + single["rollout_workers"])) == 1
    diff = _max_diff(_weights(runs["multi"]), _weights(runs["single"]))
    assert diff <= 1e-5, diff
    assert json.loads((runs["multi"] / "summary.json").read_text())["steps"] == 3 and "after RL:" in out
    print(f"one node (with cold start): {t1 - t0:.0f} s; three nodes: {t2 - t1:.0f} s; max |dw| = {diff:.2e}",
          file=sys.stderr)


def test_submitted_ray_job_across_nodes(cluster: Cluster, env: dict[str, str], runs: dict[str, Path],
                                        monkeypatch) -> None:
    """``rl.submit cluster=ray_job`` to the cluster's dashboard, with ``rollout.weight_sync=broadcast``
    (gloo across the nodes): same placement, same weights as the direct run (object store)."""
    from rl.submit import main

    if not (runs["multi"] / "final").is_dir():
        pytest.skip("needs the direct multi-node run of test_train_across_nodes_equals_one_node")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.monotonic()
    rc = main(["cluster=ray_job", f"cluster.address={cluster.dashboard}", "+cluster.env.OMP_NUM_THREADS=1",
               f"+cluster.env.DSA_RL_CACHE={env['DSA_RL_CACHE']}", *TINY, *SPREAD, "rollout.weight_sync=broadcast",
               f"hydra.run.dir={runs['job']}", "--follow"])
    assert rc == 0
    manifest = json.loads((runs["job"] / "manifest.json").read_text())
    assert manifest["cluster"]["kind"] == "ray_job" and manifest["job_id"]
    assert manifest["config"]["rollout"]["weight_sync"] == "broadcast"
    _check_placement(runs["job"], cluster)
    diff = _max_diff(_weights(runs["job"]), _weights(runs["multi"]))
    assert diff <= 1e-5, diff
    print(f"ray_job across nodes (broadcast sync): {time.monotonic() - t0:.0f} s; max |dw| vs the direct run "
          f"(object store) = {diff:.2e}", file=sys.stderr)


# ---- a node lost mid-run ----------------------------------------------------------------------------
def test_node_lost_mid_run_stops_then_resumes(cluster: Cluster, env: dict[str, str], runs: dict[str, Path]) -> None:
    """Kill one worker node's raylet (by PID) after the first checkpoint: the run stops within a
    bounded time with one line naming that node (a DeepSpeed group cannot lose a rank); ``resume=``
    on the remaining node (half a CPU per actor) finishes from the last complete checkpoint."""
    run = runs["killed"]
    args = [*TINY, *SPREAD, "checkpoint_every=1", f"cluster.address={cluster.gcs}", f"hydra.run.dir={run}"]
    timeline: list[tuple[float, str]] = []
    t0 = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - t0, what))

    p = subprocess.Popen([sys.executable, "-m", "rl.train", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: [lines.append((time.monotonic() - t0, ln.rstrip())) for ln in p.stdout],
                              daemon=True)
    reader.start()
    try:
        mark("start")
        latest = run / "checkpoints" / "latest"
        while not latest.exists():
            assert p.poll() is None and time.monotonic() - t0 < 300, "\n".join(ln for _, ln in lines)[-3000:]
            time.sleep(0.2)
        mark(f"checkpoint {latest.read_text().strip()} written")
        victim = cluster.workers[1]
        victim_id = victim.node_id()
        os.kill(victim.raylet_pid(), 9)
        mark(f"raylet of node {victim_id[:8]} killed (SIGKILL)")
        rc = p.wait(timeout=180)
        mark(f"rl.train exited with status {rc}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    reader.join(10)
    lost = [(t, ln) for t, ln in lines if ln.startswith("error: Ray node")]
    assert rc == 3 and len(lost) == 1, "\n".join(ln for _, ln in lines)[-3000:]
    timeline.insert(-1, (lost[0][0], "detected: " + lost[0][1][:150] + " ..."))
    assert victim_id in lost[0][1] and f"resume={run}" in lost[0][1]
    assert "Traceback" not in "\n".join(ln for _, ln in lines)
    assert not (run / "summary.json").exists()
    last = int((run / "checkpoints" / "latest").read_text().strip().split("_")[-1])
    detect_s = lost[0][0] - next(t for t, w in timeline if "killed" in w)
    assert detect_s < 120

    # Resume on the remaining worker node: 2 ranks + 2 workers at 0.5 CPU each fill its 2 CPUs.
    mark(f"resume from {run} (latest complete checkpoint: step {last})")
    resume = [a for a in args if a != "cluster.placement=STRICT_SPREAD"]
    out = _train([*resume, f"resume={run}", "cluster.placement=PACK", "resources.cpus_per_actor=0.5"], env)
    mark("resumed run finished")
    assert f"resumed {run} at step {last}" in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 3
    steps = [json.loads(ln)["step"] for ln in (run / "history.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 3 and len(set(steps[1:-1])) == len(steps[1:-1])
    placement = json.loads((run / "manifest.json").read_text())["placement"]
    assert victim_id not in placement["trainer_ranks"] + placement["rollout_workers"]
    print("\nnode-loss timeline (s since start):\n" + "\n".join(f"  {t:6.1f}  {w}" for t, w in sorted(timeline)),
          file=sys.stderr)
