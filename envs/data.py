"""Environment data for training: load or synthesize tasks; copy drills.

What ``rl.setup`` calls for ``env.name`` set (``+experiment=agent``):

- :func:`load_tasks` -> (train tasks, held-out tasks): from ``env.path`` (a data set written by
  ``python -m envs.synthesize``) or synthesized at start-up (``env.num_envs``, ``env.levels``);
  ``env.name`` = ``synth`` keeps every family, a family name keeps that one;
- :func:`copy_drills` -> short copy exercises that stand in for pre-training (below).

Cold-start demonstrations and V3.2's solvability filter run the agent loop, so they live above
this package, in ``rollout.scripted`` (``cold_start_examples``, ``solvable``).

Copy drills (a departure: V3.2 starts from a pre-trained model). Tool use is mostly copying: a
file name from the question into code, a number from a tool result into the answer. Our policy
starts from random weights; on the demonstrations alone it learns the call format within a few
hundred steps but not copying (held-out answer digits stay near chance after 600 steps of 8).
Drills (``user: X`` -> ``assistant: X``) teach the reply-copy in ~400 steps of 32, but that did
not carry over to copying inside the demonstrations in our measurements; they are not wired
into ``+experiment=agent``.
"""
from __future__ import annotations

import random
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


def copy_drills(tokenizer: Any, n: int, seed: int = 0, pairs: int = 2) -> list[tuple[list[int], list[int]]]:
    """``n`` copy exercises ``(ids, loss_mask)``: ``pairs`` chat turns ``<|user|>X<|end|><|assistant|>X<|end|>``
    with X = ``"<word>_sales.csv <number> <Word> <number>"`` (made-up words); mask 1 on the replies."""
    from envs.synth.common import word

    rng = random.Random(seed)
    enc = (lambda t: list(tokenizer.encode(t, add_special_tokens=False)))
    out = []
    for _ in range(n):
        ids = enc(tokenizer.bos_token)
        mask = [0] * len(ids)
        for _ in range(pairs):
            x = (f"{word(rng).lower()}_sales.csv {rng.randint(10, 999)} {word(rng, 3)} "
                 f"{rng.randrange(30000, 150000, 500)}")
            head, body = enc(f"<|user|>{x}{tokenizer.eos_token}<|assistant|>"), enc(x + tokenizer.eos_token)
            ids += head + body
            mask += [0] * len(head) + [1] * len(body)
        out.append((ids, mask))
    return out
