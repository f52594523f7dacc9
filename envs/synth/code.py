"""Code interpreter: answer a question about a CSV file by running Python in the sandbox.

Database: ``<name>_sales.csv`` with 12-30 rows (item, category, qty, price). Tools: ``python(code)`` runs
the code with the file in its working directory (``rewards.sandbox.run_python``: isolated, no
network, CPU/memory/wall limits) and returns stdout (and the error line); ``head`` shows the
first rows. Answers are computed by the generator in-process; the reference solution is a script
that prints the same value, then submits it.

Levels: 1 total quantity; 2 total quantity of a category; 3 revenue (qty * price) of a category;
4 the item with the largest revenue in a category; 5 the category with the highest mean price
among rows with qty >= a threshold.

Validation runs the reference through the environment with :func:`trusted_executor` (our own
generated script, run in-process), so 2,000 environments synthesize in seconds; episodes run the
policy's code through the sandbox (:func:`sandbox_executor`, the default).
"""
from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable
from typing import Any

from envs.base import ToolEnv, ToolSpec, params
from envs.registry import FAMILIES, Task
from envs.synth.common import SUBMIT_ANSWER, answer_of, answers_match, unique_words

Executor = Callable[[str, dict[str, str], float], str]
"""``executor(code, files, timeout_s) -> output text`` (stdout, then ``Error: ...`` on failure)."""
CATS = ("tools", "toys", "books", "food", "garden")


def sandbox_executor(code: str, files: dict[str, str], timeout_s: float) -> str:
    """Run ``code`` in the sandbox (``rewards.sandbox``); stdout plus the error line if it failed."""
    from rewards.sandbox import SandboxLimits, run_python

    limits = SandboxLimits(cpu_s=timeout_s, test_timeout_s=timeout_s, wall_s=timeout_s + 1.0)
    r = run_python("main.py", {**files, "main.py": code}, limits)
    out = r.stdout[-1500:]
    return out + (f"\nError: {r.reason}" if r.reason else "") if (out or r.reason) else "(no output)"


def trusted_executor(code: str, files: dict[str, str], timeout_s: float) -> str:
    """Run *trusted* generated code in-process (``open`` served from ``files``). Validation only."""
    buf = io.StringIO()

    def fake_open(name: str, *a: Any, **k: Any) -> io.StringIO:
        return io.StringIO(files[name])

    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, "<reference>", "exec"), {"open": fake_open, "__name__": "__main__"})  # noqa: S102
    except Exception as e:  # noqa: BLE001
        return buf.getvalue() + f"\nError: {type(e).__name__}: {e}"
    return buf.getvalue()


class CodeEnv(ToolEnv):
    family = "code"
    executor: Executor = staticmethod(sandbox_executor)
    system_prompt = ("You have a Python interpreter and a data file. Write code to compute the answer, "
                     "run it with the python tool, then call submit_result with the answer.")

    def tools(self) -> dict[str, tuple[ToolSpec, Any]]:
        name = self.task.data["file"]
        files = {name: self.task.data["csv"]}
        timeout = self.timeout_s

        def python(code: str) -> str:
            return self.executor(code, files, timeout)

        def head(rows: int = 5) -> str:
            return "\n".join(files[name].splitlines()[: max(1, min(rows, 10)) + 1])

        return {
            # The sandbox has its own wall limit; the thread timeout leaves it time to report.
            "python": (ToolSpec("python", "Run Python 3 code (stdlib only; the data file is in the working "
                                "directory). Returns what it prints.", params(["code"], code="string")), python),
            "head": (ToolSpec("head", "The first rows of the data file.", params([], rows="integer")), head),
            "submit_result": (SUBMIT_ANSWER, None),
        }

    def _run(self, call):  # the python tool gets the sandbox's wall limit plus a margin
        if call.name == "python" and not call.error:
            saved, self.timeout_s = self.timeout_s, self.timeout_s + 5.0
            try:
                return super()._run(call)
            finally:
                self.timeout_s = saved
        return super()._run(call)

    def verify(self, answer: dict[str, Any]) -> float:
        return float(answers_match(self.task.expected["answer"], answer_of(answer), tol=0.011))




