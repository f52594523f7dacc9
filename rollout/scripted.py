"""Scripted policies behind an engine-shaped interface, cold-start demonstrations, the solvability filter.

:class:`ScriptedEngine` stands in for ``rollout.engine.RolloutEngine`` in ``rollout.agent.run_agent``:
``generate(prompt_token_id_lists, params, seed=)`` reads each prompt (the user message, the number
of assistant turns so far, the tool results), asks a ``respond`` function for the next turn's text
and returns the *token ids of that text* (plus ``<|end|>``) as a sampled continuation
(log-probabilities 0, i.e. probability 1). Policies:

- :func:`reference_policy`: replays each task's reference solution, one tool call per turn, with a
  short reasoning (scores 100% when the loop and environments are right); with ``stop_early`` it
  is the *imperfect teacher* of the cold start (below);
- :func:`no_tool_policy`: answers at once without tools (scores near 0).

:func:`demonstrations` runs the reference policy through the real loop: the trajectories' tokens
and loss masks are ready-made cold-start (SFT) examples (:func:`cold_start_examples`).
:func:`solvable` is V3.2's filter: keep the tasks the policy solves at least once in K tries.

The imperfect teacher (the tool-use counterpart of ``rl.coldstart.teacher_response``): in V3.2's
synthesis each difficulty level adds a constraint or a hop to the level below it. On a task above
level 1, with probability ``stop_early``, the teacher drops the last one: it plays the reference
solution of the task one level easier over the same database (``Family.compose(data, rng,
level - 1)``), e.g. sums the quantity over all rows where the question asks for one category, so
its answer is wrong. The student imitates that habit; RL can then find the full solution, which
sampling still produces now and then. Level-1 tasks are always solved right. On level 0 (a
family's compact level: one look-up, then submit) the one thing to drop is the look-up: the
teacher submits a guess of the right shape (:func:`guess_answer`) without calling a tool.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from envs.base import format_turn
from envs.registry import Task
from rollout.agent import agent_solver, run_agent
from rollout.sampling import SamplingParams
from rollout.types import Trajectory

Respond = Callable[[str, int, list[str]], str]
"""``respond(user_text, turn_index, tool_results_so_far) -> assistant text`` (without ``<|end|>``)."""


@dataclass
class _Limits:
    max_seq_len: int | None = 4096


class ScriptedEngine:
    """An engine that "samples" the text a ``respond`` function returns (ids of its tokenisation)."""

    def __init__(self, tokenizer: Any, respond: Respond, max_seq_len: int = 4096) -> None:
        self.tokenizer = tokenizer
        self.respond = respond
        self.weight_version = 0
        self.config = _Limits(max_seq_len)
        self.calls = 0

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
                 seed: int | None = None) -> list[Trajectory]:
        tok = self.tokenizer
        out = []
        self.calls += 1
        for i, p in enumerate(prompts):
            text = tok.decode(list(p), skip_special_tokens=False)
            user = text.split("<|user|>", 1)[1].split(tok.eos_token, 1)[0] if "<|user|>" in text else ""
            turn = text.count("<|assistant|>") - 1
            results = [s.split(tok.eos_token, 1)[0] for s in text.split("<|tool|>")[1:]]
            new = tok.encode(self.respond(user, turn, results), add_special_tokens=False)
            new = list(new) + [tok.eos_token_id]
            limit = min(params.max_new_tokens, self.config.max_seq_len - len(p))
            reason = "stop"
            if len(new) > limit:
                new, reason = new[:limit], ("length" if limit == params.max_new_tokens else "context")
            n, plen = len(new), len(p)
            out.append(Trajectory(
                tokens=torch.tensor(list(p) + new, dtype=torch.long), prompt_len=plen,
                loss_mask=torch.cat([torch.zeros(plen, dtype=torch.bool), torch.ones(n, dtype=torch.bool)]),
                logprobs=torch.zeros(plen + n), completion=tok.decode(new, skip_special_tokens=True),
                finish_reason=reason, weight_version=self.weight_version, prompt_index=i))
        return out


def guess_answer(answer: str) -> str:
    """A wrong answer of the same shape, the same for every task: the first digit of ``answer``
    becomes 1 (2 if that gives the answer back) and every later digit 0; other characters are
    kept. An answer without digits gets ``"unknown"``. (A fixed guess, not a random one: the
    student cannot know the value without the look-up, so random digits would only add noise.)

    >>> guess_answer("43500"), guess_answer("2009"), guess_answer("10000")
    ('10000', '1000', '20000')
    """
    if not any(c.isdigit() for c in answer):
        return "unknown"
    first = next(i for i, c in enumerate(answer) if c.isdigit())
    for lead in "12":
        out = "".join(c if not c.isdigit() else lead if i == first else "0" for i, c in enumerate(answer))
        if out != answer:
            return out
    raise AssertionError("unreachable: two distinct guesses cannot both equal the answer")


def weak_reference(task: Any) -> list[dict[str, Any]] | None:
    """The imperfect teacher's solution of ``task``: the reference of the same family's task one
    level easier over the same database (None at level 1), seeded by ``task.seed``; at level 0, a
    submitted guess (:func:`guess_answer` of the expected answer) without a look-up."""
    if task.difficulty == 0:
        submit = task.reference[-1]
        guess = guess_answer(str(submit["arguments"]["answer"]))
        return [{"name": submit["name"], "arguments": {"answer": guess}}]
    if task.difficulty <= 1:
        return None
    from envs.registry import get_family

    return get_family(task.family).compose(task.data, random.Random(task.seed), task.difficulty - 1).reference


def reference_policy(tasks: Sequence[Any], stop_early: float = 0.0, seed: int = 0,
                     reasoning: bool = True) -> Respond:
    """Replay each task's reference solution, one call per turn (tasks keyed by their prompt).

    stop_early: probability that a task of level 0 or above level 1 gets the imperfect teacher's
    solution (:func:`weak_reference`) instead; drawn once per task with ``random.Random(seed)``,
    in order.
    reasoning: open each turn with a one-line ``<think>`` (False: calls only, shorter episodes).
    """
    rng = random.Random(seed)
    refs = {}
    for t in tasks:
        weak = weak_reference(t) if stop_early > 0 and t.difficulty != 1 and rng.random() < stop_early else None
        refs[t.prompt] = weak or t.reference

    def respond(user: str, turn: int, results: list[str]) -> str:
        ref = refs.get(user)
        if ref is None or turn >= len(ref):
            return "I cannot continue."
        call = ref[turn]
        why = "I have what I need; submitting." if turn == len(ref) - 1 else f"Next I call {call['name']}."
        return format_turn(why if reasoning else None, "", [(call["name"], call["arguments"])])

    return respond


def no_tool_policy(answer: str = "42") -> Respond:
    """Answer immediately, in text, without calling any tool."""
    return lambda user, turn, results: format_turn("I will answer directly.", answer)


def _trusted_env(task: Any, **kw: Any) -> Any:
    """``envs.registry.make_env``, but code tasks run in-process (``trusted_executor``): the teacher's
    scripts are the generator's own, so the sandbox's per-program start-up is not needed."""
    from envs.registry import make_env
    from envs.synth.code import CodeEnv, trusted_executor

    env = make_env(task, **kw)
    if isinstance(env, CodeEnv):
        env.executor = trusted_executor
    return env


def demonstrations(tasks: Sequence[Any], tokenizer: Any, config: Any = None, stop_early: float = 0.0,
                   seed: int = 0, reasoning: bool = True) -> list[Trajectory]:
    """Cold-start examples: the reference policy (the imperfect teacher when ``stop_early`` > 0)
    through ``rollout.agent.run_agent``; code runs in-process (our own scripts).

    Each trajectory's ``tokens`` / ``loss_mask`` (True on the assistant turns) is one SFT example;
    with ``stop_early=0``, ``info["env_reward"]`` is 1 for all of them (checked by the tests).
    """
    engine = ScriptedEngine(tokenizer, reference_policy(tasks, stop_early, seed, reasoning))
    return run_agent(engine, tasks, SamplingParams(max_new_tokens=4096), config, make_env=_trusted_env)


def cold_start_examples(tasks: list[Task], tokenizer: Any, agent_config: Any = None, *, stop_early: float,
                        reasoning: bool, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """SFT examples ``(ids, loss_mask)`` from the reference solutions (mask 1 on assistant turns);
    ``stop_early`` > 0: the imperfect teacher; ``reasoning``: a ``<think>`` line per turn
    (:func:`reference_policy`). No defaults: the run passes ``coldstart.teacher_stop_early`` and
    ``env.teacher_reasoning``."""
    return [(t.tokens.tolist(), t.loss_mask.long().tolist())
            for t in demonstrations(tasks, tokenizer, agent_config, stop_early, seed, reasoning)]


def solvable(tasks: list[Task], engine: Any, params: Any, k: int, agent_config: Any = None,
             seed: int = 0) -> tuple[list[Task], list[int]]:
    """Tasks the policy behind ``engine`` solves at least once in ``k`` tries, and every task's
    number of solved tries (``envs.synth.pipeline.filter_solvable`` with the agent solver)."""
    from envs.synth.pipeline import filter_solvable

    return filter_solvable(tasks, agent_solver(engine, params, agent_config, seed), k)
