"""Device-dependent choices, made in one place (the README's "On GPUs" lists them).

What differs between a CUDA machine and a CPU-only one:

- **compute dtype** (``model.dtype=auto``): bfloat16 on a CUDA card that supports it (DeepSpeed
  then keeps fp32 master weights and optimizer states), float32 on CPU, where bf16 autocast ran
  2.7x slower on the project's machines (no AVX512-BF16 / AMX);
- **OpenMP waiting** (``rl.train``): on a CPU-only machine the trainer, the rollout workers and the
  reward workers take turns on the same few cores, so idle OpenMP threads must sleep
  (``OMP_WAIT_POLICY=PASSIVE``) after a short spin (``GOMP_SPINCOUNT``); with a GPU the CPU threads
  mostly wait for the device and these settings are left to the user;
- **collective backend**: NCCL with CUDA, gloo without (``rl.distributed.default_backend``);
- **pinned host memory** for the training batch when it is copied to a GPU (asynchronous copies).

:func:`cuda_visible` answers without importing torch, so ``rl.train`` can set the OpenMP variables
before torch (and its OpenMP runtime) loads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def cuda_visible() -> bool:
    """True when an NVIDIA GPU is present and not hidden by ``CUDA_VISIBLE_DEVICES`` (no torch
    import: reads the driver's /proc entries and the device nodes)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def cpu_thread_settings() -> dict[str, str]:
    """The OpenMP variables ``rl.train`` sets (unless already set) before torch loads: on a CPU-only
    machine, sleep after a short spin (0.76 -> 0.44 s per math step on two cores); none with a GPU."""
    if cuda_visible():
        return {}
    return {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "200000"}


def pick_device(name: str) -> Any:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` as given.

    Raises:
        ValueError: ``cuda`` asked for on a machine without CUDA (one line with the fix).
    """
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but CUDA is not available: use device=auto or device=cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, device: Any) -> Any:
    """The parameter / compute dtype of ``model.dtype=name`` on ``device``: ``auto`` is bfloat16 on
    a CUDA device that supports it, float32 otherwise; other names as given (``float32``,
    ``bfloat16``, ``float16``)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32
