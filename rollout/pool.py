"""`RolloutPool`: N `RolloutWorker` Ray actors, dynamic dispatch of prompt chunks, weight sync, recovery.

`generate` samples completions of token prompts; `run_agent` plays multi-turn tool-use episodes
(`rollout.agent`) of tasks. Both go through the same dispatch below.

Dispatch: every prompt is repeated `group_size` times (GRPO groups); the B*G items, in
(prompt_index, sample_index) order, are cut into chunks: by default an even share per worker, at
most one engine batch (`max_batch_size`) each, since one big batch decodes far faster than several
small ones (a decode step costs nearly the same at 32 rows as at 128 on CPU). Chunks go out round
robin; each worker holds at most `max_in_flight` chunks (so it never idles between two); the pool
waits on whichever chunk finishes first (`ray.wait`, num_returns=1) and refills that worker. A slow
chunk delays only itself.
Each chunk has its own seed (from the call's seed and the chunk index), so the trajectories do not
depend on which worker ran a chunk, nor on a retry: a run with a crash returns the same samples as
one without.

Recovery: when a worker's process dies (`RayActorError` from any of its chunks), the pool kills
the handle, starts a fresh actor, loads the latest weights into it (object-store copy) and
re-queues every chunk that was in flight on the dead worker. Results are keyed by chunk, so no
item is lost or duplicated. A worker is re-created at most `max_restarts` times. When the worker's
Ray node itself is gone (its raylet died: Ray first reports the actor unavailable, and marks the
node dead after its health checks fail, ~15 s), the pool does not re-create it (its placement
bundle went with the node, so a replacement would wait forever): it raises `NodeLostError`, whose
one-line message names the node.

Weights: `sync_weights` sends a new version by the pool's `weight_sync` method
(`rollout.weight_sync`): `push_weights` puts the state dict into the object store once (`ray.put`)
and passes the ref to every worker; `broadcast_weights` sends them through a `torch.distributed`
broadcast group whose rank 0 is this process (NCCL when this process and the workers have GPUs,
gloo otherwise; the group is built at the first broadcast and again after a worker is re-created),
and also keeps an object-store copy for re-created workers. A weight sync happens between
`generate` calls, so no sample mixes versions.

Ray must be initialised by the caller (a run: `rl.cluster.init_ray`, the one place that starts or
joins a cluster).
"""
from __future__ import annotations

import socket
import sys
import time
from collections import deque
from collections.abc import Sequence

import ray
import torch

from rollout.params import CPUS_PER_WORKER, GPUS_PER_WORKER, NUM_WORKERS, WEIGHT_SYNC, EngineConfig
from rollout.sampling import SamplingParams
from rollout.types import Trajectory
from rollout.worker import RolloutWorker, broadcast_state, weight_group