class CodeFamily:
    name = "code"
    min_level = 1
    max_level = 5
    env_class = CodeEnv

    def build_database(self, rng: random.Random) -> dict[str, Any]:
        n = rng.randint(12, 30)
        items = unique_words(rng, n)
        rows = [(items[i], rng.choice(CATS), rng.randint(1, 40), round(rng.uniform(1, 90), 2)) for i in range(n)]
        csv = "item,category,qty,price\n" + "".join(f"{a},{b},{c},{d:.2f}\n" for a, b, c, d in rows)
        return {"csv": csv, "file": f"{unique_words(rng, 1)[0].lower()}_sales.csv"}

    def compose(self, data: dict[str, Any], rng: random.Random, level: int) -> Task:
        rows = [ln.split(",") for ln in data["csv"].strip().splitlines()[1:]]
        rows = [(a, b, int(c), float(d)) for a, b, c, d in rows]
        cats = sorted({r[1] for r in rows})
        cat = rng.choice(cats)
        fname = data["file"]
        read = f"import csv\nrows = list(csv.DictReader(open({fname!r})))\n"
        if level == 1:
            q, ans = "What is the total qty over all rows?", sum(r[2] for r in rows)
            code = read + "print(sum(int(r['qty']) for r in rows))\n"
        elif level == 2:
            q, ans = f"What is the total qty of category {cat}?", sum(r[2] for r in rows if r[1] == cat)
            code = read + f"print(sum(int(r['qty']) for r in rows if r['category'] == {cat!r}))\n"
        elif level == 3:
            q = f"What is the total revenue (qty times price) of category {cat}, rounded to 2 decimals?"
            ans = round(sum(r[2] * r[3] for r in rows if r[1] == cat), 2)
            code = read + (f"print(round(sum(int(r['qty']) * float(r['price']) for r in rows "
                            f"if r['category'] == {cat!r}), 2))\n")
        elif level == 4:
            q = f"Which item of category {cat} has the largest revenue (qty times price)?"
            best = max((r for r in rows if r[1] == cat), key=lambda r: (r[2] * r[3], r[0]))
            ans = best[0]
            code = read + (f"sel = [r for r in rows if r['category'] == {cat!r}]\n"
                            "print(max(sel, key=lambda r: (int(r['qty']) * float(r['price']), r['item']))['item'])\n")
        else:
            t = sorted(r[2] for r in rows)[len(rows) // 2]
            q = f"Among rows with qty >= {t}, which category has the highest mean price?"
            groups: dict[str, list[float]] = {}
            for r in rows:
                if r[2] >= t:
                    groups.setdefault(r[1], []).append(r[3])
            ans = max(groups, key=lambda c: (sum(groups[c]) / len(groups[c]), c))
            code = read + (f"g = {{}}\nfor r in rows:\n    if int(r['qty']) >= {t}:\n"
                            "        g.setdefault(r['category'], []).append(float(r['price']))\n"
                            "print(max(g, key=lambda c: (sum(g[c]) / len(g[c]), c)))\n")
        calls = [{"name": "python", "arguments": {"code": code}},
                 {"name": "submit_result", "arguments": {"answer": str(ans)}}]
        tools = ["python"] + (["head"] if level >= 3 else [])
        return Task("", self.name, level, f"The file {fname} has columns item, category, qty, price. {q} "
                    "Answer with the value only.", data, tools + ["submit_result"], calls, {"answer": str(ans)})

    def trivial_answers(self, task: Task) -> list[dict[str, Any]]:
        return [{}, {"answer": ""}, {"answer": "0"}, {"answer": "unknown"}]


FAMILIES.register("code")(CodeFamily())
