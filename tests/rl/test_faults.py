"""Faults in a real run (slow): a rollout worker SIGKILLed in the middle of a step.

The reward worker killed mid-batch and the trainer killed while writing a checkpoint are tested
where their recovery lives: ``tests/rewards/test_runner.py::test_a_reward_worker_killed_mid_batch``
and ``tests/rl/test_checkpoint.py::test_trainer_killed_while_writing_a_checkpoint_...``.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["+experiment=math", "coldstart.sft_steps=10", "coldstart.indexer_warmup_steps=2",
        "coldstart.sparse_steps=2", "data.synth.num_train=200", "data.synth.num_test=50", "data.test_size=8",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=24", "algorithm.group_size=4",
        "algorithm.mini_batch_size=8", "algorithm.micro_batch_size=8", "logger=none", "logger.progress=false",
        "budget=smoke"]


def _descendants(root: int) -> list[int]:
    """PIDs of every process below ``root`` (from /proc: only this test's own processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_rollout_worker_sigkilled_mid_step(tmp_path: Path) -> None:
    """The run finishes its 2 steps; the pool re-runs the dead worker's chunks (keyed, so no
    prompt is lost or scored twice: see tests/rollout/test_pool.py) and says so in one line."""
    env = {**os.environ, "DSA_RL_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "rl.train", *TINY, f"hydra.run.dir={run}"], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
    reader.start()
    killed = None
    try:
        deadline = time.monotonic() + 900
        while not any(ln.startswith("before RL:") for ln in lines):  # the first step starts next
            assert p.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        while killed is None and time.monotonic() < deadline and p.poll() is None:
            for pid in _descendants(p.pid):
                if "RolloutWorker.generate" in _cmdline(pid):  # Ray's title while a chunk decodes
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                    break
            time.sleep(0.02)
        assert killed is not None, "no rollout worker was seen generating"
        assert p.wait(timeout=900) == 0, "".join(lines)[-3000:]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    reader.join(timeout=10)
    out = "".join(lines)
    assert re.search(r"rollout worker \d+ died mid-step .*re-queued its \d+ chunk", out), out[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
