"""RewardRunner: weighted totals, and raising / hanging / NaN / wrong-length / dying rewards."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from rewards.runner import RewardError, RewardRunner, RewardTerm

HELPERS = "dsa_rl_test_rewards"
BOTH = pytest.mark.parametrize("isolation", ["process", "thread"])


@pytest.fixture(autouse=True)
def helpers_on_path(monkeypatch):
    """Make tests/rewards/dsa_rl_test_rewards.py importable here and in worker processes."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def term(fn: str, weight: float = 1.0, **kwargs) -> dict:
    return {"_target_": f"{HELPERS}.{fn}", "weight": weight, "kwargs": kwargs}


@BOTH
def test_weighted_total_and_per_term_values(isolation):
    terms = {"len": term("length", 0.5), "fmt": {"name": "format", "weight": 2.0, "kwargs": {"answer_style": "any"}}}
    with RewardRunner(terms, timeout_s=10, num_workers=2, isolation=isolation) as runner:
        res = runner.score(["q", "q", "q"], ["<think>r</think>ab", "abcd", "<think>r</think>"])
    # len: 18, 4, 16 (characters); fmt: 1, 0, 0 (no answer) -> totals 0.5*len + 2*fmt.
    assert res.per_term == {"len": [18.0, 4.0, 16.0], "fmt": [1.0, 0.0, 0.0]}
    assert res.totals == [11.0, 2.0, 8.0]
    assert res.errors == [] and res.error_rate == 0.0
    m = res.metrics()
    assert m["reward/mean"] == pytest.approx(7.0) and m["reward/len/mean"] == pytest.approx(38 / 3)
    assert m["reward/errors"] == 0.0


@BOTH
def test_raising_reward_reports_the_offending_sample(isolation):
    with RewardRunner({"r": term("raise_on_bad"), "len": term("length")}, timeout_s=10, num_workers=2,
                      isolation=isolation) as runner:
        res = runner.score(["q"] * 4, ["a", "bad", "c", "d"])
    assert res.per_term["r"] == [1.0, 0.0, 1.0, 1.0]          # the chunk was retried sample by sample
    assert res.ok["r"] == [True, False, True, True]
    assert res.totals == [2.0, 3.0, 2.0, 2.0]                  # the failed term contributes 0
    (err,) = res.errors
    assert (err.term, err.index, err.kind, err.completion) == ("r", 1, "exception", "bad")
    assert "ValueError" in err.reason and "cannot score 'bad'" in err.reason
    assert res.error_rate == pytest.approx(1 / 8)
    assert res.metrics()["reward/r/errors"] == 1.0


@BOTH
def test_nan_none_and_malformed_results(isolation):
    terms = {"nan": term("nan_on_bad"), "extra": term("extra_value"), "scalar": term("scalar")}
    with RewardRunner(terms, timeout_s=10, num_workers=1, isolation=isolation, max_error_rate=1.0) as runner:
        res = runner.score(["q"] * 3, ["ok", "bad", "none"])
    by = {(e.term, e.index): e for e in res.errors}
    assert by[("nan", 1)].kind == "bad_value" and "nan" in by[("nan", 1)].reason
    assert by[("nan", 2)].kind == "bad_value" and "None" in by[("nan", 2)].reason
    assert ("nan", 0) not in by and res.per_term["nan"][0] == 1.0
    assert all(by[("extra", i)].kind == "bad_output" and "2 values for 1 samples" in by[("extra", i)].reason
               for i in range(3))
    assert all(by[("scalar", i)].kind == "bad_output" and "float" in by[("scalar", i)].reason for i in range(3))
    assert res.num_errors == 2 + 3 + 3


def test_hanging_reward_in_a_process_is_killed_and_replaced():
    runner = RewardRunner({"hang": term("hang_on_bad"), "len": term("length")}, timeout_s=0.5, num_workers=2)
    runner.score(["q"], ["warm"])  # workers started
    old = [w.proc for w in runner._procs["hang"].workers]
    start = time.monotonic()
    res = runner.score(["q"] * 4, ["a", "b", "bad", "d"])
    elapsed = time.monotonic() - start
    assert elapsed < 2 * 0.5 + 1.5, elapsed                    # two deadlines, not one per sample
    assert [e.index for e in res.errors if e.kind == "timeout"] == [2]  # only "bad", not its chunk
    assert res.per_term["hang"] == [1.0, 1.0, 0.0, 1.0] and res.per_term["len"] == [1.0, 1.0, 3.0, 1.0]
    assert all(p.poll() is not None for p in old[1:])          # the hung worker was killed
    assert len(runner._procs["hang"].workers) == 2
    res = runner.score(["q"] * 2, ["x", "y"])                   # and the next step is clean
    assert res.errors == [] and res.totals == [2.0, 2.0]
    runner.close()
    assert all(w.proc.poll() is not None for b in runner._procs.values() for w in b.workers)


