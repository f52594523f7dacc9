"""benchmarks.smollm_heldout: the paired comparison, by hand."""
from __future__ import annotations

import math

from benchmarks.smollm_heldout import paired


def test_paired_counts_and_standard_error():
    before = [True, True, False, False, False]
    after = [True, False, True, True, False]
    r = paired(before, after)
    # up 2 (problems 3, 4), down 1 (problem 2): diff (3 - 2) / 5 = +20 points;
    # se = sqrt(2 + 1 - (2 - 1)^2 / 5) / 5 = sqrt(2.8) / 5
    assert (r["n"], r["before"], r["after"], r["up"], r["down"]) == (5, 2, 3, 2, 1)
    assert math.isclose(r["diff"], 20.0) and math.isclose(r["se"], 100 * math.sqrt(2.8) / 5)
    assert paired([True, False], [True, False])["se"] == 0.0
