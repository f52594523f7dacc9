"""The validation-selected policy of a run (``keep_best``, like transformers' ``load_best_model_at_end``).

The loop offers each validated policy (step 0, every ``eval_every`` steps, the last step) with its
validation greedy accuracy; :class:`BestPolicy` keeps the best one on disk as
``RUN_DIR/best/step-N/`` (a ``save_pretrained`` directory plus ``best.json``), written under a
temporary name and renamed into place, so a killed run never leaves a half-written one. A tie keeps
the earlier step (the policy closer to the reference).

Resume: the run continues from its last checkpoint, so the kept policy must be the best of the
steps up to that checkpoint. Kept policies only improve, so that is the newest ``step-N`` with
N <= the checkpoint's step; to keep it available, a new best does not delete the one that was best
at the last checkpoint (:meth:`BestPolicy.checkpointed` says when one was taken), and
:meth:`BestPolicy.resume` drops any written after the checkpoint (the resumed run repeats those
steps).
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


def _steps(directory: Path) -> dict[int, Path]:
    """The complete ``step-N`` directories under ``directory`` (those holding ``best.json``)."""
    out = {}
    for d in directory.glob("step-*") if directory.is_dir() else ():
        if (d / INFO).is_file() and d.name[5:].isdigit():
            out[int(d.name[5:])] = d
    return out


@dataclass
class BestPolicy:
    """The best validated policy so far (see the module docstring)."""

    directory: Path
    """``RUN_DIR/best``: holds ``step-N/`` directories."""
    step: int | None = None
    """Step of the kept policy; None before the first offer."""
    accuracy: float = float("-inf")
    """Its validation greedy accuracy."""
    at_checkpoint: int | None = None
    """Step of the policy that was best when the last checkpoint was taken (kept on disk)."""

    @property
    def path(self) -> Path:
        """The kept policy's directory."""
        return self.directory / f"step-{self.step}"

    def offer(self, step: int, accuracy: float, save: Callable[[Path], Any]) -> bool:
        """Keep the policy of ``step`` when ``accuracy`` beats the kept one's (strictly); ``save(dir)``
        writes it as a ``save_pretrained`` directory. Returns whether it was kept."""
        if accuracy <= self.accuracy:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"step-{step}"
        tmp = self.directory / f".partial-step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(final, ignore_errors=True)  # only a same-step leftover of a resumed run
        save(tmp)
        (tmp / INFO).write_text(json.dumps({"step": step, "accuracy": accuracy}))
        os.replace(tmp, final)
        self.step, self.accuracy = step, accuracy
        self._prune()
        return True

    def checkpointed(self) -> None:
        """A checkpoint was taken: the kept policy is the one a resume from it must find."""
        self.at_checkpoint = self.step
        self._prune()

    def _prune(self) -> None:
        """Delete every kept directory but the current one and the one best at the last checkpoint."""
        for s, d in _steps(self.directory).items():
            if s not in (self.step, self.at_checkpoint):
                shutil.rmtree(d, ignore_errors=True)

    @classmethod
    def resume(cls, directory: str | Path, step: int) -> BestPolicy:
        """The kept policy of a run resumed from its checkpoint at ``step`` (see the module docstring)."""
        directory = Path(directory)
        kept = _steps(directory)
        for s, d in kept.items():
            if s > step:
                shutil.rmtree(d, ignore_errors=True)
        earlier = [s for s in kept if s <= step]
        if not earlier:
            return cls(directory)
        s = max(earlier)
        info = json.loads((kept[s] / INFO).read_text())
        return cls(directory, step=s, accuracy=float(info["accuracy"]), at_checkpoint=s)

    def load_into(self, model: Any) -> None:
        """Load the kept weights into ``model`` (a policy of the run's shape)."""
        if self.step is None:
            raise RuntimeError(f"no validated policy kept in {self.directory}")
        kept = type(model).from_pretrained(self.path)
        model.load_state_dict(kept.state_dict())
