"""GPU tests: every test here is ``@pytest.mark.gpu`` (skipped without CUDA by tests/conftest.py).

fp32 comparisons run with TF32 off (full-precision matmuls); bf16 ones state their tolerance.
"""
from __future__ import annotations

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
def cuda() -> torch.device:
    return torch.device("cuda")
