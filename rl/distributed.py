""":class:`TrainerGroup`, N Ray actors each owning one data-parallel :class:`~rl.trainer.Trainer`
(the rank variables and process-group helpers are in :mod:`rl.process_group`).

The trainer core (``rl.trainer``) never imports Ray: a single in-process ``Trainer`` is the
default (``DeepSpeedConfig.num_processes == 1``); :func:`make_trainer` returns a ``TrainerGroup``
only when more processes are asked for. The group follows the OpenRLHF pattern: start N actors,
ask actor 0 for a rendezvous address, then have every actor set RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT and build its Trainer at the same time (``deepspeed.init_distributed``
is a collective). Every call (``train_step``, ``save``, ``load``, ``export_*``) is sent to all
actors, since each one is a collective; the batch is put into the object store once and every
actor reads it, each training on its own shard (see ``Trainer.train_step``).

A lost node: the group waits on its actors' results one at a time and stops at the first failure
(a rank blocked in a collective with a dead peer would otherwise hold the driver). When the failed
rank's Ray node is gone, it raises :class:`rollout.pool.NodeLostError` naming the node: a DeepSpeed
group has a fixed world size, so the run stops and ``resume=`` continues it from the last complete
checkpoint (there is no elastic re-sizing of the data-parallel group).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from rl.config import ResourcesConfig
from rl.process_group import (  # noqa: F401  (RANK_VARS, init_distributed: re-exported for callers)
    RANK_VARS,
    free_port,
    init_distributed,
    set_rank_env,
)

PEER_WAIT_S = 20.0
"""After one rank's task error, how long the others get to fail too (a lost node's rank reports an
actor error a few seconds after its peers' collectives fail)."""


