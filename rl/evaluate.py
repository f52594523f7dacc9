"""Held-out evaluation (greedy accuracy, sampled accuracy, pass@G), the prompt sampler, the plot.

Evaluation decodes the test prompts with the same engine the rollout workers use, in the learner
process, and scores them with the run's reward functions: ``accuracy`` is the fraction of
completions whose first reward term (the correctness term: ``math_correct`` for math) is positive,
``reward`` the mean total reward.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PromptSampler:
    """Seeded, resumable order over a data set: a fresh permutation per epoch."""

    size: int
    seed: int
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("the training split is empty: check data.source and data.train_split")
        self._shuffle()

    def _shuffle(self) -> None:
        self._order = list(range(self.size))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(self._order)

    def next_batch(self, n: int) -> list[int]:
        """The next ``n`` row indices (wrapping into a new epoch as needed)."""
        out = []
        while len(out) < n:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._shuffle()
            take = min(n - len(out), self.size - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._shuffle()


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
    evals = [(h["step"], h["eval/greedy_accuracy"]) for h in history if "eval/greedy_accuracy" in h]
    if train:
        ax.plot(*zip(*train), label="train reward (sampled)", alpha=0.7)
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out greedy accuracy")
    ax.set_xlabel("GRPO step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
