"""One GRPO update on CUDA in bf16 under DeepSpeed ZeRO-2 and ZeRO-3 (NCCL, one process) against the
CPU fp32 update of the same batch (the plain autograd + AdamW oracle, which
tests/rl/test_trainer_oracle.py ties to the CPU DeepSpeed trainer to 1e-5).

bf16 tolerance: the trainer keeps fp32 master weights but computes in bf16, and AdamW's first
step moves each weight by about lr * g / |g|, so an entry whose small gradient changes sign under
bf16 rounding moves the other way. The updates are therefore compared as vectors (matrices only:
a norm weight near 1 has a bf16 spacing of 8e-3, coarser than the update): cosine similarity and
norm ratio of (weights after - weights before), plus the gradient norm before clipping.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "rl"))
import _trainer_fixtures as fx

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def batch():
    trajs = fx.sample_trajectories(fx.tiny_policy(seed=0))  # CPU fp32 sampler
    adv = fx.fixed_advantages(len(trajs))
    return trajs, adv


def bf16_policy():
    return fx.tiny_policy().to(torch.bfloat16)


@pytest.mark.parametrize("stage", [2, 3])
def test_bf16_update_matches_the_cpu_fp32_update(batch, stage, device):
    from rl.process_group import default_backend
    from rl.trainer import Trainer

    trajs, adv = batch
    algo = fx.algo(kl_coef=0.0)  # lr 1e-2: the update is well above bf16's spacing of small weights
    want, want_norm = fx.autograd_update(trajs, adv, algo)
    trainer = Trainer(bf16_policy, algo, fx.ds(stage))
    assert trainer.device.type == device.type and trainer.dtype == torch.bfloat16
    assert torch.distributed.get_backend() == default_backend() == ("nccl" if device.type == "cuda" else "gloo")
    metrics = trainer.train_step(trajs, adv)
    got = trainer.export_state_dict()
    start = fx.tiny_policy().state_dict()
    keys = [k for k in want if want[k].dim() >= 2 and not torch.equal(want[k], start[k])]
    d_got = torch.cat([(got[k].float() - start[k].to(torch.bfloat16).float()).flatten() for k in keys])
    d_want = torch.cat([(want[k] - start[k]).flatten() for k in keys])
    cos = float(torch.nn.functional.cosine_similarity(d_got, d_want, dim=0))
    ratio = float(d_got.norm() / d_want.norm())
    assert cos > 0.95 and 0.9 < ratio < 1.1, (cos, ratio)
    assert metrics["grad_norm"] == pytest.approx(want_norm, rel=0.03)
