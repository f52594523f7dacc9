"""Command: write N synthesized, validated, distinct environments as a ``datasets`` DatasetDict.

    python -m envs.synthesize --n 2000 --out DIR --seed 0 [--families trip,lookup] [--test-fraction 0.1]

Splits ``train`` / ``test`` (held-out environments, a seeded random share), rows as ``Task.to_row``, and
prints a summary by family and difficulty with the time taken. The pass@K solvability filter
needs a policy and runs in the training set-up (``envs.synth.pipeline.filter_solvable``).
"""
from __future__ import annotations

import argparse
import random
import time

import datasets

from envs.synth.pipeline import LEVELS, NUM_ENVS, TEST_FRACTION, summary_table, synthesize


def to_dataset(tasks, test_fraction: float, seed: int = 0) -> datasets.DatasetDict:
    """A seeded random ``round(len(tasks) * test_fraction)`` of the tasks go to ``test``."""
    held = set(random.Random(f"split:{seed}").sample(range(len(tasks)), round(len(tasks) * test_fraction)))
    test = [t.to_row() for i, t in enumerate(tasks) if i in held]
    train = [t.to_row() for i, t in enumerate(tasks) if i not in held]
    return datasets.DatasetDict({"train": datasets.Dataset.from_list(train),
                                 "test": datasets.Dataset.from_list(test)})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=NUM_ENVS)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", default="", help="comma-separated (default: all registered)")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    a = ap.parse_args(argv)
    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    tasks, stats = synthesize(a.n, a.seed, [f for f in a.families.split(",") if f] or None,
                              tuple(int(x) for x in a.levels.split(",")))
    t1 = time.perf_counter()
    ds = to_dataset(tasks, a.test_fraction, a.seed)
    ds.save_to_disk(a.out)
    print(summary_table(stats))
    print(f"{len(tasks)} environments (train {len(ds['train'])}, test {len(ds['test'])}) synthesized and "
          f"validated in {t1 - t0:.1f} s; written to {a.out} in {time.perf_counter() - t1:.1f} s")


if __name__ == "__main__":
    main()
