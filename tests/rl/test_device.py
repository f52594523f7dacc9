"""rl.device: the choices that depend on the machine (dtype, OpenMP settings, device)."""
from __future__ import annotations

import pytest
import torch

from rl.device import cpu_thread_settings, cuda_visible, pick_device, pick_dtype


def test_auto_dtype_is_fp32_on_cpu_and_names_pass_through():
    assert pick_dtype("auto", "cpu") == torch.float32
    assert pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16


def test_hidden_gpus_count_as_none_and_cpu_runs_get_the_openmp_settings(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not cuda_visible()
    assert cpu_thread_settings() == {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "200000"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_cpu_machine_answers():
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="device=cuda but CUDA is not available"):
        pick_device("cuda")