def test_sleep_forever_does_not_stall_a_step_past_its_timeout_thread_mode():
    runner = RewardRunner({"hang": term("sleep_forever"), "len": term("length")}, timeout_s=0.3, num_workers=2,
                          isolation="thread", max_hung=4, max_error_rate=1.0)
    before = threading.active_count()
    for step in range(2):
        start = time.monotonic()
        res = runner.score(["q"] * 4, ["a", "bb", "c", "d"])
        assert time.monotonic() - start < 0.3 + 1.0  # the deadline, plus slack for a loaded machine
        assert [e.kind for e in res.errors] == ["timeout"] * 4 and res.per_term["len"] == [1, 2, 1, 1]
    # Two hung threads per step, capped at max_hung=4: the third step refuses instead of leaking more.
    res = runner.score(["q"] * 4, ["a", "bb", "c", "d"])
    assert [e.term for e in res.errors] == ["hang"] * 4
    assert all("still running past their timeout" in e.reason for e in res.errors)
    assert res.per_term["len"] == [1, 2, 1, 1]
    assert threading.active_count() - before <= 4


def test_sleep_forever_in_processes_leaks_nothing():
    runner = RewardRunner({"hang": term("sleep_forever")}, timeout_s=0.3, num_workers=2, max_error_rate=1.0)
    seen = set()
    for _ in range(3):
        start = time.monotonic()
        res = runner.score(["q"] * 2, ["a", "b"])
        assert time.monotonic() - start < 2 * 0.3 + 1.5  # the chunk's budget, then the per-sample one
        assert [e.kind for e in res.errors] == ["timeout", "timeout"]
        seen |= {w.proc for w in runner._procs["hang"].workers}
    alive = [p for p in seen if p.poll() is None]
    assert len(alive) == 2                                      # only the current two workers
    runner.close()
    assert all(p.poll() is not None for p in seen)


@BOTH
def test_async_rewards(isolation):
    with RewardRunner({"a": term("async_len"), "h": term("async_hang")}, timeout_s=0.4, num_workers=2,
                      isolation=isolation, max_error_rate=1.0) as runner:
        start = time.monotonic()
        res = runner.score(["q"] * 2, ["ab", "c"])
        assert time.monotonic() - start < 0.4 + 1.5
    assert res.per_term["a"] == [2.0, 1.0]
    assert [e.term for e in res.errors] == ["h", "h"] and all(e.kind == "timeout" for e in res.errors)
    if isolation == "thread":  # an async call is cancelled at the deadline: no thread stays behind
        time.sleep(0.2)
        assert not [t for t in runner._threads["h"].hung if t.is_alive()]


def test_a_reward_that_kills_its_worker():
    with RewardRunner({"die": term("die"), "len": term("length")}, timeout_s=5, num_workers=1,
                      max_error_rate=1.0) as runner:
        res = runner.score(["q"], ["a"])
        assert res.errors[0].kind == "worker" and "died" in res.errors[0].reason
        assert res.per_term["len"] == [1.0] or res.ok["len"] == [False]


def test_on_error_raise_and_error_rate_threshold():
    with RewardRunner({"r": term("raise_on_bad")}, timeout_s=5, num_workers=1, isolation="thread",
                      on_error="raise") as runner:
        with pytest.raises(RewardError, match=r"term 'r', sample 1: exception: ValueError") as e:
            runner.score(["q", "q"], ["a", "bad"])
        assert e.value.result is not None and e.value.result.per_term["r"] == [1.0, 0.0]
    counting = RewardRunner({"r": term("raise_on_bad")}, timeout_s=5, num_workers=1, isolation="thread",
                            max_error_rate=0.25)
    assert counting.score(["q"] * 4, ["a", "bad", "c", "d"]).num_errors == 1   # 1/4 = 0.25: not above
    with pytest.raises(RewardError, match="error rate 0.50 exceeds max_error_rate 0.25"):
        counting.score(["q"] * 2, ["a", "bad"])


def test_callables_that_cannot_be_reimported_run_in_threads():
    seen = []

    def closure(prompts, completions, **fields):
        seen.append(threading.current_thread().name)
        return [0.5] * len(completions)

    terms = [RewardTerm("c", closure, weight=2.0), RewardTerm("l", lambda p, c, **f: [1.0] * len(c))]
    with RewardRunner(terms, timeout_s=5, num_workers=2) as runner:  # isolation="process" by default
        assert runner.score(["q"], ["a"]).totals == [2.0]
    assert seen and seen[0].startswith("reward-")             # off the calling thread


def test_config_errors_fail_at_construction_or_call():
    with pytest.raises(ValueError, match="reward term 'x'.*unknown reward 'nope'"):
        RewardRunner({"x": {"name": "nope"}})
    with pytest.raises(ValueError, match="unknown keys"):
        RewardRunner({"x": {"name": "format", "wieght": 1.0}})
    with pytest.raises(ValueError, match="on_error"):
        RewardRunner({}, on_error="ignore")
    runner = RewardRunner({"len": {"name": "length_penalty", "kwargs": {"target": 5}}}, isolation="thread")
    with pytest.raises(ValueError, match="clash"):
        runner.score(["q"], ["a"], {"target": [1]})
    with pytest.raises(ValueError, match="field lengths"):
        runner.score(["q"], ["a"], {"answer": [1, 2]})
    assert runner.score([], []).totals == []


