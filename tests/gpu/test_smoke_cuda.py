"""The real entry point on the device: ``python -m rl.train +experiment=math budget=smoke`` with the
trainer (in-process, bf16) and both rollout workers (a quarter of the GPU each) on CUDA."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def test_math_smoke_run_on_the_gpu(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("DS_ACCELERATOR", None)
    args = [sys.executable, "-m", "rl.train", "+experiment=math", "budget=smoke", "device=cuda",
            "resources.gpus_per_worker=0.25", "logger.progress=false", f"hydra.run.dir={run}"]
    p = subprocess.run(args, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "trainer: cuda, bfloat16" in p.stderr, p.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2, summary
    assert (run / "final" / "config.json").exists()
