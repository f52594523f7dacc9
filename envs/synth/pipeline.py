"""The synthesis pipeline: database -> tools -> task + reference + verifier -> validate -> harder.

For environment i (families and target levels taken round-robin), seeded by the string
``"{seed}:{family}:{i}:{attempt}"`` (deterministic across runs and machines):

1. ``family.build_database(rng)``;
2. for level = 1 .. target (only 0 when the target is 0, a family's compact level):
   ``family.compose(data, rng_task, level)`` with a fresh generator of the
   same task seed at every level (so level L+1 extends the choices of level L: same person, city,
   destinations) -- the tools exposed are the task's ``tools``;
3. :func:`validate` each level: replaying the reference solution through the environment must
   succeed with no tool error, and every trivial submission (empty, zero, "unknown", an over-budget
   plan) and an empty text answer must fail. The environment keeps the highest level that
   validated; a level-1 failure or a duplicate ``(family, prompt)`` retries with the next attempt.

:func:`filter_solvable` is V3.2's pass@K filter: a :data:`Solver` (the policy through
``rollout.agent.agent_solver``, or any other callable, e.g. an LLM endpoint) makes K tries per task;
tasks never solved are dropped. Departures from V3.2: the generators are hand-written programs,
not an LLM agent writing databases and tools; the :class:`~envs.registry.Family` interface is
where such a generator would plug in.
"""
from __future__ import annotations

import random
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from envs.base import ToolCall
from envs.registry import Family, Task, family_names, get_family

Solver = Callable[[Sequence[Task], int], list[list[float]]]
"""``solver(tasks, k) -> rewards`` (len(tasks) lists of k rewards): K independent tries per task."""


def validate(task: Task, family: Family | None = None) -> str | None:
    """Why ``task`` is invalid, or None: the reference must pass, trivial answers must fail."""
    family = family or get_family(task.family)
    env = _env(family)
    env.reset(task)
    for i, c in enumerate(task.reference):
        res = env.step([ToolCall(c["name"], c["arguments"])])
        if res.num_errors:
            return f"reference call {i} ({c['name']}) failed: {res.observations[0][:120]}"
        if res.done != (i == len(task.reference) - 1):
            return f"reference ended at call {i} of {len(task.reference)}"
    if res.reward != 1.0:
        return f"reference solution scored {res.reward}"
    for bad in family.trivial_answers(task):
        env.reset(task)
        res = env.step([ToolCall(env.submit_tool, bad)])
        if res.reward > 0:
            return f"trivial answer {bad} passes the verifier"
    env.reset(task)
    if env.finish("").reward > 0:
        return "an empty text answer passes the verifier"
    return None


def _env(family: Family):
    env = family.env_class()
    if family.name == "code":  # our own reference scripts: run in-process, not in the sandbox
        from envs.synth.code import trusted_executor

        env.executor = trusted_executor
    return env


def synthesize_one(family: Family, seed_key: str, target_level: int) -> Task | None:
    """The task of the highest validated level <= target_level for one database, or None."""
    rng = random.Random(seed_key)
    data = family.build_database(rng)
    task = None
    for level in (range(1, target_level + 1) if target_level >= 1 else [target_level]):
        cand = family.compose(data, random.Random(seed_key + "/task"), level)
        if validate(cand, family) is not None:
            break
        task = cand
    if task is not None:
        task.seed = zlib.crc32(seed_key.encode())
    return task

NUM_ENVS = 2000
"""Environments synthesized by default (``python -m envs.synthesize``, ``env.num_envs``)."""
LEVELS = (1, 2, 3, 4, 5)
"""Difficulty levels synthesized by default (round-robin; each family clamps to its own range)."""
TEST_FRACTION = 0.1
"""Share of the synthesized environments held out by default (``envs.synthesize.to_dataset``)."""


@dataclass
class SynthStats:
    counts: Counter
    """(family, difficulty) -> environments."""
    attempts: int
    duplicates: int
    invalid: int


def synthesize(n: int, seed: int = 0, families: Sequence[str] | None = None,
               levels: Sequence[int] = LEVELS) -> tuple[list[Task], SynthStats]:
    """``n`` validated, distinct environments, deterministic in ``seed``."""
    fams = [get_family(f) for f in (families or family_names())]
    seen: set[tuple[str, str]] = set()
    tasks: list[Task] = []
    stats = SynthStats(Counter(), 0, 0, 0)
    for i in range(n):
        fam = fams[i % len(fams)]
        target = max(min(levels[(i // len(fams)) % len(levels)], fam.max_level), fam.min_level)
        for attempt in range(100):
            stats.attempts += 1
            task = synthesize_one(fam, f"{seed}:{fam.name}:{i}:{attempt}", target)
            if task is None:
                stats.invalid += 1
                continue
            key = (task.family, task.prompt)
            if key in seen:
                stats.duplicates += 1
                continue
            seen.add(key)
            task.env_id = f"{fam.name}-{seed}-{i}"
            tasks.append(task)
            stats.counts[(fam.name, task.difficulty)] += 1
            break
        else:
            raise RuntimeError(f"family {fam.name}: no valid distinct task in 100 attempts (env {i})")
    return tasks, stats


def filter_solvable(tasks: Sequence[Task], solver: Solver, k: int) -> tuple[list[Task], list[int]]:
    """Keep tasks the solver solves at least once in ``k`` tries (pass@k > 0, V3.2's filter).

    Returns the kept tasks and the number of successful tries of every input task.
    """
    rewards = solver(tasks, k)
    passes = [sum(r > 0 for r in rs) for rs in rewards]
    return [t for t, p in zip(tasks, passes) if p > 0], passes


def summary_table(stats: SynthStats) -> str:
    """Counts by family (rows) and difficulty (columns)."""
    fams = sorted({f for f, _ in stats.counts})
    lvls = sorted({d for _, d in stats.counts})
    head = f"{'family':<8}" + "".join(f"{'d' + str(d):>6}" for d in lvls) + f"{'total':>7}"
    lines = [head]
    for f in fams:
        row = [stats.counts[(f, d)] for d in lvls]
        lines.append(f"{f:<8}" + "".join(f"{c:>6}" for c in row) + f"{sum(row):>7}")
    tot = [sum(stats.counts[(f, d)] for f in fams) for d in lvls]
    lines.append(f"{'total':<8}" + "".join(f"{c:>6}" for c in tot) + f"{sum(tot):>7}")
    lines.append(f"attempts {stats.attempts}, duplicates rejected {stats.duplicates}, "
                 f"invalid rejected {stats.invalid}")
    return "\n".join(lines)
