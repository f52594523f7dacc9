"""Build everything a GRPO run needs (`build_run` -> `Run`), checking every input before any
expensive work.

Order (cheap checks first, so a bad input fails in seconds with one message): budget and config
(already validated), the registry names, data source (prompts, or tool environments when
``env.name`` is set), reward names, Ray address; then the policy (cold start, cached), the
solvability filter (agent runs with ``env.pass_k > 0``), the trainer, the rollout workers, the
evaluator, the logger. ``StartupError`` carries the one-line message.

What differs between plain prompts and tool environments sits behind the task source
(``rl.sources``); evaluation is ``rl.evaluate.Evaluator``. The loop (``rl.loop``) reads the parts of
``Run`` and nothing here.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rl.budget import Budget
from rl.cluster import init_ray
from rl.config import StartupError, TrainConfig
from rl.data import PromptSampler, default_cache_dir
from rl.evaluate import Evaluator
from rl.sources import AgentSource, TaskSource, load_data, make_source

if TYPE_CHECKING:
    from rewards.runner import RewardRunner
    from rl.distributed import TrainerGroup
    from rl.logger import Logger
    from rl.placement import Placement
    from rl.trainer import Trainer
    from rollout.pool import RolloutPool
    from rollout.sampling import SamplingParams


@dataclass
class Run:
    """The parts of a run, composed (the loop reads them; nothing here subclasses a framework)."""

    cfg: TrainConfig
    dir: Path
    tokenizer: Any
    model_config: Any
    """The policy's config (`DSAConfig` or `DSALlamaConfig`)."""
    source: TaskSource
    rewards: RewardRunner
    budget: Budget
    sampler: PromptSampler
    trainer: Trainer | TrainerGroup
    pool: RolloutPool
    evaluator: Evaluator
    sampling: SamplingParams
    logger: Logger
    progress: Any
    """A `rich.progress.Progress` (or a stand-in when the progress bar is off)."""
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    say: Callable[[str], None] = print
    placement: Placement | None = None
    owns_ray: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each stage so far (``convert``, ``cold_start``, ``setup``; the loop adds its own)."""

    def close(self) -> None:
        """Stop the workers, the trainer group, the reward workers, the logger, and the local Ray
        cluster when this run started it."""
        import ray

        self.logger.finish()
        self.pool.shutdown()
        if hasattr(self.trainer, "shutdown"):  # a TrainerGroup of Ray actors
            self.trainer.shutdown()
        self.rewards.close()
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


def _model_path(cfg: TrainConfig, say: Callable[[str], None]) -> str | None:
    """``model.path`` as a directory of a DSA policy: a Llama/Qwen2 directory, a ``gguf:`` source or a
    DeepSeek-V3/V3.2 directory is converted once (cached under the data cache directory)."""
    if cfg.model.path is None:
        return None
    from rl.policy.convert import cached_convert
    from rl.policy.deepseek import CheckpointError
    from rl.policy.gguf import GGUFError

    index = {} if cfg.model.index_topk is None else {"index_topk": cfg.model.index_topk}
    try:
        path = str(cached_convert(cfg.model.path, cfg.data.cache_dir or default_cache_dir(), seed=cfg.seed, **index))
    except (CheckpointError, GGUFError) as err:
        raise StartupError(f"model.path={cfg.model.path!r}: {err}") from err
    if path != cfg.model.path:
        say(f"model.path: {cfg.model.path} converted to a DSA policy in {path}")
    return path


def _policy(cfg: TrainConfig, path: str | None, tok: Any, source: TaskSource, device: torch.device,
            say: Callable[[str], None]) -> tuple[Any, dict[str, torch.Tensor]]:
    """The starting policy's config and weights: ``path`` (the resolved ``model.path``), or the
    (cached) cold start, trained on ``device``."""
    from transformers import AutoModelForCausalLM

    from rl.policy import DSAConfig, DSAForCausalLM

    if path is not None:
        try:
            model = AutoModelForCausalLM.from_pretrained(path)  # native or converted DSA
        except Exception as err:
            raise StartupError(f"model.path={cfg.model.path!r}: could not load a DSA policy ({err})") from err
        if cfg.coldstart.enabled and cfg.coldstart.pretrained:
            model = _cold_start(cfg, model, tok, source, device, say, {"path": str(path)})
    else:
        overrides = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
                         "bos_token_id": tok.bos_token_id}
        if cfg.model.index_topk is not None:
            overrides["index_topk"] = cfg.model.index_topk
        model_cfg = DSAConfig.from_preset(cfg.model.preset, **overrides)
        torch.manual_seed(cfg.seed)
        model = DSAForCausalLM(model_cfg)
        if cfg.coldstart.enabled:
            model = _cold_start(cfg, model, tok, source, device, say, {})
    model.config.attention_mode = cfg.model.attention_mode
    return model.config, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _cold_start(cfg: TrainConfig, model: Any, tok: Any, source: TaskSource, device: torch.device,
                say: Callable[[str], None], origin: dict[str, str]) -> Any:
    """``model`` after the cold start (``rl.coldstart``: SFT, indexer warm-up, sparse stage), loaded
    from the cache when these settings ran before; ``origin`` names a loaded starting checkpoint."""
    from transformers import AutoModelForCausalLM

    from rl.coldstart import cold_start_key, save_atomic

    key = cold_start_key(cfg.coldstart, {**model.config.to_dict(), **origin}, source.cache_key)
    path = Path(cfg.data.cache_dir or default_cache_dir()) / "coldstart" / key
    if (path / "config.json").exists():
        say(f"cold start: cached policy {path}")
        return AutoModelForCausalLM.from_pretrained(path)
    say(f"cold start: training on {device} (cached afterwards in {path})")
    info = source.cold_start(model.to(device), tok, cfg, say)
    save_atomic(model, tok, path, info)
    return model.cpu()


def reward_runner(cfg: TrainConfig, error_log: str | None = None) -> RewardRunner:
    """The run's reward runner, with every ``rewards.*`` setting passed (none left to a default)."""
    from rewards.runner import RewardRunner

    r = cfg.rewards
    terms = {name: {k: v for k, v in asdict(t).items() if v is not None} for name, t in r.terms.items()}
    return RewardRunner(terms, timeout_s=r.timeout_s, num_workers=r.num_workers, on_error=r.on_error,
                        max_error_rate=r.max_error_rate, isolation=r.isolation, memory_mb=r.worker_memory_mb,
                        error_log=error_log)


