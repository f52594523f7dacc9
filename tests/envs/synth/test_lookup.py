"""envs.synth.lookup: level 0, the compact level (one field of an employee by id, bare-number tools)."""
from __future__ import annotations

import random

from envs.base import ToolCall
from envs.registry import get_family, make_env
from envs.synth.pipeline import summary_table, synthesize, validate


def _compact_task():
    fam = get_family("lookup")
    data = fam.build_database(random.Random("db"))
    return fam.compose(data, random.Random("t"), 0), data


def test_level0_task_by_hand() -> None:
    """Employee 662 of this database earns 85000 (read off the database below)."""
    task, data = _compact_task()
    emp = next(e for e in data["employees"] if e["id"] == 662)
    assert emp["salary"] == 85000
    assert task.difficulty == 0 and task.prompt == "What is the salary of employee 662?"
    assert task.tools == ["get_salary", "submit_result"]  # only the tool the question needs
    assert task.reference == [{"name": "get_salary", "arguments": {"id": 662}},
                              {"name": "submit_result", "arguments": {"answer": "85000"}}]
    assert validate(task) is None


def test_level0_tools_return_bare_numbers_and_short_prompt() -> None:
    task, data = _compact_task()
    env = make_env(task)
    obs = env.reset(task)
    assert obs.messages[0]["content"] == "Look it up, then submit."
    assert [t["function"]["name"] for t in obs.tools] == ["get_salary", "submit_result"]
    res = env.step([ToolCall("get_salary", {"id": 662}), ToolCall("get_salary", {"id": 1}),
                    ToolCall("get_start_year", {"id": 662})])
    assert res.observations == ["85000", "Error: no employee with id 1",
                                "Error: unknown tool 'get_start_year'; available: get_salary, submit_result"]
    assert res.num_errors == 2 and not res.done
    assert env.step([ToolCall("submit_result", {"answer": "85000"})]).reward == 1.0
    env.reset(task)
    assert env.step([ToolCall("submit_result", {"answer": "85500"})]).reward == 0.0
    # levels 1-5 keep the long system prompt and do not expose the level-0 tools
    t1 = get_family("lookup").compose(data, random.Random("t"), 1)
    obs1 = make_env(t1).reset(t1)
    assert obs1.messages[0]["content"].startswith("You answer questions about a company database.")
    assert "get_salary" not in [t["function"]["name"] for t in obs1.tools]


def test_synthesize_level0_only_lookup() -> None:
    """levels=(0,): lookup tasks at level 0 (ids 3 digits, so copies span a fixed distance); the
    other families have no level 0 and are clamped to their lowest level, 1."""
    tasks, stats = synthesize(40, seed=0, families=["lookup"], levels=(0,))
    assert {t.difficulty for t in tasks} == {0} and len({t.prompt for t in tasks}) == 40
    assert all(validate(t) is None for t in tasks)
    assert all(100 <= t.reference[0]["arguments"]["id"] <= 999 for t in tasks)
    fields = {t.reference[0]["name"] for t in tasks}
    assert fields == {"get_salary", "get_start_year"}
    for t in tasks:  # a start year has 4 digits, a salary 5 or 6
        assert len(t.expected["answer"]) in ((4,) if t.reference[0]["name"] == "get_start_year" else (5, 6))
    assert "d0" in summary_table(stats)
    _, stats = synthesize(8, seed=0, levels=(0,))
    assert stats.counts[("lookup", 0)] == 2
    assert all(stats.counts[(f, 1)] == 2 for f in ("trip", "code", "search"))