def test_fields_reach_the_rewards_and_submit_returns_a_future():
    terms = {"m": {"name": "math_correct"}, "env": {"name": "env_verifier", "weight": 0.5}}
    with RewardRunner(terms, timeout_s=10, num_workers=2) as runner:
        future = runner.submit(["q", "q"], ["<think>r</think>\\boxed{4}", "<think>r</think>\\boxed{5}"],
                               {"answer": ["4", "4"], "env_reward": [1.0, 0.0], "finish_reason": ["stop", "length"]})
        res = future.result(timeout=30)
    assert res.totals == [1.5, 0.0]


@BOTH
def test_odd_return_values_score_zero_with_a_reason(isolation):
    """Values that used to escape as exceptions: too large for a float, numpy, a raising __float__,
    not a number, failing to unpickle in the trainer."""
    runner = RewardRunner({"odd": term("odd_values"), "np": term("numpy_scalar")}, timeout_s=20, num_workers=1,
                          isolation=isolation, max_error_rate=1.0)
    names = ["huge", "np0d", "badfloat", "lambda", "nounpickle", "ok"]
    res = runner.score(["q"] * len(names), names)
    runner.close()
    assert res.per_term["odd"] == [0.0, 0.5, 0.0, 0.0, 1.0, 1.0]
    odd = {names[e.index]: e for e in res.errors if e.term == "odd"}
    assert sorted(odd) == ["badfloat", "huge", "lambda"] and all(e.kind == "bad_value" for e in odd.values())
    assert "OverflowError" in odd["huge"].reason and "no float for you" in odd["badfloat"].reason
    np_errors = [e for e in res.errors if e.term == "np"]
    assert len(np_errors) == len(names) and all(e.kind == "bad_output" for e in np_errors), np_errors


def test_errors_are_shown_on_the_console_and_in_a_file(tmp_path, capfd):
    log = tmp_path / "reward_errors.jsonl"
    runner = RewardRunner({"r": term("raise_on_bad")}, timeout_s=20, num_workers=1, isolation="thread",
                          max_error_rate=1.0, error_log=str(log))
    runner.score(["the prompt", "p2"], ["fine", "bad"])
    runner.score(["p"], ["fine"])  # no errors: no line
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("reward errors")]
    assert len(lines) == 1 and "1 failed" in lines[0] and "cannot score 'bad'" in lines[0] and str(log) in lines[0]
    import json
    (rec,) = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert rec["term"] == "r" and rec["index"] == 1 and rec["prompt"] == "p2" and rec["completion"] == "bad"
    assert rec["kind"] == "exception" and "cannot score 'bad'" in rec["reason"]


def test_a_hanging_sample_zeroes_only_itself():
    """One worker, one chunk of four with a hanging sample: the three healthy ones are scored."""
    runner = RewardRunner({"hang": term("hang_on_bad")}, timeout_s=2.0, num_workers=1, max_error_rate=1.0)
    runner.score(["q"], ["warm"])
    start = time.monotonic()
    res = runner.score(["q"] * 4, ["a", "bad", "c", "d"])
    elapsed = time.monotonic() - start
    runner.close()
    assert res.per_term["hang"] == [1.0, 0.0, 1.0, 1.0], res.errors
    assert [(e.index, e.kind) for e in res.errors] == [(1, "timeout")]
    assert elapsed < 2 * 2.0 + 2.0, elapsed


def test_reward_workers_have_a_memory_cap():
    runner = RewardRunner({"hog": term("hog_memory")}, timeout_s=20, num_workers=1, max_error_rate=1.0, memory_mb=512)
    res = runner.score(["q"], ["x"])
    runner.close()
    assert res.per_term["hog"] == [0.0] and "MemoryError" in res.errors[0].reason, res.errors


def test_a_reward_worker_killed_mid_batch(capfd):
    """SIGKILL of a worker in the middle of its chunk: a line says so, its samples are re-scored by
    a fresh worker, nothing is lost, scored twice or left running."""
    import os
    import signal

    runner = RewardRunner({"slow": term("slow_one")}, timeout_s=10, num_workers=2, max_error_rate=1.0)
    runner.score(["q"], ["warm"])
    victim = runner._procs["slow"].workers[0].proc
    killer = threading.Timer(0.4, os.kill, (victim.pid, signal.SIGKILL))
    killer.start()
    res = runner.score(["q"] * 4, ["a", "b", "c", "d"])
    killer.join()
    assert victim.poll() == -signal.SIGKILL
    assert res.errors == [] and res.per_term["slow"] == [1.0] * 4
    err = capfd.readouterr().err
    assert f"reward worker {victim.pid} (term slow) died during a call" in err
    runner.close()
    assert all(w.proc.poll() is not None for w in runner._procs["slow"].workers)