class RolloutPool:
    """Ray rollout workers behind one `generate` call. See the module docstring."""

    def __init__(self, model_config, tokenizer: str | None = None, engine_config: EngineConfig | None = None, *,
                 num_workers: int = NUM_WORKERS, state_dict: dict | None = None,
                 num_cpus_per_worker: float = CPUS_PER_WORKER, num_gpus_per_worker: float = GPUS_PER_WORKER,
                 chunk_size: int | None = None, max_in_flight: int = 2,
                 max_restarts: int = 3, seed: int = 0, version: int = 0,
                 actor_options: dict | None = None, weight_sync: str = WEIGHT_SYNC[0]) -> None:
        """actor_options: merged into every worker's `.options(...)` (e.g. a placement-group
        `scheduling_strategy` from `rl.placement`). weight_sync: "object_store" or "broadcast", the
        method of `sync_weights`."""
        if weight_sync not in WEIGHT_SYNC:
            raise ValueError(f"weight_sync={weight_sync!r}: allowed {', '.join(WEIGHT_SYNC)}")
        self.weight_sync = weight_sync
        if not ray.is_initialized():
            raise RuntimeError("RolloutPool needs a running Ray: call ray.init() first (rl.cluster.init_ray "
                               "does it for a run)")
        self._actor_cls = ray.remote(RolloutWorker)
        self._worker_args = (model_config, tokenizer, engine_config)
        self._batch_size = (engine_config or EngineConfig()).max_batch_size
        self._opts = {"num_cpus": num_cpus_per_worker, "num_gpus": num_gpus_per_worker, "max_restarts": 0,
                      **(actor_options or {})}
        self._threads = max(1, int(num_cpus_per_worker))
        self.chunk_size = chunk_size
        self.max_in_flight = max_in_flight
        self.max_restarts = max_restarts
        self.restarts = [0] * num_workers
        """Re-creations per worker slot so far."""
        self.version = version
        """Weight version of the last push (of `state_dict` at start)."""
        self._weights_ref = ray.put(_cpu_state(state_dict)) if state_dict is not None else None
        self._seed = seed
        self._calls = 0
        self._group = None
        self._loads: dict = {}  # worker slot -> ObjectRef of a queued load_weights (push_weights)
        self.workers = [self._spawn() for _ in range(num_workers)]
        # Start-up includes the workers' own (model build, weights, a compile with rollout.compile):
        # a worker that cannot start fails here, and the first rollout is not slowed by it.
        self._nodes: list[str | None] = ray.get([w.node_id.remote() for w in self.workers])
        """The Ray node id of each worker slot (None: a re-created worker's, not asked yet)."""

    def _spawn(self):
        w = self._actor_cls.options(**self._opts).remote(*self._worker_args, num_threads=self._threads)
        if self._weights_ref is not None:
            w.load_weights.remote(self._weights_ref, self.version)  # ordered before any later call
        return w

    def _recover(self, i: int, err: Exception) -> None:
        """Worker `i` failed with a `RayActorError`: raise `NodeLostError` if its node is gone, else
        re-create it."""
        node = self._nodes[i]
        if node is not None:
            wait = NODE_DEAD_WAIT_S if isinstance(err, ray.exceptions.ActorUnavailableError) else 0.0
            dead = lost_node(node, wait)
            if dead is not None:
                raise NodeLostError(f"Ray node {dead} was lost: rollout worker {i} ran there ({_first_line(err)})")
        self._replace(i)

    def _replace(self, i: int) -> None:
        if self.restarts[i] >= self.max_restarts:
            raise RuntimeError(f"rollout worker {i} died {self.restarts[i] + 1} times (max_restarts="
                               f"{self.max_restarts})")
        self.restarts[i] += 1
        ray.kill(self.workers[i], no_restart=True)
        self.workers[i] = self._spawn()
        self._nodes[i] = None
        self._group = None  # a broadcast group must be rebuilt with the new process

    # ---- weights --------------------------------------------------------------------------------
    def sync_weights(self, state_dict: dict, version: int) -> None:
        """Send weight version `version` to every worker by this pool's `weight_sync` method."""
        if self.weight_sync == "broadcast":
            self.broadcast_weights(state_dict, version)
        else:
            self.push_weights(state_dict, version)

    def push_weights(self, state_dict: dict, version: int) -> None:
        """Send a full state dict to every worker through the object store (one `ray.put`).

        Returns once the loads are queued: each worker loads before anything else asked of it later
        (a Ray actor runs one caller's calls in order), while this process goes on (logging,
        checkpointing). The next call that uses the workers first settles the loads, so a failed
        load raises there and a worker that died is re-created with these weights."""
        self._weights_ref = ray.put(_cpu_state(state_dict))
        self.version = version
        self._loads = {i: w.load_weights.remote(self._weights_ref, version) for i, w in enumerate(self.workers)}

    def _settle_loads(self) -> None:
        """Wait for the loads `push_weights` queued (see there)."""
        loads, self._loads = self._loads, {}
        for i, ref in loads.items():
            try:
                ray.get(ref)
            except ray.exceptions.RayActorError as err:
                self._recover(i, err)

    def broadcast_weights(self, state_dict: dict, version: int, *, backend: str | None = None,
                          keep_cpu_copy: bool = True) -> None:
        """Send `state_dict` (this process is rank 0; tensors on its device) by a collective broadcast.

        backend: "nccl" or "gloo"; None = "nccl" when this process has CUDA and the workers have
        GPUs (CPU tensors are then copied to this process's GPU), else "gloo". The names, shapes
        and dtypes must match the workers' `state_dict()` (checked once, when the group is built);
        they receive in this dict's order. keep_cpu_copy: also `ray.put` a CPU copy, which a
        re-created worker loads.
        """
        self._settle_loads()
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() and self._opts.get("num_gpus", 0) > 0 else "gloo"
        tensors = list(state_dict.values())
        if backend == "nccl":
            tensors = [t.to("cuda", non_blocking=True) for t in tensors]
        if self._group is None or self._group[0] != backend:
            port = _free_port()
            addr = ray.util.get_node_ip_address()
            n = len(self.workers) + 1
            spec = [(k, tuple(v.shape), str(v.dtype)) for k, v in state_dict.items()]
            ray.get([w.check_weights.remote(spec) for w in self.workers])  # before anyone blocks in a join
            refs = [w.join_weight_group.remote(backend, addr, port, r + 1, n) for r, w in enumerate(self.workers)]
            self._group = (backend, weight_group(backend, addr, port, 0, n))
            ray.get(refs)
        refs = [w.receive_broadcast.remote(version) for w in self.workers]
        try:
            broadcast_state(self._group[1], tensors)
            ray.get(refs)
        except Exception as err:  # a peer gone mid-broadcast: gloo/NCCL raise, or an actor error
            self._group = None
            end = time.monotonic() + NODE_DEAD_WAIT_S  # is a worker's node being marked dead?
            while True:
                for i, node in enumerate(self._nodes):
                    dead = lost_node(node) if node is not None else None
                    if dead is not None:
                        raise NodeLostError(f"Ray node {dead} was lost: rollout worker {i} ran there "
                                            f"({_first_line(err)})") from err
                if time.monotonic() >= end:
                    raise
                time.sleep(0.5)
        self.version = version
        if keep_cpu_copy:
            self._weights_ref = ray.put(_cpu_state(state_dict))

    def versions(self) -> list[int]:
        """The weight version each worker holds now."""
        self._settle_loads()
        return ray.get([w.version.remote() for w in self.workers])

    def node_ids(self) -> list[str]:
        """The Ray node id each worker runs on now (read from the worker's own runtime context)."""
        self._settle_loads()
        self._nodes = ray.get([w.node_id.remote() for w in self.workers])
        return list(self._nodes)

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, group_size: int = 1, *,
                 seed: int | None = None) -> list[Trajectory]:
        """Sample `group_size` trajectories per prompt; returned in (prompt_index, sample_index) order.

        seed: None derives one from the pool seed and a call counter (fresh samples every call,
        reproducible over a run).
        """
        return self._dispatch("generate", prompts, params, group_size, seed)

    def run_agent(self, tasks: Sequence, params: SamplingParams, group_size: int = 1, *, seed: int | None = None,
                  agent_config=None) -> list[Trajectory]:
        """`group_size` multi-turn tool-use episodes per task (`RolloutWorker.run_agent`), one trajectory
        each, in (task_index, sample_index) order; chunking, seeds and recovery as in `generate`.

        agent_config: a `rollout.agent.AgentConfig` (None = its defaults).
        """
        return self._dispatch("run_agent", tasks, params, group_size, seed, agent_config=agent_config)

    def default_chunk_size(self, num_items: int) -> int:
        """Items per chunk when `chunk_size` is None: an even share per worker, at most one engine
        batch (`EngineConfig.max_batch_size`)."""
        share = -(-num_items // max(1, len(self.workers)))
        return max(1, min(share, self._batch_size))

    def _dispatch(self, method: str, inputs: Sequence, params: SamplingParams, group_size: int,
                  seed: int | None, **kwargs) -> list[Trajectory]:
        """Fan the (input, sample) items out to the workers' `method` in chunks (module docstring)."""
        self._settle_loads()
        if seed is None:
            seed = self._seed * 1_000_003 + self._calls
        self._calls += 1
        items = [(p, s) for p in range(len(inputs)) for s in range(group_size)]
        size = self.chunk_size or self.default_chunk_size(len(items))
        chunks = [items[i: i + size] for i in range(0, len(items), size)]
        results: list[list[Trajectory] | None] = [None] * len(chunks)
        pending = deque(range(len(chunks)))
        in_flight: dict = {}  # ObjectRef -> (worker slot, chunk index)
        load = [0] * len(self.workers)
        while pending or in_flight:
            while pending and min(load) < self.max_in_flight:
                i = load.index(min(load))  # the least loaded worker: round robin from equal loads
                c = pending.popleft()
                chunk = chunks[c]
                ref = getattr(self.workers[i], method).remote(
                    [inputs[p] for p, _ in chunk], params, seed=seed * 100_003 + c,
                    prompt_indices=[p for p, _ in chunk], sample_indices=[s for _, s in chunk], **kwargs)
                in_flight[ref] = (i, c)
                load[i] += 1
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            i, c = in_flight.pop(ready[0])
            load[i] -= 1
            try:
                results[c] = ray.get(ready[0])
            except ray.exceptions.RayActorError as err:
                lost = [c] + [cc for ref, (ii, cc) in list(in_flight.items()) if ii == i]
                for ref in [r for r, (ii, _) in in_flight.items() if ii == i]:
                    del in_flight[ref]
                load[i] = 0
                pending.extendleft(sorted(lost, reverse=True))
                self._recover(i, err)
                print(f"rollout worker {i} died mid-step ({_first_line(err)}); re-created it (restart "
                      f"{self.restarts[i]} of {self.max_restarts}) and re-queued its {len(lost)} chunk(s) of "
                      f"{len(chunks)}: no sample lost or repeated", file=sys.stderr, flush=True)
        return [t for chunk in results for t in chunk]  # type: ignore[union-attr]

    def shutdown(self) -> None:
        """Kill the workers (Ray itself keeps running)."""
        for w in self.workers:
            ray.kill(w, no_restart=True)
        self.workers = []


class NodeLostError(RuntimeError):
    """A Ray node that held part of the run (a rollout worker, a trainer rank) is gone; the
    message is one line naming the node."""


NODE_DEAD_WAIT_S = 45.0
"""How long a `RayActorError` that may be a lost node (Ray's `ActorUnavailableError`) waits for
Ray to mark the node dead (its health checks: 5 misses x 3 s by default) before it is taken for a
crashed process."""


def lost_node(node_id: str, wait_s: float = 0.0, poll_s: float = 0.5) -> str | None:
    """``"ID (ADDRESS)"`` if Ray reports node `node_id` dead within `wait_s` seconds, else None."""
    end = time.monotonic() + wait_s
    while True:
        for n in ray.nodes():
            if n["NodeID"] == node_id and not n["Alive"]:
                return f"{node_id} ({n.get('NodeManagerAddress', '?')})"
        if time.monotonic() >= end:
            return None
        time.sleep(poll_s)


def _first_line(err: Exception) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:160]}"


def _cpu_state(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu") for k, v in state_dict.items()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
