"""Shared test set-up: offline hub, offline wandb, quiet DeepSpeed, gpu marker handling.

GPU tests (``@pytest.mark.gpu``, under tests/gpu/) are excluded by the default ``addopts``; with
``pytest -m gpu`` on a machine without CUDA each is reported as skipped with the reason, and the
terminal summary always ends with one line counting the gpu tests (passed, failed, skipped,
deselected), so none can go missing silently.
"""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if not torch.cuda.is_available():
    # DeepSpeed's CPU accelerator, without its notice on stdout. Never on a GPU machine: there
    # DeepSpeed must pick CUDA (and the trainer NCCL).
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a shared two-core machine two OpenMP threads that wait for each other made tiny-model tests
    10-200x slower under load. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


NO_CUDA = "needs CUDA: torch.cuda.is_available() is False (run `pytest -m gpu` on a GPU machine)"
GPU_TESTS_DEVICE = "DSA_RL_GPU_TESTS_DEVICE"
"""``DSA_RL_GPU_TESTS_DEVICE=cpu pytest -m gpu`` runs the gpu tests' code on the CPU instead of
skipping it (a dry run for working on them without a GPU; bf16 on CPU is slow, and their
tolerances are meant for CUDA kernels)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available() or os.environ.get(GPU_TESTS_DEVICE) == "cpu":
        return
    skip_gpu = pytest.mark.skip(reason=NO_CUDA)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """List each skipped gpu test with its reason, then one line counting the gpu tests."""
    stats = terminalreporter.stats
    counts: dict[str, int] = {}
    skipped: list[tuple[str, str]] = []
    for outcome in ("passed", "failed", "skipped", "error"):
        for rep in stats.get(outcome, []):
            if "gpu" not in getattr(rep, "keywords", {}) or getattr(rep, "when", "call") not in ("call", "setup"):
                continue
            if outcome == "passed" and rep.when != "call":
                continue
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "skipped":
                reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
                skipped.append((rep.nodeid, reason.removeprefix("Skipped: ")))
    deselected = sum(1 for item in stats.get("deselected", []) if "gpu" in getattr(item, "keywords", {}))
    if deselected:
        counts["deselected"] = deselected
    if not counts:
        return
    if skipped:
        terminalreporter.section("skipped gpu tests")
        for nodeid, reason in skipped:
            terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}")
    total = sum(counts.values())
    parts = ", ".join(f"{n} {k}" for k, n in counts.items())
    hint = " (run them with `pytest -m gpu`)" if set(counts) == {"deselected"} else ""
    terminalreporter.write_line(f"gpu tests: {total} collected: {parts}{hint}")
