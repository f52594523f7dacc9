"""Process-group plumbing shared by the trainer and its Ray group: rank environment variables, free
ports, the backend choice and joining the default process group (a leaf: no project imports)."""
from __future__ import annotations

import os
import socket

import torch

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def set_rank_env(rank: int, world_size: int, local_rank: int, master_addr: str, master_port: int) -> None:
    """Write the variables ``torch.distributed`` / DeepSpeed read at ``init_distributed``."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank),
                      MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))


def ensure_single_process_env() -> None:
    """If no launcher set the rank variables, make this process rank 0 of 1 on 127.0.0.1.

    Without them DeepSpeed falls back to MPI discovery (and fails without mpi4py)."""
    if all(v in os.environ for v in RANK_VARS):
        return
    set_rank_env(0, 1, 0, "127.0.0.1", free_port())


def default_backend() -> str:
    """``nccl`` when CUDA is available, else ``gloo``."""
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_distributed() -> None:
    """Join (or create) the default process group through DeepSpeed, once per process."""
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    ensure_single_process_env()
    deepspeed.init_distributed(dist_backend=default_backend(), auto_mpi_discovery=False)
