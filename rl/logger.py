"""Metric loggers (wandb, offline by default, or none) and a progress bar for long work.

``make_logger`` picks the backend from ``LoggerConfig``. wandb defaults to offline mode so a run
never needs an account or the network; the ``WANDB_MODE`` environment variable, when set, wins
over ``logger.mode``. ``import wandb`` happens only when the wandb logger is built.
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress

    from rl.config import LoggerConfig


class Logger(Protocol):
    """Where metrics go: one ``log`` per step, ``finish`` once at the end."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def finish(self) -> None: ...


class NoopLogger:
    """Drops metrics (the console shows them through the progress bar and the summary)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class ConsoleLogger:
    """Prints one line of the headline metrics per logged step (``logger=none``)."""

    KEYS = (("reward/mean", "reward"), ("eval/greedy_accuracy", "acc"), ("val/greedy_accuracy", "val_acc"),
            ("eval/sampled_accuracy", "sampled_acc"),
            ("train/kl", "kl"), ("train/clip_frac_high", "clip_high"), ("train/masked_frac", "masked"),
            ("train/entropy", "entropy"), ("train/logp_mismatch_max", "mismatch"),
            ("response/length_mean", "len"), ("rollout/tokens_per_s", "rollout_tok/s"),
            ("train/tokens_per_s", "train_tok/s"))

    def __init__(self, every: int = 1) -> None:
        self.every = every

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step % self.every:
            return
        parts = [f"{short}={metrics[k]:.4g}" for k, short in self.KEYS if k in metrics]
        print(f"step {step}: " + " ".join(parts), flush=True)

    def finish(self) -> None:
        pass


class WandbLogger:
    """wandb run writing under ``run_dir``; offline unless configured or WANDB_MODE says otherwise."""

    def __init__(self, project: str, mode: str, run_dir: str, name: str, config: dict[str, Any],
                 every: int = 1):
        import wandb

        self.every = every
        self._wandb = wandb
        self.run = wandb.init(project=project, mode=os.environ.get("WANDB_MODE", mode), dir=run_dir,
                              name=name, config=config, reinit="finish_previous")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step % self.every == 0:
            self.run.log({k: v for k, v in metrics.items() if not _is_nan(v)}, step=step)

    def finish(self) -> None:
        self.run.finish()


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


class MultiLogger:
    """Sends every call to several loggers."""

    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log(metrics, step)

    def finish(self) -> None:
        for lg in self.loggers:
            lg.finish()


def make_logger(cfg: LoggerConfig, run_dir: str, name: str, config: dict[str, Any]) -> Logger:
    """The logger the config asks for. When stdout is not a terminal (a Ray job's or Slurm's log
    file), the console lines are printed too, since no progress bar is drawn there."""
    console = ConsoleLogger(cfg.log_every)
    if cfg.kind == "none":
        return console
    cluster = config.get("cluster")
    if isinstance(cluster, dict) and isinstance(cluster.get("env"), dict):  # secrets never reach wandb
        from rl.manifest import redact_env

        config = {**config, "cluster": {**cluster, "env": redact_env(cluster["env"])}}
    wandb_logger = WandbLogger(cfg.project, cfg.mode, run_dir, name, config, cfg.log_every)
    return wandb_logger if sys.stdout.isatty() else MultiLogger(wandb_logger, console)


def make_progress(enabled: bool = True) -> Progress:
    """A rich progress bar with a free-form ``info`` column (step metrics go there).

    Use as a context manager: ``task = p.add_task("grpo", total=N, info="")`` then
    ``p.update(task, advance=1, info="reward 0.41 acc 0.38")``.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[info]}"), disable=not enabled,
                    transient=False)
