"""Build everything a GRPO run needs, checking every input before any expensive work.

Order (cheap checks first, so a bad input fails in seconds with one message): budget and config
(already validated), data source (prompts, or tool environments when ``env.name`` is set), reward
names, Ray address; then the policy (cold start, cached), the solvability filter (agent runs with
``env.pass_k > 0``), the trainer, the rollout workers, the logger. ``StartupError`` carries the
one-line message.

What differs between plain prompts (math) and tool environments (``+experiment=agent``) sits behind
one small interface, the task source (:class:`PromptSource`, :class:`AgentSource`): how a batch
is rolled out on the pool, decoded in-process for evaluation, scored (reward inputs), logged, and
cold-started. The loop itself does not branch on the kind.
"""
from __future__ import annotations

import os
import random
import socket
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from rl.budget import Budget
from rl.config import TrainConfig
from rl.data import DataError, default_cache_dir, load_prompts
from rl.evaluate import PromptSampler
from rollout.types import Trajectory


class StartupError(RuntimeError):
    """A run cannot start; the message names the input and the fix."""


class PromptSource:
    """Plain prompt data (``env.name`` unset): rows are data records with ``prompt_ids``; a sample is
    one completion."""

    def __init__(self, train_rows: list[dict[str, Any]], test_rows: list[dict[str, Any]] | None,
                 norm_constant: float, cache_key: str) -> None:
        self.train_rows, self.test_rows = train_rows, test_rows
        self.norm_constant = norm_constant
        """The trainer's token normaliser (``rollout.max_new_tokens``)."""
        self.cache_key = cache_key
        """What determines the cold-start data (part of its cache key)."""

    def rollout(self, pool: Any, rows: list[Any], params: Any, group_size: int) -> list[Trajectory]:
        """``group_size`` samples per row on the rollout workers, in (row, sample) order."""
        return pool.generate([r["prompt_ids"] for r in rows], params, group_size)

    def generate(self, engine: Any, rows: list[Any], params: Any, group_size: int, seed: int) -> list[Trajectory]:
        """The same, in-process on ``engine`` (evaluation)."""
        return engine.generate([r["prompt_ids"] for r in rows for _ in range(group_size)], params, seed=seed)

    def reward_inputs(self, rows: list[Any], trajs: list[Trajectory]) -> tuple[list, list[str], dict[str, list]]:
        """(prompts, completions, fields) for ``RewardRunner.score``; ``rows[i]`` is trajectory i's row."""
        fields = {k: [r[k] for r in rows] for k in rows[0] if k != "prompt"} if rows else {}
        fields.update(finish_reason=[t.finish_reason for t in trajs], num_turns=[t.num_turns for t in trajs])
        return [r["prompt"] for r in rows], [t.completion for t in trajs], fields

    def metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
        """Source-specific step metrics (none for plain prompts)."""
        return {}

    def cold_start(self, model: Any, tok: Any, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, float]:
        """Supervised cold start on the (imperfect) teacher's worked solutions (``rl.coldstart``)."""
        from rl.coldstart import run_cold_start, teacher_examples

        rng = random.Random(cfg.seed)  # one generator: the teacher's choices, then the batch order
        examples = teacher_examples(tok, self.train_rows, cfg.coldstart.teacher_stop_early, rng)
        return run_cold_start(model, tok, examples, cfg.coldstart, cfg.seed, log=log, rng=rng)


