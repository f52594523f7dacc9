"""`RolloutWorker`: a thin Ray actor (a plain class; `rollout.pool` wraps it with `ray.remote`) that
holds a policy copy and a `RolloutEngine`.

Weights change only in `load_weights` / `receive_broadcast`, and Ray runs one method of an actor at a
time (max_concurrency 1), so every trajectory of a `generate` call is sampled by one weight version,
stamped on it as `weight_version`.

Weight transport: a state dict (a Ray object ref, resolved by Ray when passed as a top-level
argument) on CPU; or a collective broadcast in a process group made outside any default group
(`weight_group`: TCPStore + ProcessGroupNCCL on GPU, ProcessGroupGloo on CPU) whose rank 0 is the
learner, for GPU clusters where the object store would copy through host memory.

Test hook: `crash_on_call(n)` makes the n-th following `generate` call kill the process
(`os._exit`), as a crash would, so the pool's recovery can be tested.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta

import torch

from rollout.engine import EngineConfig, RolloutEngine
from rollout.sampling import SamplingParams
from rollout.types import Trajectory


def weight_group(backend: str, master_addr: str, master_port: int, rank: int, world_size: int,
                 timeout_s: float = 300.0):
    """A process group of `world_size` ranks that needs no default group (rank 0 hosts the store).

    backend: "nccl" (GPU tensors) or "gloo" (CPU tensors). Blocks until every rank has joined.
    """
    timeout = timedelta(seconds=timeout_s)
    store = torch.distributed.TCPStore(master_addr, master_port, world_size, rank == 0, timeout=timeout)
    if backend == "gloo":
        return torch.distributed.ProcessGroupGloo(store, rank, world_size, timeout)
    if backend == "nccl":
        return torch.distributed.ProcessGroupNCCL(store, rank, world_size)
    raise ValueError(f"backend={backend!r}: allowed 'nccl', 'gloo'")


def broadcast_state(pg, tensors: Sequence[torch.Tensor]) -> None:
    """Broadcast `tensors` from rank 0 of `pg` in order (receivers pass same-shaped tensors)."""
    for t in tensors:
        pg.broadcast(t, 0).wait()


class RolloutWorker:
    """A policy copy + engine. Build with a policy config (`DSAConfig`, a converted `DSALlamaConfig`, or
    either one's dict), optionally initial weights."""

    def __init__(self, model_config, tokenizer: str | None = None, engine_config: EngineConfig | None = None, *,
                 state_dict: dict | None = None, num_threads: int | None = None, device: str | None = None,
                 init_seed: int = 0) -> None:
        from rl.policy.factory import build_policy, policy_config
        from rl.policy.tokenizer import load_tokenizer

        if num_threads:
            torch.set_num_threads(num_threads)
        if isinstance(model_config, dict):
            model_config = policy_config(model_config)  # "dsa" or a converted "dsa_llama"
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        torch.manual_seed(init_seed)  # identical random init on every worker
        self.model = build_policy(model_config).to(dev).eval()
        self.engine = RolloutEngine(self.model, load_tokenizer(tokenizer), engine_config)
        self.engine.warm_up()  # compile=True: the decode step compiles at start-up, not in the first rollout
        self._crash_in: int | None = None
        self._pg = None
        self._order: list[str] = []
        if state_dict is not None:
            self.load_weights(state_dict, 0)

    # ---- weights --------------------------------------------------------------------------------
    def load_weights(self, state_dict, version: int) -> int:
        """Load a full state dict (or an object ref to one) as weight version `version`."""
        if not isinstance(state_dict, dict):  # an ObjectRef nested somewhere: fetch it
            import ray

            state_dict = ray.get(state_dict)
        self.model.load_state_dict(state_dict, strict=True)
        self.engine.weight_version = version
        return version

    def check_weights(self, spec: Sequence[tuple[str, tuple[int, ...], str]]) -> None:
        """Check a sender's (name, shape, dtype) per tensor against this policy's state dict, and
        keep its order as the order `receive_broadcast` receives in."""
        theirs = {k: (tuple(s), d) for k, s, d in spec}
        mine = {k: (tuple(v.shape), str(v.dtype)) for k, v in self.model.state_dict().items()}
        if theirs != mine:
            diff = sorted(set(theirs.items()) ^ set(mine.items()))[:3]
            raise ValueError(f"broadcast weights do not match this worker's policy (first differences: {diff})")
        self._order = [k for k, _, _ in spec]

    def join_weight_group(self, backend: str, master_addr: str, master_port: int, rank: int, world_size: int) -> int:
        """Join the learner's broadcast group (blocks until all ranks have joined)."""
        self._pg = weight_group(backend, master_addr, master_port, rank, world_size)
        return rank

    def receive_broadcast(self, version: int) -> int:
        """Receive every state-dict tensor from rank 0 of the weight group, in place (in the order
        given at `check_weights`; else state-dict order), as weight version `version`."""
        if self._pg is None:
            raise RuntimeError("receive_broadcast before join_weight_group")
        own = self.model.state_dict()
        broadcast_state(self._pg, [own[k] for k in (self._order or own)])
        self.engine.weight_version = version
        return version

    def version(self) -> int:
        return self.engine.weight_version

    def weights(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the policy's state dict (tests compare workers with it)."""
        return {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}

    def node_id(self) -> str:
        """The Ray node this worker runs on (hex id)."""
        import ray

        return ray.get_runtime_context().get_node_id()

    # ---- generation -----------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, *, seed: int | None = None,
                 prompt_indices: Sequence[int] | None = None,
                 sample_indices: Sequence[int] | None = None) -> list[Trajectory]:
        """`RolloutEngine.generate`, then stamps `prompt_index` / `sample_index` from the given lists."""
        if self._crash_in is not None:
            self._crash_in -= 1
            if self._crash_in == 0:
                os._exit(1)
        out = self.engine.generate(prompts, params, seed=seed)
        for i, t in enumerate(out):
            t.prompt_index = prompt_indices[i] if prompt_indices is not None else i
            t.sample_index = sample_indices[i] if sample_indices is not None else 0
        return out

    def run_agent(self, tasks: Sequence, params: SamplingParams, *, seed: int | None = None,
                  prompt_indices: Sequence[int] | None = None, sample_indices: Sequence[int] | None = None,
                  agent_config=None) -> list[Trajectory]:
        """Multi-turn tool-use episodes (`rollout.agent.run_agent`), one trajectory per task, with
        the same stamping and crash hook as `generate`. agent_config: a `rollout.agent.AgentConfig`."""
        from rollout.agent import run_agent

        if self._crash_in is not None:
            self._crash_in -= 1
            if self._crash_in == 0:
                os._exit(1)
        return run_agent(self.engine, tasks, params, agent_config, seed=seed, prompt_indices=prompt_indices,
                         sample_indices=sample_indices)

    # ---- introspection and test hooks -----------------------------------------------------------
    def pid(self) -> int:
        return os.getpid()

    def crash_on_call(self, n: int) -> None:
        """Test hook: the n-th following `generate` call exits the process (n >= 1)."""
        self._crash_in = n
