"""Reward throughput on this machine: built-ins, runner isolation modes, and the code sandbox.

Part 1: each built-in on B completions, called directly (samples/s), to show which rewards are
cheap (string rules) and which are not (math-verify parses with sympy).
Part 2: one ``RewardRunner.score`` step with math_correct + format + length_penalty on B samples,
``isolation="thread"`` vs ``"process"`` (steady state, workers warm): wall time per step.
Part 3: the sandbox: a trivial program (start-up cost), and ``code_exec`` on B programs with
3 assert tests each, with ``max_parallel`` sandboxes at once (samples/s).

Run: python benchmarks/rewards_bench.py [--batch 64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from rewards.builtin import format_reward, language_consistency, length_penalty, math_correct
from rewards.code import code_exec
from rewards.runner import RewardRunner
from rewards.sandbox import run_python, sandbox_support


def timed(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def math_batch(b: int) -> tuple[list[str], list[str], list[str]]:
    completions = [f"<think>compute {i} times 2</think>So the answer is \\boxed{{\\frac{{{2 * i}}}{{2}}}}." if i % 2
                   else f"<think>think</think>Adding up.\nAnswer: {i + 1}" for i in range(b)]
    return ["What is it?"] * b, completions, [str(i) for i in range(b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    b, r = args.batch, args.repeats
    prompts, completions, answers = math_batch(b)

    print(f"\n## Built-ins, called directly (B = {b})\n")
    print("| reward | ms / batch | samples/s |")
    print("|---|---:|---:|")
    builtins: dict[str, Callable[[], Any]] = {
        "math_correct": lambda: math_correct(prompts, completions, answer=answers),
        "format": lambda: format_reward(prompts, completions),
        "length_penalty": lambda: length_penalty(prompts, completions, target=64),
        "language_consistency": lambda: language_consistency(prompts, completions),
    }
    for name, fn in builtins.items():
        s = timed(fn, r)
        print(f"| {name} | {s * 1e3:.1f} | {b / s:,.0f} |")

    print(f"\n## One RewardRunner step: math_correct + format + length_penalty (B = {b}, 2 workers)\n")
    print("| isolation | ms / step | samples/s |")
    print("|---|---:|---:|")
    terms = {"correct": {"name": "math_correct"}, "format": {"name": "format", "weight": 0.1},
             "length": {"name": "length_penalty", "kwargs": {"target": 64}}}
    for isolation in ("thread", "process"):
        with RewardRunner(terms, timeout_s=60, num_workers=2, isolation=isolation) as runner:
            s = timed(lambda: runner.score(prompts, completions, {"answer": answers}), r)
        print(f"| {isolation} | {s * 1e3:.1f} | {b / s:,.0f} |")

    ok, why = sandbox_support()
    if not ok:
        print(f"\nsandbox unavailable here: {why}")
        return
    print("\n## Sandbox\n")
    print("| what | ms | samples/s |")
    print("|---|---:|---:|")
    s = timed(lambda: run_python("p.py", {"p.py": "print(1)"}), r)
    print(f"| one sandbox, `print(1)` | {s * 1e3:.1f} | {1 / s:,.1f} |")
    code = "<think>t</think>```python\ndef f(x):\n    return x * x\n```"
    tests = [["assert f(1) == 1", "assert f(2) == 4", "assert f(3) == 9"]] * 16
    for par in (1, 2, 4):
        s = timed(lambda par=par: code_exec(["q"] * 16, [code] * 16, tests=tests, max_parallel=par), r)
        print(f"| code_exec, 16 programs x 3 tests, max_parallel={par} | {s * 1e3:.0f} | {16 / s:,.1f} |")


if __name__ == "__main__":
    main()