class AgentSource(PromptSource):
    """Tool environments (``env.name`` set): rows are ``envs.registry.Task``; a sample is one
    multi-turn episode (``rollout.agent``), scored by the environment's verifier
    (``info["env_reward"]``, read by the ``env_verifier`` reward)."""

    def __init__(self, train_rows: list[Any], test_rows: list[Any] | None, norm_constant: float, cache_key: str,
                 agent_config: Any) -> None:
        super().__init__(train_rows, test_rows, norm_constant, cache_key)
        self.agent_config = agent_config
        """The ``rollout.agent.AgentConfig`` of every episode."""

    def rollout(self, pool: Any, rows: list[Any], params: Any, group_size: int) -> list[Trajectory]:
        return pool.run_agent(rows, params, group_size, agent_config=self.agent_config)

    def generate(self, engine: Any, rows: list[Any], params: Any, group_size: int, seed: int) -> list[Trajectory]:
        from rollout.agent import run_agent

        return run_agent(engine, [t for t in rows for _ in range(group_size)], params, self.agent_config, seed=seed,
                         prompt_indices=[i for i in range(len(rows)) for _ in range(group_size)],
                         sample_indices=[s for _ in rows for s in range(group_size)])

    def reward_inputs(self, rows: list[Any], trajs: list[Trajectory]) -> tuple[list, list[str], dict[str, list]]:
        fields = {"env_reward": [t.info["env_reward"] for t in trajs],
                  "finish_reason": [t.finish_reason for t in trajs], "num_turns": [t.num_turns for t in trajs],
                  "num_tool_calls": [t.num_tool_calls for t in trajs],
                  "num_tool_errors": [t.num_tool_errors for t in trajs]}
        return [r.prompt for r in rows], [t.completion for t in trajs], fields

    def metrics(self, trajs: list[Trajectory]) -> dict[str, float]:
        n = max(1, len(trajs))
        return {"agent/num_turns_mean": sum(t.num_turns for t in trajs) / n,
                "agent/num_tool_calls_mean": sum(t.num_tool_calls for t in trajs) / n,
                "agent/num_tool_errors_mean": sum(t.num_tool_errors for t in trajs) / n,
                "agent/success_mean": sum(t.info["env_reward"] for t in trajs) / n}

    def cold_start(self, model: Any, tok: Any, cfg: TrainConfig, log: Callable[[str], None]) -> dict[str, float]:
        """Supervised cold start on the reference solutions replayed through the multi-turn loop."""
        from envs.data import cold_start_examples
        from rl.coldstart import run_cold_start

        examples = cold_start_examples(self.train_rows, tok, self.agent_config, cfg.coldstart.teacher_stop_early,
                                       cfg.seed, cfg.env.teacher_reasoning)
        log(f"cold start: {len(examples)} demonstrations, {sum(len(x) for x, _ in examples) / len(examples):.0f} "
            "tokens each on average")
        return run_cold_start(model, tok, examples, cfg.coldstart, cfg.seed, log=log)

    def keep_solvable(self, engine: Any, params: Any, k: int, seed: int, say: Callable[[str], None]) -> None:
        """V3.2's filter: drop training tasks the policy behind ``engine`` never solves in ``k`` tries."""
        from envs.data import solvable

        kept, passes = solvable(self.train_rows, engine, params, k, self.agent_config, seed)
        say(f"solvability filter: {len(kept)} of {len(self.train_rows)} training environments solved at least "
            f"once in {k} tries")
        if not kept:
            raise StartupError(f"env.pass_k={k}: the cold-started policy solves none of the {len(passes)} training "
                               "environments; train the cold start longer or set env.pass_k=0")
        self.train_rows = kept


