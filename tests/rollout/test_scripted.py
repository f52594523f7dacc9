"""rollout.scripted: the imperfect teacher of the agent cold start (``weak_reference``, ``stop_early``)."""
from __future__ import annotations

import pytest

from envs.synth.pipeline import synthesize
from rl.policy.tokenizer import load_tokenizer
from rollout.agent import AgentConfig
from rollout.scripted import cold_start_examples, demonstrations, weak_reference


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def code_tasks():
    tasks, _ = synthesize(8, seed=3, families=["code"], levels=(1, 2))
    return tasks


def test_weak_reference_drops_the_last_constraint(code_tasks):
    """Code level 2 asks for one category's total; the weak teacher sums over all rows (level 1)."""
    t2 = next(t for t in code_tasks if t.difficulty == 2)
    weak = weak_reference(t2)
    rows = [ln.split(",") for ln in t2.data["csv"].strip().splitlines()[1:]]
    assert weak[-1] == {"name": "submit_result", "arguments": {"answer": str(sum(int(r[2]) for r in rows))}}
    assert "category" not in weak[0]["arguments"]["code"] and "category" in t2.reference[0]["arguments"]["code"]
    assert weak_reference(next(t for t in code_tasks if t.difficulty == 1)) is None


def test_stop_early_demonstrations(tok, code_tasks):
    """stop_early=1: every level-2 demonstration is the weak one (reward 0 unless the category holds
    every row), level 1 stays right; stop_early=0: all right. Code runs in-process (no sandbox)."""
    cfg = AgentConfig(max_turns=4, tool_schema="compact")
    perfect = demonstrations(code_tasks, tok, cfg)
    assert [d.info["env_reward"] for d in perfect] == [1.0] * len(code_tasks)
    weak = demonstrations(code_tasks, tok, cfg, stop_early=1.0)
    for t, d in zip(code_tasks, weak):
        whole = t.expected["answer"] == weak_reference(t)[-1]["arguments"]["answer"] if t.difficulty > 1 else True
        assert d.info["env_reward"] == float(whole)
    assert any(d.info["env_reward"] == 0.0 for d in weak)
    ex = cold_start_examples(code_tasks, tok, cfg, stop_early=1.0, reasoning=True)
    assert [ids for ids, _ in ex] == [d.tokens.tolist() for d in weak]


def test_copy_drills(tok):
    """Each drill is `pairs` user/assistant turns; the reply repeats the user text and only it
    (with its <|end|>) has loss mask 1; deterministic in the seed."""
    from envs.data import copy_drills

    drills = copy_drills(tok, 3, seed=7, pairs=2)
    assert drills == copy_drills(tok, 3, seed=7, pairs=2) and drills != copy_drills(tok, 3, seed=8, pairs=2)
    for ids, mask in drills:
        text = tok.decode(ids, skip_special_tokens=False)
        assert text.startswith(tok.bos_token) and text.count("<|user|>") == 2 and text.count("<|assistant|>") == 2
        users = [u.split(tok.eos_token)[0] for u in text.split("<|user|>")[1:]]
        replies = [a.split(tok.eos_token)[0] for a in text.split("<|assistant|>")[1:]]
        assert users == replies and all("_sales.csv" in u for u in users)
        learned = tok.decode([i for i, m in zip(ids, mask) if m], skip_special_tokens=False)
        assert learned == "".join(r + tok.eos_token for r in replies)


def test_guess_answer_by_hand() -> None:
    """One fixed guess per shape: first digit 1 (2 when that is the answer), then zeros."""
    from rollout.scripted import guess_answer

    assert [guess_answer(a) for a in ("43500", "2009", "133500", "10000", "1", "12.5", "Paris")] == \
        ["10000", "1000", "100000", "20000", "2", "10.0", "unknown"]


def test_level0_weak_teacher_skips_the_lookup(tok) -> None:
    """Level 0 with stop_early=1: the teacher submits a guess at once (one turn, no look-up, reward
    0); with stop_early=0 it looks up and submits (two turns, reward 1)."""
    tasks, _ = synthesize(6, seed=0, families=["lookup"], levels=(0,))
    weak = weak_reference(tasks[0])
    assert len(weak) == 1 and weak[0]["name"] == "submit_result"
    assert weak[0]["arguments"]["answer"] != tasks[0].expected["answer"]
    assert weak[0]["arguments"]["answer"] == "1" + "0" * (len(tasks[0].expected["answer"]) - 1)
    cfg = AgentConfig(max_turns=4, tool_schema="compact")
    good = demonstrations(tasks, tok, cfg, reasoning=False)
    assert [(d.num_turns, d.num_tool_calls, d.info["env_reward"]) for d in good] == [(2, 2, 1.0)] * 6
    bad = demonstrations(tasks, tok, cfg, stop_early=1.0, reasoning=False)
    assert [(d.num_turns, d.num_tool_calls, d.info["env_reward"]) for d in bad] == [(1, 1, 0.0)] * 6
    assert max(len(d.tokens) for d in good) < 170 and max(len(d.tokens) for d in bad) < 140
