"""The validation-selected policy of a run (``keep_best``, like transformers' ``load_best_model_at_end``).

The loop offers each validated policy (step 0, every ``eval_every`` steps, the last step) with its
validation greedy accuracy; :class:`BestPolicy` keeps the best one on disk (``RUN_DIR/best/``, a
``save_pretrained`` directory plus ``best.json``), replaced whole so a killed run leaves either the
old or the new best. A tie keeps the earlier step (the policy closer to the reference). On resume
the kept policy is reused when it was validated at or before the resumed checkpoint's step; one
written after it (the run died between a validation and its next checkpoint) is dropped, since the
resumed run repeats those steps.
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INFO = "best.json"
"""The kept policy's step and validation accuracy, inside its directory."""


@dataclass
class BestPolicy:
    """The best validated policy so far (see the module docstring)."""

    directory: Path
    step: int | None = None
    """Step of the kept policy; None before the first offer."""
    accuracy: float = float("-inf")
    """Its validation greedy accuracy."""

    def offer(self, step: int, accuracy: float, save: Callable[[Path], Any]) -> bool:
        """Keep the policy of ``step`` when ``accuracy`` beats the kept one's (strictly); ``save(dir)``
        writes it as a ``save_pretrained`` directory. Returns whether it was kept."""
        if accuracy <= self.accuracy:
            return False
        tmp = self.directory.with_name(f".new-{self.directory.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        save(tmp)
        (tmp / INFO).write_text(json.dumps({"step": step, "accuracy": accuracy}))
        shutil.rmtree(self.directory, ignore_errors=True)
        os.replace(tmp, self.directory)
        self.step, self.accuracy = step, accuracy
        return True

    @classmethod
    def resume(cls, directory: str | Path, step: int) -> BestPolicy:
        """The kept policy of an earlier run resumed at ``step`` (none when it was validated later)."""
        directory = Path(directory)
        info = directory / INFO
        if not info.is_file():
            return cls(directory)
        kept = json.loads(info.read_text())
        if kept["step"] > step:
            shutil.rmtree(directory)
            return cls(directory)
        return cls(directory, step=int(kept["step"]), accuracy=float(kept["accuracy"]))

    def load_into(self, model: Any) -> None:
        """Load the kept weights into ``model`` (a policy of the run's shape)."""
        if self.step is None:
            raise RuntimeError(f"no validated policy kept in {self.directory}")
        kept = type(model).from_pretrained(self.directory)
        model.load_state_dict(kept.state_dict())
