"""Fast checks of the multi-node plumbing without a cluster: how a lost node is told from a crashed
process (Ray's node table faked), and the placement record in the manifest. The real cluster runs
are in ``test_multinode.py`` (slow)."""
from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from rl.distributed import TrainerGroup
from rl.manifest import build_manifest, read_manifest, record_placement, write_manifest
from rollout.pool import NodeLostError, RolloutPool

ALIVE = [{"NodeID": "aaa", "Alive": True, "NodeManagerAddress": "10.0.0.1"},
         {"NodeID": "bbb", "Alive": True, "NodeManagerAddress": "10.0.0.2"}]
B_DEAD = [ALIVE[0], {"NodeID": "bbb", "Alive": False, "NodeManagerAddress": "10.0.0.2"}]


def test_trainer_group_names_the_lost_node(monkeypatch) -> None:
    group = object.__new__(TrainerGroup)
    group.nodes = ["aaa", "bbb"]
    died = ray.exceptions.ActorDiedError()
    monkeypatch.setattr(ray, "nodes", lambda: B_DEAD)
    with pytest.raises(NodeLostError) as err:
        group._raise_if_node_lost(["r0", "r1"], 1, died)
    assert str(err.value) == ("Ray node bbb (10.0.0.2) was lost: trainer rank 1 ran there (ActorDiedError: "
                              "The actor died unexpectedly before finishing this task.)")
    # Rank 0's collective fails first (a task error); rank 1's actor error names the node.
    monkeypatch.setattr(ray, "wait", lambda refs, num_returns, timeout: (refs, []))
    monkeypatch.setattr(ray, "get", lambda ref: (_ for _ in ()).throw(died))
    with pytest.raises(NodeLostError, match="trainer rank 1 ran there"):
        group._raise_if_node_lost(["r0", "r1"], 0, RuntimeError("gloo: Connection closed by peer"))
    # Every node alive: not a lost node (the caller re-raises the original error).
    monkeypatch.setattr(ray, "nodes", lambda: ALIVE)
    assert group._raise_if_node_lost(["r0", "r1"], 1, died) is None


def test_pool_recreates_a_crashed_worker_but_not_one_on_a_lost_node(monkeypatch) -> None:
    pool = object.__new__(RolloutPool)
    pool._nodes = ["aaa", "bbb"]
    replaced = []
    monkeypatch.setattr(pool, "_replace", replaced.append, raising=False)
    monkeypatch.setattr(ray, "nodes", lambda: B_DEAD)
    pool._recover(0, ray.exceptions.ActorDiedError())  # node aaa is alive: a crashed process
    with pytest.raises(NodeLostError, match=r"^Ray node bbb \(10.0.0.2\) was lost: rollout worker 1 ran there"):
        pool._recover(1, ray.exceptions.ActorDiedError())
    pool._nodes[1] = None  # a re-created worker whose node is not known yet: re-created again
    pool._recover(1, ray.exceptions.ActorDiedError())
    assert replaced == [0, 1]


def test_placement_is_added_to_the_manifest(tmp_path) -> None:
    placement = {"driver": "aaa", "nodes": [{"node_id": "aaa", "address": "10.0.0.1", "head": True,
                                            "resources": {"CPU": 0.0}}],
                 "trainer_ranks": ["bbb", "ccc"], "rollout_workers": ["ccc", "bbb"]}
    record_placement(tmp_path / "local", placement)  # a run started directly: only the placement
    local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    assert local["placement"] == placement and local["schema"] == 1 and "overrides" not in local
    m = build_manifest(overrides=["+experiment=math"], config={}, cluster={"kind": "ray_job"},
                       run_dir=tmp_path / "sub", repo=tmp_path, job_id="j1")
    write_manifest(tmp_path / "sub", m)
    record_placement(tmp_path / "sub", placement)  # a submitted run: the submission's record is kept
    sub = read_manifest(tmp_path / "sub")
    assert sub["placement"] == placement and sub["job_id"] == "j1" and sub["overrides"] == ["+experiment=math"]
