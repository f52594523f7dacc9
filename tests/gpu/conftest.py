"""GPU tests: every test here is ``@pytest.mark.gpu`` (skipped without CUDA by tests/conftest.py).

They take the device from the ``device`` fixture: CUDA, or the CPU when
``DSA_RL_GPU_TESTS_DEVICE=cpu`` (a dry run of their code without a GPU). fp32 comparisons run
with TF32 off (full-precision matmuls); bf16 ones state their tolerance.
"""
from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _full_precision_fp32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@pytest.fixture(scope="session")
def device() -> torch.device:
    """CUDA (or the CPU for a dry run: DSA_RL_GPU_TESTS_DEVICE=cpu)."""
    return torch.device(os.environ.get("DSA_RL_GPU_TESTS_DEVICE", "cuda"))