@dataclass
class Run:
    """The parts of a run, composed (the loop reads them; nothing here subclasses a framework)."""

    cfg: TrainConfig
    dir: Path
    tokenizer: Any
    model_config: Any
    source: PromptSource
    rewards: Any
    correct_term: str
    budget: Budget
    sampler: PromptSampler
    trainer: Any
    pool: Any
    eval_model: Any
    sampling: Any
    logger: Any
    progress: Any
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    say: Callable[[str], None] = print
    placement: Any = None
    owns_ray: bool = False

    @property
    def train_rows(self) -> list[Any]:
        return self.source.train_rows

    @property
    def test_rows(self) -> list[Any] | None:
        return self.source.test_rows

    def engine_generate(self, rows: list[Any], group_size: int, *, greedy: bool, seed: int) -> list[Trajectory]:
        """Decode held-out rows in-process with the trainer's current weights (``group_size`` each)."""
        from rollout.engine import EngineConfig, RolloutEngine
        from rollout.sampling import SamplingParams

        self.eval_model.load_state_dict(self.trainer.export_state_dict())
        engine = RolloutEngine(self.eval_model, self.tokenizer,
                               EngineConfig.from_config(self.cfg.rollout, record_routes=False, record_topk=False))
        params = (SamplingParams(greedy=True, max_new_tokens=self.cfg.rollout.max_new_tokens) if greedy
                  else self.sampling)
        return self.source.generate(engine, rows, params, group_size, seed)

    def account(self, trajs) -> None:
        lens = [len(t.tokens) for t in trajs]
        mode, algo = self.model_config.attention_mode, self.cfg.algorithm
        self.budget.add_rollout(self.model_config, lens, sum(t.num_sampled for t in trajs), mode)
        self.budget.add_train(self.model_config, lens, mode, algo.epochs_per_batch, algo.kl_coef > 0)
        self.budget.step_done()

    def checkpoint(self, step: int) -> None:
        extra = {"sampler": self.sampler.state_dict(), "budget": self.budget.state_dict(),
                 "history": self.history, "weight_version": step}
        self.trainer.save(self.dir / "checkpoints", step=step, extra=extra, keep=2)

    def close(self) -> None:
        """Stop the workers, the logger, and the local Ray cluster when this run started it."""
        import ray

        self.logger.finish()
        if self.pool is not None:
            self.pool.shutdown()
        if self.placement is not None:
            self.placement.remove()
        if self.owns_ray:
            ray.shutdown()


def _device(cfg: TrainConfig) -> torch.device:
    from rl.device import pick_device

    try:
        return pick_device(cfg.device)
    except ValueError as err:
        raise StartupError(str(err)) from err


def _rows(ds, tok) -> list[dict[str, Any]]:
    rows = []
    for r in ds:
        msgs = r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        rows.append({**r, "prompt_ids": tok(text, add_special_tokens=False)["input_ids"]})
    return rows


def check_reachable(address: str, timeout_s: float = 3.0) -> None:
    """Fail fast when a ``host:port`` Ray address (any scheme) does not accept connections.

    ``ray.init`` itself waits minutes for an unreachable head; ``auto`` is left to Ray.
    """
    if address == "auto":
        return
    hostport = urlparse(address if "://" in address else f"ray://{address}").netloc
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise StartupError(f"cluster.address={address!r}: expected HOST:PORT (or ray://HOST:PORT, "
                           "http://HOST:8265 for ray_job, or 'auto')")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise StartupError(f"cluster.address={address!r}: nothing answers at {host}:{port} ({err.strerror or err}); "
                           "start a head with `ray start --head` or unset cluster.address for a local cluster"
                           ) from err