def pool_options(cfg: TrainConfig) -> dict[str, Any]:
    """The rollout pool's settings from the config (``rollout.*``, ``resources.*``)."""
    return {"num_workers": cfg.rollout.num_workers, "num_cpus_per_worker": cfg.resources.cpus_per_actor,
            "num_gpus_per_worker": cfg.resources.gpus_per_worker, "weight_sync": cfg.rollout.weight_sync}


def build_run(cfg: TrainConfig, run_dir: str, say: Callable[[str], None] | None = None) -> Run:
    """Check inputs, then build the policy, trainer, workers, evaluator and logger (see module docstring)."""
    t_start = time.perf_counter()
    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    device = _device(cfg)
    if device.type == "cpu":  # also device=cpu on a GPU machine: the in-process trainer stays on the CPU
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rl.policy.tokenizer import load_tokenizer

    out = Path(cfg.resume) if cfg.resume else Path(run_dir)
    if cfg.resume and not (out / "checkpoints").is_dir():
        raise StartupError(f"resume={cfg.resume!r}: no checkpoints/ directory there; give a run directory "
                           "of an earlier run (outputs/EXPERIMENT/DATE_TIME)")
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(cfg)
    if not cfg.rewards.terms:
        raise StartupError("rewards.terms is empty: add a reward term (e.g. rewards=math) or an environment")
    try:
        rewards = reward_runner(cfg, str(out / "reward_errors.jsonl"))
    except (KeyError, ValueError, ImportError) as err:
        raise StartupError(f"rewards: {str(err).strip(chr(34) + chr(39))}") from err
    owns_ray = init_ray(cfg)
    from rl.placement import PlacementError, place

    try:
        placement = place(cfg)
    except PlacementError as err:
        raise StartupError(str(err)) from err  # before the (slow) cold start

    t0 = time.perf_counter()
    model_path = _model_path(cfg, say)
    t1 = time.perf_counter()
    tok = load_tokenizer(cfg.model.tokenizer or model_path)
    source = make_source(cfg, tok, data)
    t2 = time.perf_counter()
    model_config, weights = _policy(cfg, model_path, tok, source, device, say)
    stage_seconds = {"convert": t1 - t0, "cold_start": time.perf_counter() - t2}

    from rl.distributed import make_trainer
    from rl.policy.factory import build_policy
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
    tok_dir = cfg.model.tokenizer or model_path
    pool = RolloutPool(model_config.to_dict(), tok_dir, EngineConfig.from_config(cfg.rollout), state_dict=weights,
                       seed=cfg.seed, version=step, actor_options=placement.worker_options, **pool_options(cfg))
    from rl.manifest import record_placement
    from rl.placement import describe

    record_placement(out, describe(trainer, pool))  # where each rank and worker runs (node ids)
    from rl.logger import make_logger, make_progress

    logger = make_logger(cfg.logger, str(out), f"{cfg.experiment}-{out.name}", asdict(cfg))
    verifier = [n for n, t in cfg.rewards.terms.items() if t.name == "env_verifier"]
    evaluator = Evaluator(
        model=build_policy(model_config).to(device).eval(), tokenizer=tok,
        engine_config=EngineConfig.from_config(cfg.rollout, record_routes=False, record_topk=False),
        source=source, rewards=rewards,
        correct_term=verifier[0] if cfg.env.name and verifier else next(iter(cfg.rewards.terms)),
        greedy=SamplingParams.from_config(cfg.rollout, greedy=True), sampled=sampling,
        group_size=cfg.algorithm.group_size, seed=cfg.seed)
    return Run(cfg=cfg, dir=out, tokenizer=tok, model_config=model_config, source=source, rewards=rewards,
               budget=budget, sampler=sampler, trainer=trainer, pool=pool, evaluator=evaluator,
               sampling=sampling, logger=logger,
               progress=make_progress(cfg.logger.progress), step=step, history=history, say=say,
               placement=placement, owns_ray=owns_ray,
               stage_seconds={**stage_seconds, "setup": time.perf_counter() - t_start - sum(stage_seconds.values())})
