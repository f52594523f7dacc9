"""Ray placement groups for the trainer and rollout actors, sized from ``resources``.

Two placement groups, reserved before any actor starts:

* trainer: one bundle ``{CPU: cpus_per_actor, GPU: gpus_per_trainer}`` per data-parallel trainer
  process (only when ``deepspeed.num_processes > 1``; a single trainer runs inside the driver);
* rollout: one bundle ``{CPU: cpus_per_actor, GPU: gpus_per_worker}`` per rollout worker.

Each actor is started with ``PlacementGroupSchedulingStrategy(pg)`` and no bundle index, so it
takes any free bundle of its group (a re-created rollout worker takes the bundle its dead
predecessor freed). The strategy is ``cluster.placement`` (``PACK`` by default: as few nodes as
possible, spilling over to more nodes when one is not enough).

DeepSpeed data parallelism across nodes: with more trainer bundles than fit on one node, PACK puts
the rest on other nodes; :class:`rl.distributed.TrainerGroup` then takes rank 0's node IP (and a
free port there) as MASTER_ADDR/MASTER_PORT, numbers local ranks per node, and every actor joins
the same ``torch.distributed`` group (NCCL on GPU, gloo on CPU). Nothing else is node-aware.

Before reserving, :func:`check_fits` compares the demand with the cluster's resources and fails
with one message (instead of a placement group that waits forever).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rl.config import TrainConfig


class PlacementError(RuntimeError):
    """The cluster cannot hold the requested actors; the message says what is missing."""


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    b = {"CPU": float(cpus)}
    if gpus > 0:
        b["GPU"] = float(gpus)
    return b


def plan_bundles(cfg: TrainConfig) -> dict[str, list[dict[str, float]]]:
    """``{"trainer": [bundle, ...], "rollout": [bundle, ...]}`` for ``cfg`` (pure; see module doc).

    The trainer list is empty when ``deepspeed.num_processes == 1`` (in-process trainer).
    """
    res = cfg.resources
    n_train = cfg.deepspeed.num_processes
    trainer = [_bundle(res.cpus_per_actor, res.gpus_per_trainer) for _ in range(n_train)] if n_train > 1 else []
    rollout = [_bundle(res.cpus_per_actor, res.gpus_per_worker) for _ in range(cfg.rollout.num_workers)]
    return {"trainer": trainer, "rollout": rollout}


def check_fits(plan: dict[str, list[dict[str, float]]], total: dict[str, float],
               per_node: list[dict[str, float]]) -> None:
    """Raise :class:`PlacementError` unless every bundle fits on some node and the sums fit the cluster.

    Args:
        plan: from :func:`plan_bundles`.
        total: the cluster's resources (``ray.cluster_resources()``).
        per_node: each alive node's resources.
    """
    bundles = plan["trainer"] + plan["rollout"]
    for key in ("CPU", "GPU"):
        need = sum(b.get(key, 0.0) for b in bundles)
        have = float(total.get(key, 0.0))
        if need > have + 1e-9:
            parts = ", ".join(f"{len(v)} {k} x {v[0].get(key, 0.0):g}" for k, v in plan.items() if v)
            raise PlacementError(f"the actors need {need:g} {key} ({parts}) but the Ray cluster has {have:g}: "
                                 "lower resources.* / deepspeed.num_processes / rollout.num_workers or add nodes")
    for name, group in plan.items():
        for b in group[:1]:
            if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in b.items()) for node in per_node):
                raise PlacementError(f"a {name} actor needs {b} but no single Ray node has that much")


@dataclass
class Placement:
    """Reserved placement groups and the ``.options(...)`` each kind of actor is started with."""

    trainer_options: dict[str, Any] | None = None
    """For :class:`rl.distributed.TrainerGroup` (``None``: no group, e.g. one in-process trainer)."""
    worker_options: dict[str, Any] | None = None
    """For :class:`rollout.pool.RolloutPool`."""
    groups: list[Any] = field(default_factory=list)

    def remove(self) -> None:
        """Release the reservations (the actors in them should be gone first)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        if ray.is_initialized():  # else the cluster (and its reservations) is gone already
            for pg in self.groups:
                remove_placement_group(pg)
        self.groups = []


def place(cfg: TrainConfig, timeout_s: float = 120.0) -> Placement:
    """Reserve the placement groups of ``cfg`` on the connected Ray cluster (``ray.init`` first).

    Returns an empty :class:`Placement` when ``cluster.placement == "none"``.
    """
    if cfg.cluster.placement == "none":
        return Placement()
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    plan = plan_bundles(cfg)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    check_fits(plan, ray.cluster_resources(), nodes)
    out = Placement()
    for name, bundles in plan.items():
        if not bundles:
            continue
        pg = placement_group(bundles, strategy=cfg.cluster.placement, name="")
        out.groups.append(pg)
        if not pg.wait(timeout_s):
            for g in out.groups:
                remove_placement_group(g)
            raise PlacementError(f"the {name} placement group ({len(bundles)} x {bundles[0]}, "
                                 f"{cfg.cluster.placement}) was not ready after {timeout_s:g} s: other jobs hold "
                                 "the resources, or the strategy cannot be met (try cluster.placement=PACK)")
        opts = {"scheduling_strategy": PlacementGroupSchedulingStrategy(pg)}
        if name == "trainer":
            out.trainer_options = opts
        else:
            out.worker_options = opts
    return out


def describe(trainer: Any, pool: Any) -> dict[str, Any]:
    """Where this run's processes are: the cluster's alive nodes and their resources, and the Ray
    node id of the driver, of each trainer rank and of each rollout worker, each id read by the
    process itself (``ray.get_runtime_context().get_node_id()``). Recorded in the manifest.

    trainer: a :class:`rl.distributed.TrainerGroup` (``node_ids()``) or an in-process trainer (it
    runs on the driver's node). pool: a :class:`rollout.pool.RolloutPool`.
    """
    import ray

    driver = ray.get_runtime_context().get_node_id()
    nodes = [{"node_id": n["NodeID"], "address": n.get("NodeManagerAddress"),
              "head": bool(n.get("Resources", {}).get("node:__internal_head__")),
              "resources": {k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:")}}
             for n in ray.nodes() if n.get("Alive")]
    ranks = trainer.node_ids() if hasattr(trainer, "node_ids") else [driver]
    return {"driver": driver, "nodes": nodes, "trainer_ranks": ranks, "rollout_workers": pool.node_ids()}