def _init_ray(cfg: TrainConfig) -> bool:
    """Connect to (or start) Ray; returns True when this call started a local cluster."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if cfg.cluster.kind == "ray_job":  # inside a Ray job: join the job's cluster (Ray sets RAY_ADDRESS)
        address = os.environ.get("RAY_ADDRESS") or "auto"
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=cfg.cluster.num_cpus, include_dashboard=False, log_to_driver=False)
        return not address
    except Exception as err:  # ConnectionError, TimeoutError, RuntimeError... depending on the address form
        raise StartupError(f"cluster.address={address!r}: could not connect to Ray ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}); start a head with "
                           "`ray start --head` or unset cluster.address for a local cluster") from err


def _load_data(cfg: TrainConfig) -> Any:
    """Prompt data sets, or (train, held-out) tasks when ``env.name`` is set."""
    try:
        if cfg.env.name:
            from envs.data import load_tasks

            return load_tasks(cfg.env, cfg.seed)
        return load_prompts(cfg.data)
    except DataError as err:
        raise StartupError(str(err)) from err
    except (ValueError, FileNotFoundError) as err:
        if not cfg.env.name:
            raise
        raise StartupError(f"env: {str(err).splitlines()[0]}") from err


def _source(cfg: TrainConfig, tok, data) -> PromptSource:
    """The task source of the run (see the module docstring)."""
    if cfg.env.name:
        from rollout.agent import AgentConfig

        train, test = data
        return AgentSource(train, test[:cfg.data.test_size] or None,
                           norm_constant=float(cfg.env.max_turns * cfg.rollout.max_new_tokens),
                           cache_key="env " + repr(asdict(cfg.env)) + str(cfg.seed),
                           agent_config=AgentConfig.from_env_config(cfg.env))
    train_rows = _rows(data["train"], tok)
    test_rows = _rows(data["test"].select(range(min(cfg.data.test_size, len(data["test"])))), tok) \
        if "test" in data else None
    return PromptSource(train_rows, test_rows, norm_constant=float(cfg.rollout.max_new_tokens),
                        cache_key=repr(asdict(cfg.data)) + str(cfg.seed))


def _policy(cfg: TrainConfig, tok, source: PromptSource, device, say) -> tuple[Any, dict[str, torch.Tensor]]:
    """The starting policy's config and weights: ``model.path``, or the (cached) cold start."""
    from transformers import AutoModelForCausalLM

    from rl.coldstart import cold_start_key, save_atomic
    from rl.policy import DSAConfig, DSAForCausalLM

    if cfg.model.path is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg.model.path)  # native or converted DSA
        except Exception as err:
            raise StartupError(f"model.path={cfg.model.path!r}: could not load a DSA policy ({err})") from err
    else:
        overrides = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                         "bos_token_id": tok.bos_token_id}
        if cfg.model.index_topk is not None:
            overrides["index_topk"] = cfg.model.index_topk
        model_cfg = DSAConfig.from_preset(cfg.model.preset, **overrides)
        torch.manual_seed(cfg.seed)
        model = DSAForCausalLM(model_cfg)
        if cfg.coldstart.enabled:
            key = cold_start_key(cfg.coldstart, model_cfg.to_dict(), source.cache_key)
            path = Path(cfg.data.cache_dir or default_cache_dir()) / "coldstart" / key
            if (path / "config.json").exists():
                say(f"cold start: cached policy {path}")
                model = DSAForCausalLM.from_pretrained(path)
            else:
                say(f"cold start: training on {device} (cached afterwards in {path})")
                info = source.cold_start(model.to(device), tok, cfg, say)
                save_atomic(model, tok, path, info)
    model.config.attention_mode = cfg.model.attention_mode
    return model.config, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def build_run(cfg: TrainConfig, run_dir: str, say: Callable[[str], None] | None = None) -> Run:
    """Check inputs, then build the policy, trainer, workers and logger (see module docstring)."""
    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    device = _device(cfg)
    if device.type == "cpu":  # also device=cpu on a GPU machine: the in-process trainer stays on the CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rewards.runner import RewardRunner
    from rl.policy.tokenizer import load_tokenizer

    out = Path(cfg.resume) if cfg.resume else Path(run_dir)
    if cfg.resume and not (out / "checkpoints").is_dir():
        raise StartupError(f"resume={cfg.resume!r}: no checkpoints/ directory there; give a run directory "
                           "of an earlier run (outputs/EXPERIMENT/DATE_TIME)")
    out.mkdir(parents=True, exist_ok=True)
    data = _load_data(cfg)
    try:
        terms = {name: {k: v for k, v in asdict(t).items() if v is not None} for name, t in cfg.rewards.terms.items()}
        rewards = RewardRunner(terms, timeout_s=cfg.rewards.timeout_s, num_workers=cfg.rewards.num_workers,
                               on_error=cfg.rewards.on_error, max_error_rate=cfg.rewards.max_error_rate,
                               isolation=cfg.rewards.isolation)
    except (KeyError, ValueError, ImportError) as err:
        raise StartupError(f"rewards: {str(err).strip(chr(34) + chr(39))}") from err
    if not terms:
        raise StartupError("rewards.terms is empty: add a reward term (e.g. rewards=math) or an environment")
    owns_ray = _init_ray(cfg)
    from rl.placement import PlacementError, place

    try:
        placement = place(cfg)
    except PlacementError as err:
        raise StartupError(str(err)) from err  # before the (slow) cold start

    tok = load_tokenizer(cfg.model.tokenizer or cfg.model.path)
    source = _source(cfg, tok, data)
    model_config, weights = _policy(cfg, tok, source, device, say)

    from rl.distributed import make_trainer
    from rl.policy.convert import build_policy
    from rollout.engine import EngineConfig, RolloutEngine
    from rollout.pool import RolloutPool
    from rollout.sampling import SamplingParams

    sampling = SamplingParams.from_config(cfg.rollout)
    if isinstance(source, AgentSource) and cfg.env.pass_k > 0:  # cold-start weights, also on resume
        policy = build_policy(model_config).to(device).eval()
        policy.load_state_dict(weights)
        engine = RolloutEngine(policy, tok, EngineConfig.from_config(cfg.rollout, record_routes=False,
                                                                     record_topk=False))
        source.keep_solvable(engine, sampling, cfg.env.pass_k, cfg.seed, say)

    from rl.device import pick_device, pick_dtype

    in_process = cfg.deepspeed.num_processes == 1
    if in_process:
        say(f"trainer: {device}, {str(pick_dtype(cfg.model.dtype, device)).removeprefix('torch.')}")

    def factory():
        m = build_policy(model_config)
        m.load_state_dict(weights)
        # model.dtype=auto: bf16 on a CUDA device, fp32 on CPU; decided where the trainer runs (this
        # process, or a Ray actor that may hold a GPU the driver does not).
        return m.to(pick_dtype(cfg.model.dtype, device if in_process else pick_device("auto")))

    res = cfg.resources
    trainer = make_trainer(factory, num_processes=cfg.deepspeed.num_processes, cpus_per_actor=res.cpus_per_actor,
                           gpus_per_actor=res.gpus_per_trainer, actor_options=placement.trainer_options,
                           algo=cfg.algorithm, ds=cfg.deepspeed,
                           temperature=cfg.rollout.temperature, norm_constant=source.norm_constant,
                           seed=cfg.seed, pad_id=tok.pad_token_id)
    sampler = PromptSampler(len(source.train_rows), cfg.seed)
    budget = Budget.from_config(cfg.budget)
    step, history = 0, []
    if cfg.resume:
        step, extra = trainer.load(out / "checkpoints")
        sampler.load_state_dict(extra["sampler"])
        budget.load_state_dict(extra["budget"])
        history = extra["history"]
        weights = trainer.export_state_dict()
        say(f"resumed {out} at step {step}")
    tok_dir = cfg.model.tokenizer or cfg.model.path
    pool = RolloutPool(model_config.to_dict(), tok_dir, EngineConfig.from_config(cfg.rollout),
                       num_workers=cfg.rollout.num_workers, state_dict=weights,
                       num_cpus_per_worker=res.cpus_per_actor, num_gpus_per_worker=res.gpus_per_worker,
                       seed=cfg.seed, version=step, actor_options=placement.worker_options)
    from rl.logger import make_logger, make_progress

    logger = make_logger(cfg.logger, str(out), f"{cfg.experiment}-{out.name}", asdict(cfg))
    eval_model = build_policy(model_config).to(device).eval()
    verifier = [n for n, t in cfg.rewards.terms.items() if t.name == "env_verifier"]
    correct_term = verifier[0] if cfg.env.name and verifier else next(iter(cfg.rewards.terms))
    return Run(cfg=cfg, dir=out, tokenizer=tok, model_config=model_config, source=source, rewards=rewards,
               correct_term=correct_term, budget=budget, sampler=sampler, trainer=trainer, pool=pool,
               eval_model=eval_model, sampling=sampling, logger=logger,
               progress=make_progress(cfg.logger.progress), step=step, history=history, say=say,
               placement=placement, owns_ray=owns_ray)