class TrainerWorker:
    """The body of one trainer actor (wrapped with ``ray.remote`` by :class:`TrainerGroup`)."""

    def __init__(self) -> None:
        self.trainer = None

    def node_address(self) -> tuple[str, int]:
        """(this node's IP, a free port on it): the rendezvous point when this is rank 0."""
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, free_port("" if ip != "127.0.0.1" else ip)

    def node_ip(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def node_id(self) -> str:
        """The Ray node this rank runs on (hex id, read in the actor itself)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    def setup(self, rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int,
              trainer_kwargs: dict[str, Any]) -> None:
        set_rank_env(rank, world_size, local_rank, master_addr, master_port)
        if torch.cuda.is_available() and torch.cuda.device_count() == 1:
            os.environ["LOCAL_RANK"] = "0"  # Ray gave this actor one GPU: it is device 0 here
        from rl.trainer import Trainer

        self.trainer = Trainer(**trainer_kwargs)

    def train_step(self, packed: tuple[list[Any], Any]) -> dict[str, float]:
        """``packed`` = (trajectories, advantages), resolved by Ray from one object-store entry."""
        return self.trainer.train_step(*packed)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.trainer, method)(*args, **kwargs)


class TrainerGroup:
    """N data-parallel trainer processes as Ray actors, with the :class:`~rl.trainer.Trainer` API.

    Args:
        num_processes: N actors (one DeepSpeed rank each).
        cpus_per_actor / gpus_per_actor: Ray resources of each actor.
        actor_options: merged into each actor's ``.options(...)`` (e.g. a placement-group
            ``scheduling_strategy`` from :mod:`rl.placement`, which may put ranks on several nodes).
        **trainer_kwargs: the :class:`~rl.trainer.Trainer` arguments; ``policy`` must be a picklable
            zero-argument factory (each actor builds its own copy after seeding).

    Methods mirror ``Trainer``; the return value is rank 0's (every rank returns the same metrics).
    """

    def __init__(self, num_processes: int, *, cpus_per_actor: float = ResourcesConfig.cpus_per_actor,
                 gpus_per_actor: float = ResourcesConfig.gpus_per_trainer, actor_options: dict[str, Any] | None = None,
                 **trainer_kwargs: Any) -> None:
        import ray

        if not callable(trainer_kwargs.get("policy")) or isinstance(trainer_kwargs.get("policy"),
                                                                     torch.nn.Module):
            raise TypeError("TrainerGroup needs policy= a picklable zero-argument factory, not a module")
        actor_cls = ray.remote(num_cpus=cpus_per_actor, num_gpus=gpus_per_actor)(TrainerWorker)
        self.actors = [actor_cls.options(**(actor_options or {})).remote() for _ in range(num_processes)]
        addr, port = ray.get(self.actors[0].node_address.remote())
        ips = ray.get([a.node_ip.remote() for a in self.actors])
        self.nodes: list[str] = ray.get([a.node_id.remote() for a in self.actors])
        """The Ray node id of each rank."""
        # Local rank = index among the actors on the same node (each GPU actor sees only its own
        # device through CUDA_VISIBLE_DEVICES; the trainer maps local rank onto visible devices).
        local = [ips[:r].count(ip) for r, ip in enumerate(ips)]
        self._get_all([a.setup.remote(r, num_processes, local[r], addr, port, trainer_kwargs)
                       for r, a in enumerate(self.actors)])

    def node_ids(self) -> list[str]:
        """The Ray node id of each rank (read by each actor at start-up)."""
        return list(self.nodes)

    def _get_all(self, refs: list[Any]) -> list[Any]:
        """``ray.get(refs)`` (one per rank, in rank order), stopping at the first failure; a failure
        caused by a rank's lost node raises ``NodeLostError`` (module docstring)."""
        import ray

        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(ready[0])
            except ray.exceptions.RayError as err:
                self._raise_if_node_lost(refs, refs.index(ready[0]), err)
                raise
        return ray.get(refs)

    def _raise_if_node_lost(self, refs: list[Any], failed: int, err: Exception) -> None:
        """Raise ``NodeLostError`` when rank ``failed``'s error, or a peer's actor error, comes from a
        node Ray reports dead. A rank whose collective lost its peer fails with a task error first:
        the peers then get ``PEER_WAIT_S`` to report their own failure."""
        import ray

        from rollout.pool import NODE_DEAD_WAIT_S, NodeLostError, _first_line, lost_node

        actor_errors = {failed: err} if isinstance(err, ray.exceptions.RayActorError) else {}
        if not actor_errors:
            others = [ref for r, ref in enumerate(refs) if r != failed]
            done, _ = ray.wait(others, num_returns=len(others), timeout=PEER_WAIT_S) if others else ([], [])
            for ref in done:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError as e:
                    actor_errors[refs.index(ref)] = e
                except ray.exceptions.RayError:
                    pass
        for r, e in sorted(actor_errors.items()):
            wait = NODE_DEAD_WAIT_S if isinstance(e, ray.exceptions.ActorUnavailableError) else 0.0
            dead = lost_node(self.nodes[r], wait)
            if dead is not None:
                raise NodeLostError(f"Ray node {dead} was lost: trainer rank {r} ran there ({_first_line(e)})") from err

    def _all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._get_all([a.call.remote(method, *args, **kwargs) for a in self.actors])

    def train_step(self, trajectories: Sequence[Any], advantages: Any) -> dict[str, float]:
        import ray

        ref = ray.put((list(trajectories), advantages))  # one copy in the object store for all
        return self._get_all([a.train_step.remote(ref) for a in self.actors])[0]

    def save(self, directory: str | Path, *, step: int, extra: dict[str, Any] | None = None,
             keep: int | None = None) -> Path:
        return self._all("save", directory, step=step, extra=extra, keep=keep)[0]

    def load(self, directory: str | Path, tag: str | None = None) -> tuple[int, dict[str, Any]]:
        return self._all("load", directory, tag)[0]

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        return self._all("export_state_dict")[0]

    def export_pretrained(self, directory: str | Path, tokenizer: Any = None) -> Path:
        return self._all("export_pretrained", directory, tokenizer)[0]

    def shutdown(self) -> None:
        """Kill the actors (their process group goes with them)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []


def make_trainer(policy: Callable[[], torch.nn.Module], *, num_processes: int,
                 cpus_per_actor: float = ResourcesConfig.cpus_per_actor,
                 gpus_per_actor: float = ResourcesConfig.gpus_per_trainer, actor_options: dict[str, Any] | None = None,
                 **trainer_kwargs: Any) -> Any:
    """One in-process :class:`~rl.trainer.Trainer` when ``num_processes == 1``, else a
    :class:`TrainerGroup` of Ray actors (Ray must be initialised by the caller; ``actor_options``
    apply to the actors only)."""
    if num_processes == 1:
        from rl.trainer import Trainer

        if not torch.distributed.is_initialized():
            # The run's driver is rank 0 of 1 (multi-process runs use Ray actors, never a launcher):
            # rank variables inherited from a parent process (a test runner, a job's environment)
            # must not pick its rendezvous port, which that parent may still hold.
            set_rank_env(0, 1, 0, "127.0.0.1", free_port())
        return Trainer(policy=policy, **trainer_kwargs)
    return TrainerGroup(num_processes, cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                        actor_options=actor_options, policy=policy, **trainer_kwargs)
