"""Environment data for training: load or synthesize tasks, cold-start examples, the pass@K filter.

What ``rl.setup`` calls for ``env.name`` set (``+experiment=agent``):

- :func:`load_tasks` -> (train tasks, held-out tasks): from ``env.path`` (a data set written by
  ``python -m envs.synthesize``) or synthesized at start-up (``env.num_envs``, ``env.levels``);
  ``env.name`` = ``synth`` keeps every family, a family name keeps that one;
- :func:`cold_start_examples` -> (token ids, loss mask) pairs: the reference solutions replayed
  through the real loop (``envs.policies.demonstrations``), mask 1 on the assistant turns;
- :func:`solvable` -> V3.2's filter (keep tasks the policy solves at least once in K tries).
"""
from __future__ import annotations

from typing import Any

from envs.registry import Task, family_names


def load_tasks(cfg: Any, seed: int = 0) -> tuple[list[Task], list[Task]]:
    """Train and held-out tasks for an ``rl.config.EnvConfig``."""
    if cfg.name != "synth" and cfg.name not in family_names():
        raise ValueError(f"env.name={cfg.name!r}: use 'synth' or one of {', '.join(family_names())}")
    families = None if cfg.name == "synth" else [cfg.name]
    if cfg.path:
        import datasets

        ds = datasets.load_from_disk(cfg.path)
        train, test = ([Task.from_row(r) for r in ds[s]] for s in ("train", "test"))
        if families:
            train, test = ([t for t in x if t.family in families] for x in (train, test))
        return train, test
    from envs.synth.pipeline import synthesize
    from envs.synthesize import to_dataset

    tasks, _ = synthesize(cfg.num_envs, seed, families, tuple(cfg.levels))
    ds = to_dataset(tasks, cfg.test_fraction, seed)
    return [Task.from_row(r) for r in ds["train"]], [Task.from_row(r) for r in ds["test"]]


def cold_start_examples(tasks: list[Task], tokenizer: Any, agent_config: Any = None, stop_early: float = 0.0,
                        seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """SFT examples ``(ids, loss_mask)`` from the reference solutions (mask 1 on assistant turns);
    ``stop_early`` > 0: the imperfect teacher (``envs.policies.reference_policy``)."""
    from envs.policies import demonstrations

    return [(t.tokens.tolist(), t.loss_mask.long().tolist())
            for t in demonstrations(tasks, tokenizer, agent_config, stop_early, seed)]


def solvable(tasks: list[Task], engine: Any, params: Any, k: int, agent_config: Any = None,
             seed: int = 0) -> tuple[list[Task], list[int]]:
    """Tasks the policy behind ``engine`` solves at least once in ``k`` tries, and every task's
    number of solved tries (``envs.synth.pipeline.filter_solvable`` with the agent solver)."""
    from envs.synth.pipeline import filter_solvable
    from rollout.agent import agent_solver

    return filter_solvable(tasks, agent_solver(engine, params, agent_config, seed), k)
