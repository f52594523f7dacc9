"""Fuzz the inputs a user or a policy controls; count what gets through.

Sends a few hundred generated bad inputs, deterministic in ``--seed``, through the real code:

* ``configs``: overrides with wrong types, out-of-range values, unknown keys and groups, broken
  interpolations, through ``rl.submit.compose`` + ``rl.preflight.check_inputs``; plus a few through
  the real ``python -m rl.train`` entry point (exit status 2, one line, no ``outputs/``).
* ``data files``: random bytes, truncated / non-object JSON, NUL bytes, bad UTF-8, empty files,
  through ``check_inputs`` and then ``rl.data.load_prompts`` for those it accepts.
* ``model turns``: policy text built from tool-call markup, broken JSON, lone-surrogate escapes,
  deep nesting, huge numbers and repeated markers, through ``rollout.agent.run_agent`` (parse,
  environment step, tokenizer) with a scripted engine.
* ``reward values``: what a reward might return (numpy values, huge ints, raising ``__float__``,
  wrong lengths, generators, unpicklable objects) through ``rewards.runner.RewardRunner`` in
  thread and process isolation.

Counts per family: inputs, **escaped** (an exception other than the component's documented
one-line error), **tracebacks** (``Traceback (most recent call last)`` printed on stdout/stderr,
worker processes included: file descriptors 1 and 2 are captured), **files left** (new files in
the working directory or sandbox directories in the temp dir). All three must be 0.

Run: python -m benchmarks.fuzz_inputs [--seed 0] [--n 300] [--entry-point 6]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
TRACEBACK = "Traceback (most recent call last)"
ESCAPES: list[str] = []
"""What escaped, one line each (printed after the family's output capture ends)."""


def escape(what: str, err: BaseException) -> int:
    ESCAPES.append(f"escaped: {what}: {type(err).__name__}: {str(err)[:300]}")
    return 1


@contextlib.contextmanager
def captured_fds() -> Iterator[Callable[[], str]]:
    """Capture file descriptors 1 and 2 (this process and its children) into a temp file."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        text: list[str] = []
        try:
            yield lambda: "".join(text)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            f.seek(0)
            text.append(f.read().decode("utf-8", "replace"))


# ---- generators ---------------------------------------------------------------------------------
KEYS = ["algorithm.group_size", "rollout.prompts_per_step", "rewards.timeout_s", "rewards.num_workers",
        "rewards.isolation", "rewards.max_error_rate", "seed", "budget.max_steps", "algorithm.clip_eps",
        "rollout.max_new_tokens", "deepspeed.num_processes", "cluster.nodes", "data.test_size", "device",
        "model.preset", "env.max_turns", "logger.mode", "algorithm.mini_batch_size"]
VALUES = ["-1", "0", "abc", "1e400", "nan", "inf", "[]", "{}", "null", "''", "\U0001F642", "x" * 300, "${oops}",
          "${algorithm.group_size}", "-1e-9", "2.5", "true", "[1,2", "'unterminated", "1" * 40]


def gen_configs(rng: random.Random, n: int, tmp: Path) -> list[list[str]]:
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.6:
            ov = [f"{rng.choice(KEYS)}={rng.choice(VALUES)}"]
        elif kind < 0.7:
            ov = [f"{rng.choice(KEYS)}.nope={rng.choice(VALUES)}", f"+no_such_group{rng.randint(0, 9)}=x"]
        elif kind < 0.8:
            ov = [f"{rng.choice(['model', 'data', 'rewards', 'env', 'cluster', 'budget'])}=no_such_{rng.randint(0, 99)}"]
        elif kind < 0.9:
            ov = [f"data.source={tmp}/missing_{rng.randint(0, 99)}.jsonl", f"model.path=/no/such/{rng.randint(0, 99)}"]
        else:
            ov = [f"resume={tmp}/no_run_{rng.randint(0, 99)}", "+experiment=" + rng.choice(["math", "nope", ""])]
        out.append(ov)
    return out


def gen_data_files(rng: random.Random, n: int, d: Path) -> list[Path]:
    good = '{"prompt": "What is 1 + 1?", "answer": "2"}\n'
    makers: list[Callable[[], bytes]] = [
        lambda: b"",
        lambda: b"\n" * rng.randint(1, 5),
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 400))),
        lambda: (good * rng.randint(1, 3) + good[: rng.randint(1, len(good) - 2)]).encode(),
        lambda: (good + "[1, 2, 3]\n").encode(),
        lambda: (good + '"just a string"\n').encode(),
        lambda: (good + '{"prompt": "a\x00b"}\n').encode(),
        lambda: '{"prompt": "caf\xe9"}\n'.encode("latin-1"),
        lambda: b"\xef\xbb\xbf" + good.encode(),
        lambda: ("[" * rng.randint(1, 5000)).encode(),
        lambda: ('{"prompt": ' + "[" * 3000 + "]" * 3000 + "}\n").encode(),
        lambda: (good + '{"prompt": 1, "answer": {"x": [1]}}\n').encode(),
        lambda: b"PAR1" + bytes(rng.getrandbits(8) for _ in range(64)),
        lambda: (good + "{" + '"a": 1, ' * 10 + "\n").encode(),
    ]
    out = []
    for i in range(n):
        path = d / f"f{i}{rng.choice(['.jsonl', '.json', '.csv', '.parquet', '.jsonl', '.txt'])}"
        path.write_bytes(rng.choice(makers)())
        out.append(path)
    return out


def gen_turns(rng: random.Random, n: int) -> list[str]:
    parts = ["<tool_call>", "</tool_call>", "<think>", "</think>", '{"name": "lookup", "arguments": {}}',
             '{"name": ', '"arguments": ', "{", "}", "[", "]", '"\\udcff"', '{"\\ud800": 1}', "\\u0000", "1e999",
             "9" * 500, '"' + "x" * 3000 + '"', "null", '{"name": 5}', '{"name": "x", "arguments": "{bad"}',
             "\U0001F600", "\x00", "\ud800", "<|end|>", "<|tool|>", "<|assistant|>"]
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.1:
            out.append(rng.choice(["<tool_call>", "</tool_call>", "<tool_call>x"]) * rng.randint(1000, 20000))
        elif kind < 0.2:
            depth = rng.randint(100, 100000)
            out.append('<tool_call>{"name": "lookup", "arguments": ' + "[" * depth + "]" * depth + "}</tool_call>")
        else:
            out.append("".join(rng.choice(parts) for _ in range(rng.randint(1, 40))))
    return out


class _BadFloat:
    def __float__(self) -> float:
        raise RuntimeError("no")


class _BadLen(list):
    def __len__(self) -> int:
        raise RuntimeError("no len")


class _BadIter(list):
    def __iter__(self):
        raise RuntimeError("no iter")


def gen_reward_values(rng: random.Random, n: int) -> list[Any]:
    import numpy as np

    scalars = [10 ** 400, -(10 ** 400), float("nan"), float("inf"), None, "1.0", "x", b"1", [1.0], {"a": 1},
               np.float32(0.5), np.array(1.0), np.array([1.0]), _BadFloat(), True, 1j, object(), lambda: 1]
    wholes: list[Callable[[int], Any]] = [
        lambda k: 1.0, lambda k: None, lambda k: "1" * k, lambda k: {i: 1.0 for i in range(k)},
        lambda k: np.array(1.0), lambda k: np.ones(k), lambda k: np.ones(k + 1), lambda k: [1.0] * (k + 1),
        lambda k: (1.0 for _ in range(k)), lambda k: _BadLen([1.0] * k), lambda k: _BadIter([1.0] * k),
        lambda k: [rng.choice(scalars) for _ in range(k)],
    ]
    return [rng.choice(wholes) for _ in range(n)]


# ---- runners ------------------------------------------------------------------------------------
def run_configs(cases: list[list[str]]) -> int:
    from rl.preflight import PreflightError, check_inputs
    from rl.submit import SubmitError, compose

    escaped = 0
    for ov in cases:
        try:
            check_inputs(compose(ov))
        except (SubmitError, PreflightError) as err:
            escaped += "\n" in str(err)  # a documented error must be one line
        except Exception as err:  # noqa: BLE001 - what this benchmark counts
            escaped += escape(f"config {ov}", err)
    return escaped


def rejected(ov: list[str]) -> bool:
    """Whether the in-process checks refuse ``ov`` (only such cases go to the real entry point: a
    good config would start a real run)."""
    from rl.preflight import PreflightError, check_inputs
    from rl.submit import SubmitError, compose

    try:
        check_inputs(compose(ov))
    except (SubmitError, PreflightError):
        return True
    except Exception:  # noqa: BLE001 - counted as escaped by the in-process family
        return True
    return False


def run_entry_point(cases: list[list[str]], cwd: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    escaped = 0
    for ov in cases:
        res = subprocess.run([sys.executable, "-m", "rl.train", "logger=none", *ov], capture_output=True, text=True,
                             env=env, cwd=cwd, timeout=120, check=False)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "real_accelerator" not in ln]
        if res.returncode not in (1, 2) or len(lines) != 1:
            escaped += escape(f"entry point {ov}", RuntimeError(f"exit {res.returncode}, stderr: {lines[-3:]}"))
        print(res.stdout + res.stderr)  # into the captured output (tracebacks are counted there)
    return escaped


def run_data_files(paths: list[Path]) -> int:
    from rl.config import TrainConfig
    from rl.data import DataError, load_prompts
    from rl.preflight import PreflightError, check_inputs

    escaped = 0
    for p in paths:
        cfg = TrainConfig()
        cfg.data.source, cfg.data.test_split = str(p), None
        try:
            check_inputs(cfg)
            load_prompts(cfg.data)
        except (DataError, PreflightError) as err:
            escaped += "\n" in str(err)
        except Exception as err:  # noqa: BLE001
            escaped += escape(f"data file {p.name} {p.read_bytes()[:60]!r}", err)
    return escaped


def run_turns(turns: list[str]) -> int:
    from envs.synth.pipeline import synthesize
    from rl.policy.tokenizer import load_tokenizer
    from rollout.agent import AgentConfig, run_agent
    from rollout.sampling import SamplingParams
    from rollout.scripted import ScriptedEngine

    tok = load_tokenizer()
    tasks, _ = synthesize(4, seed=0, families=["lookup"])
    escaped = 0
    for i, text in enumerate(turns):
        text = text.encode("utf-8", "replace").decode("utf-8")  # what a tokenizer's decode can emit
        engine = ScriptedEngine(tok, lambda user, turn, results, text=text: text, max_seq_len=1 << 20)
        try:
            run_agent(engine, [tasks[i % len(tasks)]], SamplingParams(max_new_tokens=1 << 20), AgentConfig(max_turns=2))
        except Exception as err:  # noqa: BLE001
            escaped += escape(f"turn {text[:60]!r}", err)
    return escaped


def fuzz_reward(prompts, completions, **fields):
    """A reward returning the fuzz case named by the completion (for process isolation)."""
    case = int(completions[0])
    return gen_reward_values(random.Random(case), 1)[0](len(completions))


def run_rewards(cases: list[Any], seed: int) -> int:
    from rewards.runner import RewardRunner, RewardTerm

    escaped = 0
    thread = RewardRunner([RewardTerm("fuzz", lambda p, c, **f: cases[int(c[0])](len(c)))], timeout_s=5,
                          num_workers=1, isolation="thread", max_error_rate=1.0)
    proc = RewardRunner({"fuzz": {"_target_": "benchmarks.fuzz_inputs:fuzz_reward"}}, timeout_s=10, num_workers=1,
                        max_error_rate=1.0)
    try:
        for i in range(len(cases)):
            runs = [(thread, str(i))] + ([(proc, str(seed * 100003 + i))] if i % 4 == 0 else [])
            for runner, name in runs:
                try:
                    res = runner.score(["q"] * 3, [name] * 3)
                    assert len(res.totals) == 3 and all(isinstance(t, float) for t in res.totals)
                except Exception as err:  # noqa: BLE001
                    escaped += escape(f"reward case {i}", err)
    finally:
        thread.close()
        proc.close()
    return escaped


# ---- main ---------------------------------------------------------------------------------------
def _snapshot(cwd: Path) -> set[str]:
    """Files under the working directory and this run's private temp dir (sandboxes go there),
    except torch's compile cache (``torchinductor_*``, kept in the temp dir by design)."""
    tmp = {str(p) for p in Path(tempfile.gettempdir()).rglob("*") if "torchinductor_" not in str(p)}
    return {str(p) for p in cwd.rglob("*")} | tmp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=300, help="inputs in all (split over the four families)")
    ap.add_argument("--entry-point", type=int, default=6, help="config cases also run through `python -m rl.train`")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    per = max(1, a.n // 4)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    rows = []
    with tempfile.TemporaryDirectory(prefix="fuzz_inputs_") as root:
        inputs, work, tmp = Path(root, "inputs"), Path(root, "work"), Path(root, "tmp")
        for d in (inputs, work, tmp):
            d.mkdir()
        tempfile.tempdir = str(tmp)  # this run's temp files (sandbox dirs) apart from other processes'
        os.environ["TMPDIR"] = str(tmp)
        old_cwd = os.getcwd()
        os.chdir(work)
        try:
            families = [
                ("configs", lambda: gen_configs(rng, per, inputs), run_configs),
                ("configs via rl.train", lambda: [c for c in gen_configs(rng, 10 * a.entry_point, inputs)
                                                  if rejected(c)][:a.entry_point],
                 lambda c: run_entry_point(c, work)),
                ("data files", lambda: gen_data_files(rng, per, inputs), run_data_files),
                ("model turns", lambda: gen_turns(rng, per), run_turns),
                ("reward values", lambda: gen_reward_values(random.Random(a.seed), per),
                 lambda c: run_rewards(c, a.seed)),
            ]
            for name, make, run in families:
                cases = make()
                before = _snapshot(work)
                start = time.monotonic()
                with captured_fds() as out:
                    escaped = run(cases)
                tracebacks = out().count(TRACEBACK)
                if tracebacks:
                    first = out()[out().index(TRACEBACK):][:1500]
                    print(f"{name}: first traceback:\n{first}", file=sys.stderr)
                left = sorted(_snapshot(work) - before)
                for line in ESCAPES:
                    print(f"{name}: {line}", file=sys.stderr)
                ESCAPES.clear()
                rows.append((name, len(cases), escaped, tracebacks, len(left), time.monotonic() - start))
                for p in left[:5]:
                    print(f"{name}: left behind: {p}", file=sys.stderr)
        finally:
            os.chdir(old_cwd)
    print(f"\n{'family':24s} {'inputs':>7s} {'escaped':>8s} {'tracebacks':>11s} {'files left':>11s} {'seconds':>8s}")
    for name, n, e, t, f, s in rows:
        print(f"{name:24s} {n:7d} {e:8d} {t:11d} {f:11d} {s:8.1f}")
    tot = [sum(r[i] for r in rows) for i in (1, 2, 3, 4)]
    print(f"{'total':24s} {tot[0]:7d} {tot[1]:8d} {tot[2]:11d} {tot[3]:11d}")
    print(f"\nescaped / tracebacks / files left: {tot[1]} / {tot[2]} / {tot[3]}")
    return 0 if tot[1] == tot[2] == tot[3] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
