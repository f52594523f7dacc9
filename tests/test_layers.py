"""The house's layers, read from the source's imports (every import, also those inside functions).

Top to bottom: the learner (``rl``: entry points, loop, trainer, set-up), the actor side
(``rollout``, then ``envs``, then ``rewards``), and at the bottom the policy and tokenizer
(``rl.policy``) with a few leaf modules that import nothing of the project. A module may import
its own layer and the layers below it, never one above; and no two modules of different packages
import each other, directly or through a circle.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl", "rollout", "envs", "rewards")
LEAVES = ("rl.registry", "rl.paths", "rl.synth_math", "rl.process_group", "rl.policy_defaults")
"""Utility modules below everything: they import no module of the project."""
LEARNER_ONLY = ("rl.trainer", "rl.loop", "rl.setup", "rl.losses", "rl.data", "rl.config")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports() -> dict[str, set[str]]:
    """module -> the project modules it imports (``from a import b`` counts as ``a.b`` when that
    is a module, else ``a``)."""
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    graph[mod].add(name)
    return graph


def _layer(mod: str) -> int:
    """0 = leaf utilities, 1 = policy, 2 = rewards, 3 = envs, 4 = rollout, 5 = learner."""
    if mod in LEAVES:
        return 0
    if mod == "rl.policy" or mod.startswith("rl.policy."):
        return 1
    return {"rewards": 2, "envs": 3, "rollout": 4, "rl": 5}[mod.split(".")[0]]


def test_no_module_imports_a_layer_above_it() -> None:
    bad = [f"{m} -> {t}" for m, targets in _imports().items() for t in targets if _layer(t) > _layer(m)]
    assert not bad, "imports that run up the layers:\n" + "\n".join(sorted(bad))


def test_actor_side_and_policy_never_import_the_learner() -> None:
    bad = [f"{m} -> {t}" for m, targets in _imports().items() if _layer(m) <= 4
           for t in targets if t in LEARNER_ONLY]
    assert not bad, "\n".join(sorted(bad))


def test_leaves_import_nothing_of_the_project() -> None:
    graph = _imports()
    assert {m: graph[m] for m in LEAVES if graph[m]} == {}


def test_no_import_cycle_between_packages_or_jobs() -> None:
    """No strongly connected component of more than one module (Tarjan's algorithm)."""
    graph = _imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(_modules()):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_rules_catch_a_violation() -> None:
    """The layer function itself: an arrow up is seen as one."""
    assert _layer("rollout.engine") > _layer("envs.base") > _layer("rewards.builtin") > _layer("rl.policy.mla")
    assert _layer("rl.trainer") > _layer("rollout.engine") and _layer("rl.registry") == 0
