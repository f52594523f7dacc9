"""The embedded synthesized math problems (pure Python: no torch, no datasets).

Synthesized math: integer arithmetic and short multi-step word problems with exact answers.

- Level 1: one addition or subtraction of numbers up to ``max_operand`` (default :data:`MAX_OPERAND`).
- Level 2: one multiplication (a one-digit by a larger number) or a three-term sum/difference.
- Level 3: two operations with precedence, e.g. ``(a + b) * c`` or ``a * b - c``.
- Level 4: a two- or three-step word problem.

Each problem carries a short worked ``solution`` (one step per operation) for supervised cold
starts. The data set is a pure function of (seed, levels, sizes). Train and test are disjoint by
construction: a problem's split is decided by a hash of its text, so no prompt is in both.

Shared by the learner's data sets (`rl.data.synth_math_dataset`) and the embedded tokenizer, which
is trained on these problems (`rl.policy.tokenizer`), so it sits below both.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

LEVELS = (1, 2, 3, 4)
"""Every difficulty level (all mixed by default)."""
MAX_OPERAND = 99
"""Default largest number a problem states (``data.synth.max_operand``)."""
MIN_MAX_OPERAND = 12
"""The smallest ``max_operand`` the generators accept."""
TEST_FRACTION_MOD = 10  # a problem is a test problem when hash % 10 == 0 (about 10% of the space)


class DataError(ValueError):
    """A data source that cannot be loaded or generated; the message names the source and the fix."""


@dataclass(frozen=True)
class MathProblem:
    prompt: str
    """The question as the user asks it."""
    answer: str
    """The exact answer (an integer, as text)."""
    solution: str
    """A worked solution, one ``a op b = c.`` step per operation."""
    level: int
    """Difficulty level (see the module docstring)."""


def _step(a: int, op: str, b: int) -> tuple[int, str]:
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return value, f"{a} {op} {b} = {value}."


def _level1(rng: random.Random, m: int) -> MathProblem:
    a, b, op = rng.randint(0, m), rng.randint(0, m), rng.choice("+-")
    value, step = _step(a, op, b)
    return MathProblem(f"What is {a} {op} {b}?", str(value), step, 1)


def _level2(rng: random.Random, m: int) -> MathProblem:
    if rng.random() < 0.5:
        a, b = rng.randint(2, 9), rng.randint(min(10, m), m)
        if rng.random() < 0.5:
            a, b = b, a
        value, step = _step(a, "*", b)
        return MathProblem(f"What is {a} * {b}?", str(value), step, 2)
    a, b, c = rng.randint(min(10, m), m), rng.randint(min(10, m), m), rng.randint(min(10, m), m)
    op1, op2 = rng.choice("+-"), rng.choice("+-")
    v1, s1 = _step(a, op1, b)
    v2, s2 = _step(v1, op2, c)
    return MathProblem(f"What is {a} {op1} {b} {op2} {c}?", str(v2), f"{s1} {s2}", 2)


def _level3(rng: random.Random, m: int) -> MathProblem:
    a, b, c = rng.randint(2, min(30, m)), rng.randint(2, min(30, m)), rng.randint(2, 9)
    if rng.random() < 0.5:
        op = rng.choice("+-")
        v1, s1 = _step(a, op, b)
        v2, s2 = _step(v1, "*", c)
        return MathProblem(f"What is ({a} {op} {b}) * {c}?", str(v2), f"{s1} {s2}", 3)
    op = rng.choice("+-")
    v1, s1 = _step(c, "*", a)
    v2, s2 = _step(v1, op, b)
    return MathProblem(f"What is {c} * {a} {op} {b}?", str(v2), f"{s1} {s2}", 3)


_NAMES = ("Ada", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivan", "Juno", "Kai", "Lena")
_ITEMS = ("apples", "books", "coins", "marbles", "pens", "stamps", "cards", "shells")


def _level4(rng: random.Random, m: int) -> MathProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start, bags, per_bag = rng.randint(min(5, m), min(60, m)), rng.randint(2, 9), rng.randint(2, min(12, m))
    v1, s1 = _step(bags, "*", per_bag)
    v2, s2 = _step(start, "+", v1)
    if rng.random() < 0.5:
        return MathProblem(
            f"{name} has {start} {item} and buys {bags} boxes with {per_bag} {item} each. "
            f"How many {item} does {name} have now?", str(v2), f"{s1} {s2}", 4)
    gone = rng.randint(1, v2)
    v3, s3 = _step(v2, "-", gone)
    return MathProblem(
        f"{name} has {start} {item}, buys {bags} boxes with {per_bag} {item} each, "
        f"then gives away {gone}. How many {item} are left?", str(v3), f"{s1} {s2} {s3}", 4)


GENERATORS: dict[int, Callable[[random.Random, int], MathProblem]] = {
    1: _level1, 2: _level2, 3: _level3, 4: _level4}


def is_test_problem(prompt: str) -> bool:
    """The split of a problem, a pure function of its text (so splits can never overlap)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(digest[:4], "little") % TEST_FRACTION_MOD == 0


def iter_problems(seed: int, levels: tuple[int, ...] | list[int],
                  max_operand: int = MAX_OPERAND) -> Iterator[MathProblem]:
    """An endless deterministic stream of problems, levels drawn uniformly from ``levels``.

    ``max_operand`` caps the numbers a problem states (multipliers stay single-digit)."""
    bad = [lv for lv in levels if lv not in GENERATORS]
    if bad or not levels:
        raise DataError(f"data.synth.levels={list(levels)} is invalid: allowed levels are {list(LEVELS)}")
    if max_operand < MIN_MAX_OPERAND:
        raise DataError(f"data.synth.max_operand={max_operand} is invalid: must be >= {MIN_MAX_OPERAND}")
    rng = random.Random(seed)
    while True:
        yield GENERATORS[rng.choice(list(levels))](rng, max_operand)


def generate_math(num_train: int, num_test: int, levels: tuple[int, ...] | list[int],
                  seed: int, max_operand: int = MAX_OPERAND) -> tuple[list[MathProblem], list[MathProblem]]:
    """Unique problems for each split, disjoint across splits.

    Raises:
        DataError: when the levels' problem space is too small for the sizes asked.
    """
    train: dict[str, MathProblem] = {}
    test: dict[str, MathProblem] = {}
    misses = 0
    for problem in iter_problems(seed, levels, max_operand):
        split = test if is_test_problem(problem.prompt) else train
        limit = num_test if split is test else num_train
        if problem.prompt in split or len(split) >= limit:
            misses += 1  # consecutive draws that added nothing: the space is (nearly) exhausted
            if misses > 50_000:
                raise DataError(
                    f"data.synth: levels {list(levels)} have too few distinct problems for "
                    f"{num_train} train + {num_test} test; lower the sizes or add levels")
            continue
        split[problem.prompt] = problem
        misses = 0
        if len(train) >= num_train and len(test) >= num_test:
            return list(train.values()), list(test.values())
    raise AssertionError("unreachable")
