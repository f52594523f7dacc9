"""envs.synth.pipeline and envs.synthesize: validated, distinct, deterministic, summarised."""
from __future__ import annotations

import random

import datasets
import pytest

from envs.base import ToolCall
from envs.registry import Task, family_names, get_family, make_env
from envs.synth.pipeline import filter_solvable, summary_table, synthesize, validate
from envs.synthesize import main


@pytest.fixture(scope="module")
def synth200():
    return synthesize(200, seed=0)


def test_all_families_registered():
    assert set(family_names()) >= {"trip", "lookup", "code", "search"}


def test_synthesize_validated_distinct_summary(synth200):
    tasks, stats = synth200
    assert len(tasks) == 200
    assert len({(t.family, t.prompt) for t in tasks}) == 200  # no duplicates
    assert len({t.env_id for t in tasks}) == 200
    assert all(validate(t) is None for t in tasks)
    for f in ("trip", "lookup", "code", "search"):
        for d in range(1, 6):
            assert stats.counts[(f, d)] == 10
    table = summary_table(stats)
    assert "trip" in table and "d5" in table and table.splitlines()[-2].split()[-1] == "200"


def test_deterministic_by_seed(synth200):
    again, _ = synthesize(20, seed=0)
    assert [t.to_row() for t in again] == [t.to_row() for t in synth200[0][:20]]
    other, _ = synthesize(20, seed=1)
    assert [t.prompt for t in other] != [t.prompt for t in again]


def test_difficulty_rises_step_by_step():
    """Levels of one database extend each other: more reference calls (hops/constraints)."""
    for name in ("trip", "lookup", "search"):
        fam = get_family(name)
        data = fam.build_database(random.Random("db"))
        lens = [len(fam.compose(data, random.Random("t"), lv).reference) for lv in range(1, 6)]
        assert lens == sorted(lens) and lens[-1] > lens[0], (name, lens)
    fam = get_family("trip")
    data = fam.build_database(random.Random("db"))
    t1, t5 = (fam.compose(data, random.Random("t"), lv) for lv in (1, 5))
    assert t5.expected["destinations"][0] == t1.expected["destinations"][0]  # level 5 extends level 1
    assert len(t5.expected["visit"]) == 2 and len(t5.tools) > len(t1.tools)


def test_verifier_rejects_wrong_and_trivial(synth200):
    for t in synth200[0][:40]:
        env = make_env(t)
        env.reset(t)
        for bad in get_family(t.family).trivial_answers(t):
            env.reset(t)
            assert env.step([ToolCall("submit_result", bad)]).reward == 0.0
    # a trip plan over budget fails even though every id is right
    trip = next(t for t in synth200[0] if t.family == "trip" and t.difficulty == 5)
    t2 = Task.from_row(trip.to_row())
    t2.expected["budget"] = 1
    assert validate(t2) == "reference solution scored 0.0"


def test_validate_catches_a_broken_reference(synth200):
    t = Task.from_row(synth200[0][1].to_row())  # a lookup task
    t.reference[-1]["arguments"]["answer"] = "wrong"
    assert "scored 0.0" in validate(t)
    t.reference.insert(0, {"name": "nope", "arguments": {}})
    assert "unknown tool" in validate(t)


def test_row_round_trip(synth200):
    t = synth200[0][3]
    assert Task.from_row(t.to_row()) == t


def test_filter_solvable_with_any_solver(synth200):
    tasks = synth200[0][:8]
    calls = []

    def solver(ts, k):  # e.g. an LLM endpoint: solves the even-indexed tasks on the last try
        calls.append(k)
        return [[float(i % 2 == 0 and j == k - 1) for j in range(k)] for i, _ in enumerate(ts)]

    kept, passes = filter_solvable(tasks, solver, k=4)
    assert calls == [4] and passes == [1, 0] * 4 and kept == tasks[::2]


def test_command_writes_dataset(tmp_path, capsys):
    main(["--n", "40", "--out", str(tmp_path / "ds"), "--seed", "3", "--test-fraction", "0.25"])
    ds = datasets.load_from_disk(str(tmp_path / "ds"))
    assert len(ds["train"]) == 30 and len(ds["test"]) == 10
    assert Task.from_row(ds["test"][0]).family in family_names()
    out = capsys.readouterr().out
    assert "40 environments" in out and "family" in out
