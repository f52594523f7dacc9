"""code_exec: the program in the answer part runs against the sample's tests in the sandbox."""
from __future__ import annotations

import time

import pytest

from rewards.code import code_exec, run_completion_tests
from rewards.runner import RewardRunner
from rewards.sandbox import sandbox_support

pytestmark = pytest.mark.skipif(not sandbox_support()[0], reason=f"no sandbox here: {sandbox_support()[1]}")
LIMITS = {"cpu_s": 1, "test_timeout_s": 5, "wall_s": 30}  # the endless loop ends by CPU time


def fenced(code: str) -> str:
    return f"<think>let me write it</think>Here:\n```python\n{code}\n```"


def test_code_exec_scores():
    good = "def square(x):\n    return x * x"
    half = "def square(x):\n    return x * 2"          # right for 2 only
    tests = ["assert square(2) == 4", "assert square(3) == 9"]
    completions = [
        fenced(good),
        fenced(half),
        "<think>```python\n" + good + "\n```</think>no code in the answer",   # code hidden in reasoning
        fenced("import os\nprint(open('/etc/passwd').read())\n" + good),      # attack, then correct code
        fenced("while True:\n    pass"),
        fenced(good).replace("```python", "```py"),
    ]
    n = len(completions)
    assert code_exec(["Write square."] * n, completions, tests=[tests] * n, limits=LIMITS) == \
        [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert code_exec(["q"] * 2, completions[:2], tests=[tests] * 2, partial_credit=True, limits=LIMITS,
                     answer=["unused", "unused"]) == [1.0, 0.5]


def test_code_exec_stdio_tests_from_a_dataset_column():
    prog = "n = int(input())\nprint(n * (n + 1) // 2)"
    column = '{"inputs": ["3\\n", "10\\n"], "outputs": ["6\\n", "55\\n"]}'   # JSON text, as stored in a dataset
    assert code_exec(["q"], [fenced(prog)], tests=[column], limits=LIMITS) == [1.0]


def test_reasons_are_available_per_test():
    report = run_completion_tests(fenced("def f():\n    return 1"), ["assert f() == 2"], **LIMITS)
    assert report.passed == [False] and report.reasons == ["AssertionError"]
    assert run_completion_tests("no code", ["assert True"]).reason == "no fenced code block in the answer"


def test_a_hung_code_reward_leaves_no_sandbox_behind(sandbox_processes):
    """The runner kills a worker stuck in code_exec at the deadline; the sandboxes it started die too."""
    slow = {"cpu_s": 100, "test_timeout_s": 100, "wall_s": 100}
    terms = {"code": {"name": "code_exec", "kwargs": {"limits": slow}}}
    with RewardRunner(terms, timeout_s=1.0, num_workers=1, max_error_rate=1.0) as runner:
        runner.score(["q"], [fenced("x = 1")], {"tests": [["assert x == 1"]]})  # warm
        start = time.monotonic()
        res = runner.score(["q"] * 2, [fenced("import time\ntime.sleep(1000)")] * 2, {"tests": [["pass"]] * 2})
        assert time.monotonic() - start < 2 * 1.0 + 2.5  # the chunk, then each sample on its share
    assert [e.kind for e in res.errors] == ["timeout", "timeout"]
    deadline = time.monotonic() + 3
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []
