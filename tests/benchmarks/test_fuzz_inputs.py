"""benchmarks/fuzz_inputs.py on a small budget: every family runs and the counts are 0 / 0 / 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fuzz_inputs_counts_are_zero():
    res = subprocess.run([sys.executable, "-m", "benchmarks.fuzz_inputs", "--n", "60", "--entry-point", "2",
                          "--seed", "3"], capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert "escaped / tracebacks / files left: 0 / 0 / 0" in res.stdout, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.returncode == 0
