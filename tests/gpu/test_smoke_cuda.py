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


def test_math_smoke_run_on_the_gpu(tmp_path, device):
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    on_gpu = device.type == "cuda"
    if on_gpu:
        env.pop("DS_ACCELERATOR", None)
    args = [sys.executable, "-m", "rl.train", "+experiment=math", "budget=smoke", f"device={device.type}",
            f"resources.gpus_per_worker={0.25 if on_gpu else 0}", "logger.progress=false", f"hydra.run.dir={run}"]
    if not on_gpu:  # the CPU dry run checks this test's code: a short cold start, few prompts
        args += ["coldstart.sft_steps=20", "coldstart.indexer_warmup_steps=5", "coldstart.sparse_steps=5",
                 "data.test_size=8", "rollout.prompts_per_step=2"]
    p = subprocess.run(args, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    want = "trainer: cuda, bfloat16" if on_gpu else "trainer: cpu, float32"
    assert want in p.stderr, p.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2, summary
    assert (run / "final" / "config.json").exists()
