"""Held-out evaluation (greedy accuracy, sampled accuracy, pass@G) and the progress plot.

:class:`Evaluator` decodes the test prompts with the same engine the rollout workers use, in the
learner process, with the trainer's current weights, and scores them with the run's reward
functions: ``accuracy`` is the share of samples whose correctness term is positive (the first
reward term, ``math_correct`` for math; agent runs: the environment's verifier, so the success
rate), ``reward`` the mean total reward.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from rewards.runner import RewardRunner
    from rl.sources import TaskSource
    from rollout.engine import EngineConfig
    from rollout.sampling import SamplingParams


@dataclass
class Evaluator:
    """Held-out evaluation of a run (see the module docstring)."""

    model: nn.Module
    """A policy of the run's shape on the learner's device; it receives the weights to evaluate."""
    tokenizer: Any
    engine_config: EngineConfig
    """The rollout engine's settings (routes and selections are not recorded)."""
    source: TaskSource
    rewards: RewardRunner
    correct_term: str
    """The reward term whose positive value counts as correct."""
    greedy: SamplingParams
    sampled: SamplingParams
    """The training sampler's settings (sampled accuracy, pass@G)."""
    group_size: int
    seed: int

    def __call__(self, weights: dict[str, torch.Tensor] | None, step: int, sampled: bool = False,
                 split: str = "test") -> dict[str, float]:
        """``eval/greedy_accuracy`` and ``eval/greedy_reward`` (plus sampled accuracy and reward and
        ``eval/pass@G`` when ``sampled``) of ``weights`` on the held-out rows; {} without any.
        ``split="val"``: the same on the validation rows, as ``val/...``. ``weights=None`` evaluates
        the weights ``self.model`` already holds."""
        from rollout.engine import RolloutEngine

        rows = self.source.test_rows if split == "test" else self.source.val_rows
        if rows is None:
            return {}
        if weights is not None:
            self.model.load_state_dict(weights)
        out: dict[str, float] = {}
        modes = [("greedy", 1, self.greedy)] + ([("sampled", self.group_size, self.sampled)] if sampled else [])
        for name, g, params in modes:
            engine = RolloutEngine(self.model, self.tokenizer, self.engine_config)
            trajs = self.source.generate(engine, rows, params, g, self.seed + step)
            result = self.rewards.score(*self.source.reward_inputs([r for r in rows for _ in range(g)], trajs))
            out.update(scores(name, result.per_term, result.totals, self.correct_term, g,
                              prefix="eval" if split == "test" else split))
        return out


def scores(name: str, per_term: dict[str, list[float]], totals: list[float], correct_term: str,
           group_size: int, prefix: str = "eval") -> dict[str, float]:
    """One evaluation mode's metrics from its reward values (samples in (prompt, sample) order):
    ``eval/NAME_accuracy`` (share of samples whose ``correct_term`` is positive), ``eval/NAME_reward``
    (mean total), ``eval/pass@G`` when ``group_size`` > 1, and for greedy decoding every other term's
    share of positive values (``eval/greedy_TERM``: the same answers under another reading).
    ``prefix`` replaces ``eval`` (``val``: the validation rows)."""
    correct = [v > 0 for v in per_term[correct_term]]
    out = {f"{prefix}/{name}_accuracy": sum(correct) / len(correct),
           f"{prefix}/{name}_reward": sum(totals) / len(totals)}
    if name == "greedy":
        out.update({f"{prefix}/greedy_{term}": sum(v > 0 for v in values) / len(values)
                    for term, values in per_term.items() if term != correct_term})
    if group_size > 1:
        out[f"{prefix}/pass@{group_size}"] = pass_at_k(correct, group_size)
    return out


def pass_at_k(correct: Sequence[bool], group_size: int) -> float:
    """Fraction of groups (consecutive ``group_size`` samples of one prompt) with any success."""
    groups = [correct[i:i + group_size] for i in range(0, len(correct), group_size)]
    return sum(any(g) for g in groups) / max(1, len(groups))


def plot_history(history: list[dict[str, Any]], path: str | Path) -> Path:
    """PNG of training reward and held-out accuracy over steps (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    train = [(h["step"], h["reward/mean"]) for h in history if "reward/mean" in h]
    evals = [(h["step"], h["eval/greedy_accuracy"]) for h in history
             if "eval/greedy_accuracy" in h and "selected_step" not in h]
    val = [(h["step"], h["val/greedy_accuracy"]) for h in history if "val/greedy_accuracy" in h]
    selected = [(h["selected_step"], h["eval/greedy_accuracy"]) for h in history if "selected_step" in h]
    if train:
        ax.plot(*zip(*train), label="train reward (sampled)", alpha=0.7)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out greedy accuracy")
    if val:
        ax.plot(*zip(*val), "s--", label="validation greedy accuracy", alpha=0.8)
    if selected:
        ax.plot(*zip(*selected), "*", markersize=14, label="validation-selected policy (held-out)")
    ax.set_xlabel("GRPO step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
