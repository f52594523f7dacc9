"""The GRPO loop over tool environments (``+experiment=agent``): config composition, the agent task
source's reward inputs and metrics, and (slow) a tiny run end to end through Ray workers."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from rl.config import StartupError, register_configs, to_config
from rl.setup import build_run
from rl.sources import AgentSource
from rollout.types import Trajectory

ROOT = Path(__file__).resolve().parents[2]
TINY = ["+experiment=agent", "env.num_envs=40", "env.max_turns=2", "env.test_fraction=0.1",
        "coldstart.sft_steps=4", "coldstart.batch_size=4", "coldstart.indexer_warmup_steps=1",
        "coldstart.sparse_steps=1", "data.test_size=2", "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=16", "algorithm.group_size=2", "algorithm.mini_batch_size=4",
        "algorithm.micro_batch_size=4", "budget.max_steps=2", "budget.max_seconds=null", "logger=none", "logger.progress=false"]
register_configs()


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return to_config(compose(config_name="train", overrides=overrides))


def test_agent_experiment_composes() -> None:
    cfg = _cfg(["+experiment=agent"])
    assert (cfg.env.name, cfg.env.levels, cfg.env.tool_schema, cfg.env.max_turns) == ("lookup", [0], "compact", 3)
    assert (cfg.env.teacher_reasoning, cfg.coldstart.teacher_stop_early) == (False, 0.5)
    assert (cfg.algorithm.group_size, cfg.algorithm.lr, cfg.algorithm.warmup_steps) == (8, 1e-4, 5)
    assert (cfg.model.attention_mode, cfg.model.index_topk) == ("sparse", 64)  # DSA on
    assert (cfg.coldstart.indexer_warmup_steps, cfg.coldstart.sparse_steps) == (100, 50)
    assert [t.name for t in cfg.rewards.terms.values()] == ["env_verifier"]
    out = subprocess.run([sys.executable, "-m", "rl.train", "+experiment=agent", "--cfg", "job"], check=False,
                         cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "name: env_verifier" in out.stdout and "tool_schema: compact" in out.stdout
    assert "teacher_reasoning: false" in out.stdout


def test_agent_cold_start_passes_the_teacher_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """AgentSource.cold_start hands coldstart.teacher_stop_early, the seed and env.teacher_reasoning
    to the demonstrations, and the demonstrations to run_cold_start."""
    import rl.coldstart
    import rollout.scripted

    seen = {}

    def fake_examples(tasks, tok, agent_config, stop_early, seed, reasoning):
        seen["examples"] = (tasks, agent_config, stop_early, seed, reasoning)
        return [([1, 2, 3], [0, 1, 1])]

    def fake_run(model, tok, examples, cfg, seed, log):
        seen["run"] = (examples, seed)
        return {"sft_loss": 0.0}

    monkeypatch.setattr(rollout.scripted, "cold_start_examples", fake_examples)
    monkeypatch.setattr(rl.coldstart, "run_cold_start", fake_run)
    cfg = _cfg(["+experiment=agent", "coldstart.teacher_stop_early=0.25", "seed=3"])
    src = AgentSource(["t1", "t2"], None, norm_constant=8.0, cache_key="k", agent_config="ac")
    assert src.cold_start(None, None, cfg, lambda s: None) == {"sft_loss": 0.0}
    assert seen["examples"] == (["t1", "t2"], "ac", 0.25, 3, False)
    assert seen["run"] == ([([1, 2, 3], [0, 1, 1])], 3)


def test_bad_environment_stops_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match=r"^env: env.name='nope': use 'synth' or one of "):
        build_run(_cfg([*TINY, "env.name=nope"]), str(tmp_path))


class _Task:
    def __init__(self, prompt: str) -> None:
        self.prompt = prompt


def _traj(reward: float, turns: int, calls: int, errors: int) -> Trajectory:
    return Trajectory(tokens=torch.arange(5), prompt_len=2, loss_mask=torch.tensor([0, 0, 1, 1, 0]).bool(),
                      logprobs=torch.zeros(5), completion="done", finish_reason="stop", weight_version=0, num_turns=turns,
                      num_tool_calls=calls, num_tool_errors=errors, info={"env_reward": reward})


def test_agent_source_reward_inputs_and_metrics() -> None:
    src = AgentSource([], None, norm_constant=8.0, cache_key="k", agent_config=None)
    trajs = [_traj(1.0, 3, 2, 0), _traj(0.0, 1, 1, 1)]
    prompts, completions, fields = src.reward_inputs([_Task("a"), _Task("b")], trajs)
    assert prompts == ["a", "b"] and completions == ["done", "done"]
    assert fields["env_reward"] == [1.0, 0.0] and fields["num_turns"] == [3, 1]
    m = src.metrics(trajs)
    assert m == {"agent/num_turns_mean": 2.0, "agent/num_tool_calls_mean": 1.5,
                 "agent/num_tool_errors_mean": 0.5, "agent/success_mean": 0.5}


@pytest.mark.slow
def test_agent_run_end_to_end(tmp_path: Path) -> None:
    """Tiny settings, 2 GRPO steps through the Ray pool's run_agent, evaluation before and after.

    Through `python -m rl.train` in its own process: a run in the test process leaves Ray and
    torch.distributed state behind that broke a later test's actors on a multi-node cluster."""
    import os

    out = subprocess.run([sys.executable, "-m", "rl.train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT,
                         env={**os.environ, "DSA_RL_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
                         timeout=900, check=False)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["stopped"].startswith("max_steps")
    for k in ("eval/greedy_accuracy", "eval/sampled_accuracy", "eval/pass@2"):
        assert 0.0 <= summary["after"][k] <= 1.0
    hist = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    step = next(h for h in hist if "agent/num_turns_mean" in h)
    assert 1.0 <= step["agent/num_turns_mean"] <= 2.0 and step["agent/num_tool_calls_mean"] >= 0
    assert "reward/mean" in step and any(k.startswith("train/") for k in step)
    assert (tmp_path / "run" / "final" / "config.json").exists()
