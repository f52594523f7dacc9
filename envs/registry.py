"""Tasks, the family (generator) interface and the environment-family registry.

A :class:`Task` is self-contained and JSON-serialisable: the family, the database, the exposed tool
names, the user prompt, a reference solution (tool calls only) and the verifier's expected values.
A *family* pairs a generator (``build_database`` + ``compose``, the :class:`Family` protocol) with
an environment class that implements the tools and the verifier over the task's database. Families
register under a name in :data:`FAMILIES`, or from other packages through the entry-point group
``dsa_rl.envs`` (value: ``module:FamilyClass``). Another generator (one prompting an LLM endpoint,
say) is just another :class:`Family`; the pipeline in ``envs.synth.pipeline`` does not change.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from envs.base import MAX_RESULT_CHARS, TOOL_TIMEOUT_S, ToolEnv
from rl.registry import Registry

ENTRY_POINT_GROUP = "dsa_rl.envs"


@dataclass
class Task:
    """One synthesized task (an environment instance)."""

    env_id: str
    family: str
    difficulty: int
    prompt: str
    data: dict[str, Any]
    """The database the tools read."""
    tools: list[str]
    """Names of the tools exposed (a subset of the family's; more at higher difficulty)."""
    reference: list[dict[str, Any]]
    """The reference solution: ``[{"name": ..., "arguments": {...}}, ...]``, ending in a submit."""
    expected: dict[str, Any] = field(default_factory=dict)
    """What the verifier checks against (family-specific)."""
    seed: int = 0

    def to_row(self) -> dict[str, Any]:
        """A flat ``datasets`` row (nested parts as JSON strings)."""
        row = asdict(self)
        for k in ("data", "tools", "reference", "expected"):
            row[k] = json.dumps(row[k], ensure_ascii=False, sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Task:
        kw = {k: row[k] for k in ("env_id", "family", "difficulty", "prompt", "seed")}
        for k in ("data", "tools", "reference", "expected"):
            kw[k] = json.loads(row[k]) if isinstance(row[k], str) else row[k]
        return cls(**kw)


class Family(Protocol):
    """A task generator + its environment class (the interface other generators implement)."""

    name: str
    min_level: int
    """The lowest level composed (1; 0 where a family has a compact level, e.g. lookup)."""
    max_level: int
    env_class: type[ToolEnv]

    def build_database(self, rng: random.Random) -> dict[str, Any]:
        """A fresh database (JSON-serialisable)."""
        ...

    def compose(self, data: dict[str, Any], rng: random.Random, level: int) -> Task:
        """A task of difficulty ``level`` (min_level..max_level) over ``data``, with its reference
        solution. Level L+1 adds constraints, tools or hops to level L (L >= 1; a level 0 stands
        alone). ``env_id``/``seed`` are set later."""
        ...

    def trivial_answers(self, task: Task) -> list[dict[str, Any]]:
        """Submissions that must fail the verifier (empty, zero, ...)."""
        ...


FAMILIES: Registry[Family] = Registry("environment family")
_loaded = False


def _load() -> None:
    """Import the built-in families and the entry-point plugins once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    importlib.import_module("envs.synth")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name not in FAMILIES:
            obj = ep.load()
            FAMILIES.register(ep.name)(obj() if isinstance(obj, type) else obj)


def get_family(name: str) -> Family:
    """The registered family ``name`` (built-ins and ``dsa_rl.envs`` plugins)."""
    _load()
    return FAMILIES.get(name)


def family_names() -> tuple[str, ...]:
    _load()
    return FAMILIES.names()


def make_env(task: Task, timeout_s: float = TOOL_TIMEOUT_S, max_result_chars: int = MAX_RESULT_CHARS) -> ToolEnv:
    """A fresh environment for ``task`` (not yet reset)."""
    return get_family(task.family).env_class(timeout_s=timeout_s, max_result_chars=max_result_chars)
