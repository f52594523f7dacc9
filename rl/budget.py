"""Compute accounting: steps, samples, tokens, FLOPs and wall-clock seconds; stop at the first limit.

FLOPs are estimated from the policy config with ``rl.policy.flops`` (no profiling): a sequence of
L tokens costs ``sequence_forward_macs(L)`` multiply-adds for a forward pass, whether it is run as
a prefill + decode (rollout: token t sees t keys either way) or as one teacher-forced pass
(training). Training counts forward + backward as 3 forwards, times the epochs over the batch, plus
one forward of the reference policy when the KL term is on. The main-attention core and the
lightning indexer are tracked apart from the weight matmuls, so dense and DSA attention cost can be
compared. FLOPs = 2 x MACs.

The counters are part of every checkpoint (``state_dict``), so a resumed run keeps its budget.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from rl.policy.factory import policy_sequence_macs as sequence_forward_macs  # native or converted

if TYPE_CHECKING:
    from rl.config import BudgetConfig
    from rl.policy import DSAConfig


@dataclass
class Spent:
    """What a run has used so far (all counters monotone)."""

    steps: int = 0
    samples: int = 0
    rollout_tokens: int = 0
    train_tokens: int = 0
    rollout_flops: float = 0.0
    train_flops: float = 0.0
    attention_flops: float = 0.0
    """Main-attention core FLOPs (rollout + training), included in the two totals above."""
    indexer_flops: float = 0.0
    """Lightning-indexer FLOPs (rollout + training), included in the two totals above."""
    seconds: float = 0.0
    """Wall-clock seconds of the RL loop (summed over resumed segments)."""

    @property
    def tokens(self) -> int:
        return self.rollout_tokens + self.train_tokens

    @property
    def flops(self) -> float:
        return self.rollout_flops + self.train_flops


@dataclass
class Budget:
    """Limits from ``BudgetConfig`` plus the running :class:`Spent` counters."""

    max_steps: int | None = None
    max_samples: int | None = None
    max_tokens: int | None = None
    max_flops: float | None = None
    max_seconds: float | None = None
    spent: Spent = field(default_factory=Spent)
    _t0: float = field(default_factory=time.monotonic, repr=False)
    _seconds_before: float = field(default=0.0, repr=False)

    @classmethod
    def from_config(cls, cfg: BudgetConfig) -> Budget:
        max_flops = cfg.max_flops
        if cfg.pretrain_flops is not None and cfg.pretrain_fraction is not None:
            fraction_flops = cfg.pretrain_flops * cfg.pretrain_fraction
            max_flops = fraction_flops if max_flops is None else min(max_flops, fraction_flops)
        return cls(cfg.max_steps, cfg.max_samples, cfg.max_tokens, max_flops, cfg.max_seconds)

    def tick(self) -> None:
        """Refresh the wall-clock counter."""
        self.spent.seconds = self._seconds_before + time.monotonic() - self._t0

    def add_rollout(self, model_cfg: DSAConfig, seq_lens: list[int], new_tokens: int,
                    mode: str) -> None:
        """Account a rollout batch: sequences of the given total lengths, ``new_tokens`` sampled."""
        self.spent.samples += len(seq_lens)
        self.spent.rollout_tokens += new_tokens
        self.spent.rollout_flops += self._flops(model_cfg, seq_lens, mode, passes=1.0)

    def add_train(self, model_cfg: DSAConfig, seq_lens: list[int], mode: str, epochs: int,
                  with_reference: bool) -> None:
        """Account training on a batch: forward + backward per epoch, plus a reference forward."""
        passes = 3.0 * epochs + (1.0 if with_reference else 0.0)
        self.spent.train_tokens += sum(seq_lens) * epochs
        self.spent.train_flops += self._flops(model_cfg, seq_lens, mode, passes)

    def _flops(self, model_cfg: DSAConfig, seq_lens: list[int], mode: str, passes: float) -> float:
        total = 0.0
        for n in seq_lens:
            cost = sequence_forward_macs(model_cfg, n, mode)
            total += 2.0 * passes * cost.total
            self.spent.attention_flops += 2.0 * passes * cost.attention
            self.spent.indexer_flops += 2.0 * passes * cost.indexer
        return total

    def step_done(self) -> None:
        self.spent.steps += 1
        self.tick()

    def add_step(self, model_cfg: DSAConfig, seq_lens: list[int], new_tokens: int, epochs: int,
                 with_reference: bool) -> None:
        """Account one GRPO step: its rollouts (``new_tokens`` sampled), the training on them, the step."""
        mode = model_cfg.attention_mode
        self.add_rollout(model_cfg, seq_lens, new_tokens, mode)
        self.add_train(model_cfg, seq_lens, mode, epochs, with_reference)
        self.step_done()

    def exhausted(self) -> str | None:
        """The first limit reached, as ``"max_steps (100 >= 100)"``, or None."""
        self.tick()
        s = self.spent
        for name, used, limit in (("max_steps", s.steps, self.max_steps),
                                  ("max_samples", s.samples, self.max_samples),
                                  ("max_tokens", s.tokens, self.max_tokens),
                                  ("max_flops", s.flops, self.max_flops),
                                  ("max_seconds", s.seconds, self.max_seconds)):
            if limit is not None and used >= limit:
                return f"{name} ({used:.4g} >= {limit:.4g})"
        return None

    def fraction_done(self) -> float:
        """Progress towards the nearest limit, in [0, 1] (for the progress bar)."""
        self.tick()
        s = self.spent
        pairs = ((s.steps, self.max_steps), (s.samples, self.max_samples), (s.tokens, self.max_tokens),
                 (s.flops, self.max_flops), (s.seconds, self.max_seconds))
        return min(1.0, max((u / lim for u, lim in pairs if lim), default=0.0))

    def metrics(self) -> dict[str, float]:
        s = self.spent
        return {"budget/steps": s.steps, "budget/samples": s.samples, "budget/tokens": s.tokens,
                "budget/rollout_flops": s.rollout_flops, "budget/train_flops": s.train_flops,
                "budget/attention_flops": s.attention_flops, "budget/indexer_flops": s.indexer_flops,
                "budget/flops": s.flops, "budget/seconds": s.seconds}

    def state_dict(self) -> dict[str, float]:
        self.tick()
        return asdict(self.spent)

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.spent = Spent(**state)
        self._seconds_before, self._t0 = self.spent.seconds, time.monotonic()
