"""Fixtures shared by the rewards tests."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

SANDBOX_UID_BASE = 2_000_000  # rewards/_sandbox_init.py gives each sandbox the uid UID_BASE + pid


def _sandbox_processes() -> list[int]:
    """PIDs of live processes running as a sandbox uid (there should be none between runs)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
        except (OSError, ValueError):
            continue
        uid_line = next((ln for ln in status.splitlines() if ln.startswith("Uid:")), "")
        if uid_line and int(uid_line.split()[1]) >= SANDBOX_UID_BASE:
            pids.append(int(entry.name))
    return pids


@pytest.fixture
def sandbox_processes() -> Callable[[], list[int]]:
    return _sandbox_processes
