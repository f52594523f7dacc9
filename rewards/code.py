"""Code-execution reward: run the completion's program against the sample's tests in the sandbox.

The program is the last fenced code block of the answer part (after ``</think>``; see
:mod:`rewards.text`); the tests come from the dataset column ``tests`` in any form
:func:`rewards.sandbox.normalise_tests` reads (assert snippets, or stdin/stdout pairs). Each
sample runs in its own sandbox (:mod:`rewards.sandbox`); samples of a batch run in parallel.

Score: 1.0 when every test passes, else 0.0 (the V3.2-style binary outcome); with
``partial_credit=True`` the fraction of tests passed. A completion without a code block scores
0.0 (a valid score, not an error). A sandbox that cannot be built here raises
:class:`rewards.sandbox.SandboxUnavailable`, which the reward runner reports as an error rather
than silently scoring every program 0.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewards.registry import register_reward
from rewards.sandbox import SandboxUnavailable, TestReport, limits_from_kwargs, run_tests, sandbox_support
from rewards.text import extract_code, split_answer
from rewards.text import think_in_prompt as _think_in_prompt


def run_completion_tests(completion: str, tests: Any, think_in_prompt: bool = False,
                         **limits: Any) -> TestReport:
    """Extract the program from one completion and run it against ``tests`` (a report, with reasons)."""
    _, answer = split_answer(completion, think_in_prompt)
    code = extract_code(answer) if answer is not None else None
    if code is None:
        return TestReport(reason="no fenced code block in the answer")
    return run_tests(code, tests, limits_from_kwargs(**limits))


@register_reward("code_exec")
def code_exec(prompts: Sequence[Any], completions: Sequence[str], tests: Sequence[Any],
              partial_credit: bool = False, max_parallel: int | None = None,
              think_in_prompt: bool | None = None, limits: dict[str, Any] | None = None,
              **fields: Any) -> list[float]:
    """1.0 when the completion's program passes all its tests (or the fraction passed), else 0.0.

    Args:
        tests: (B,) per-sample tests, a dataset column (see :func:`rewards.sandbox.normalise_tests`).
        partial_credit: score the fraction of tests passed instead of all-or-nothing.
        max_parallel: sandboxes run at once (default: the CPU count).
        think_in_prompt: the prompt already opened ``<think>`` (None: detect per string prompt).
        limits: :class:`rewards.sandbox.SandboxLimits` fields, e.g. ``{"cpu_s": 2, "memory_mb": 256}``.

    >>> done = "<think>double it</think>```python\\ndef f(x):\\n    return 2 * x\\n```"
    >>> code_exec(["Write f."], [done], tests=[["assert f(2) == 4"]])
    [1.0]
    """
    ok, why = sandbox_support()
    if not ok:
        raise SandboxUnavailable(f"code_exec cannot run programs here: {why}")
    flags = ([think_in_prompt] * len(prompts) if think_in_prompt is not None
             else [_think_in_prompt(p) for p in prompts])
    if not (len(flags) == len(completions) == len(tests)):
        raise ValueError(f"code_exec: {len(prompts)} prompts, {len(completions)} completions, {len(tests)} tests")

    def score(i: int) -> float:
        report = run_completion_tests(completions[i], tests[i], flags[i], **(limits or {}))
        return report.fraction if partial_credit else float(report.all_passed)

    workers = max(1, min(max_parallel or os.cpu_count() or 1, len(completions)))
    with ThreadPoolExecutor(workers, thread_name_prefix="code_exec") as pool:
        return list(pool.map(score, range(len(completions))))


code_exec.warmup = sandbox_support  # type: ignore[attr-defined]  # probe the sandbox before step 1
