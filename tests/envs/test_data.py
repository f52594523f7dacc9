"""envs.data: tasks from a config (synthesized or from disk), cold-start examples, pass@K filter."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from envs.data import load_tasks
from envs.synthesize import main
from rl.policy.tokenizer import load_tokenizer
from rollout.sampling import SamplingParams
from rollout.scripted import ScriptedEngine, cold_start_examples, no_tool_policy, reference_policy, solvable


@dataclass
class _Cfg:  # the fields of rl.config.EnvConfig that load_tasks reads
    name: str = "synth"
    path: str | None = None
    num_envs: int = 40
    levels: list[int] = field(default_factory=lambda: [1, 2])
    test_fraction: float = 0.25


def test_load_tasks_synth_family_and_path(tmp_path):
    train, test = load_tasks(_Cfg(), seed=0)
    assert len(train) == 30 and len(test) == 10 and {t.difficulty for t in train} == {1, 2}
    train, _ = load_tasks(_Cfg(name="trip"), seed=0)
    assert {t.family for t in train} == {"trip"}
    main(["--n", "20", "--out", str(tmp_path / "d"), "--test-fraction", "0.5"])
    train, test = load_tasks(_Cfg(path=str(tmp_path / "d"), name="lookup"))
    assert {t.family for t in train + test} == {"lookup"} and len(train) + len(test) == 5
    with pytest.raises(ValueError, match="env.name"):
        load_tasks(_Cfg(name="nope"))


def test_cold_start_examples_and_solvable():
    tok = load_tokenizer()
    tasks, _ = load_tasks(_Cfg(name="lookup", num_envs=4, test_fraction=0.0))
    ex = cold_start_examples(tasks, tok, stop_early=0.0, reasoning=True)
    assert len(ex) == 4 and all(len(i) == len(m) and 0 < sum(m) < len(m) for i, m in ex)
    params = SamplingParams(max_new_tokens=512)
    kept, passes = solvable(tasks, ScriptedEngine(tok, reference_policy(tasks)), params, k=2)
    assert kept == tasks and passes == [2] * 4
    kept, passes = solvable(tasks, ScriptedEngine(tok, no_tool_policy()), params, k=2)
    assert kept == [] and passes == [0] * 4
