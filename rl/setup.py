"""Build everything a GRPO run needs, checking every input before any expensive work.

Order (cheap checks first, so a bad input fails in seconds with one message): budget and config
(already validated), data source, reward names, Ray address; then the policy (cold start, cached),
the trainer, the rollout workers, the logger. ``StartupError`` carries the one-line message.
"""
from __future__ import annotations

import os
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


class StartupError(RuntimeError):
    """A run cannot start; the message names the input and the fix."""


@dataclass
class Run:
    """The parts of a run, composed (the loop reads them; nothing here subclasses a framework)."""

    cfg: TrainConfig
    dir: Path
    tokenizer: Any
    model_config: Any
    train_rows: list[dict[str, Any]]
    test_rows: list[dict[str, Any]] | None
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

    def engine_generate(self, rows: list[dict[str, Any]], group_size: int, *, greedy: bool, seed: int):
        """Decode held-out prompts in-process with the trainer's current weights."""
        from rollout.engine import EngineConfig, RolloutEngine
        from rollout.sampling import SamplingParams

        self.eval_model.load_state_dict(self.trainer.export_state_dict())
        engine = RolloutEngine(self.eval_model, self.tokenizer,
                               EngineConfig.from_config(self.cfg.rollout, record_routes=False, record_topk=False))
        params = (SamplingParams(greedy=True, max_new_tokens=self.cfg.rollout.max_new_tokens) if greedy
                  else self.sampling)
        prompts = [r["prompt_ids"] for r in rows for _ in range(group_size)]
        return engine.generate(prompts, params, seed=seed)

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
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise StartupError("device=cuda but CUDA is not available: use device=auto or device=cpu")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


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


def _policy(cfg: TrainConfig, tok, rows, device, say) -> tuple[Any, dict[str, torch.Tensor]]:
    """The starting policy's config and weights: ``model.path``, or the (cached) cold start."""
    from transformers import AutoModelForCausalLM

    from rl.coldstart import cold_start_key, run_cold_start, save_atomic
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
            key = cold_start_key(cfg.coldstart, model_cfg.to_dict(), repr(asdict(cfg.data)) + str(cfg.seed))
            path = Path(cfg.data.cache_dir or default_cache_dir()) / "coldstart" / key
            if (path / "config.json").exists():
                say(f"cold start: cached policy {path}")
                model = DSAForCausalLM.from_pretrained(path)
            else:
                say(f"cold start: training (cached afterwards in {path})")
                info = run_cold_start(model, tok, rows, cfg.coldstart, cfg.seed, log=say)
                save_atomic(model, tok, path, info)
    model.config.attention_mode = cfg.model.attention_mode
    return model.config, {k: v.detach().cpu() for k, v in model.state_dict().items()}


def build_run(cfg: TrainConfig, run_dir: str, say: Callable[[str], None] | None = None) -> Run:
    """Check inputs, then build the policy, trainer, workers and logger (see module docstring)."""
    say = say or (lambda s: print(s, file=sys.stderr, flush=True))
    os.environ.setdefault("WANDB_MODE", cfg.logger.mode)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    device = _device(cfg)
    from rewards.runner import RewardRunner
    from rl.policy.tokenizer import load_tokenizer

    out = Path(cfg.resume) if cfg.resume else Path(run_dir)
    if cfg.resume and not (out / "checkpoints").is_dir():
        raise StartupError(f"resume={cfg.resume!r}: no checkpoints/ directory there; give a run directory "
                           "of an earlier run (outputs/EXPERIMENT/DATE_TIME)")
    out.mkdir(parents=True, exist_ok=True)
    try:
        data = load_prompts(cfg.data)
    except DataError as err:
        raise StartupError(str(err)) from err
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
    train_rows = _rows(data["train"], tok)
    test_rows = _rows(data["test"].select(range(min(cfg.data.test_size, len(data["test"])))), tok) \
        if "test" in data else None
    model_config, weights = _policy(cfg, tok, train_rows, device, say)

    from rl.distributed import make_trainer
    from rl.policy.convert import build_policy
    from rollout.engine import EngineConfig
    from rollout.pool import RolloutPool
    from rollout.sampling import SamplingParams

    def factory():
        m = build_policy(model_config)
        m.load_state_dict(weights)
        return m

    res = cfg.resources
    trainer = make_trainer(factory, num_processes=cfg.deepspeed.num_processes, cpus_per_actor=res.cpus_per_actor,
                           gpus_per_actor=res.gpus_per_trainer, actor_options=placement.trainer_options,
                           algo=cfg.algorithm, ds=cfg.deepspeed,
                           temperature=cfg.rollout.temperature, norm_constant=float(cfg.rollout.max_new_tokens),
                           seed=cfg.seed, pad_id=tok.pad_token_id)
    sampler = PromptSampler(len(train_rows), cfg.seed)
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
    correct_term = next(iter(cfg.rewards.terms))
    return Run(cfg=cfg, dir=out, tokenizer=tok, model_config=model_config, train_rows=train_rows,
               test_rows=test_rows, rewards=rewards, correct_term=correct_term, budget=budget, sampler=sampler,
               trainer=trainer, pool=pool, eval_model=eval_model,
               sampling=SamplingParams.from_config(cfg.rollout), logger=logger,
               progress=make_progress(cfg.logger.progress), step=step, history=history, say=say,
               placement=placement, owns_ray=owns_ray)
