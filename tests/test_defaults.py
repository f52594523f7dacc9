"""Each default is written once, and the run passes every setting on (issue 19, item 4).

The rule: a default lives in the lowest layer that uses it. The knobs of a part below the learner
that also works on its own (``rollout.params``, ``envs``, ``rewards.runner``, ``rl.synth_math``)
keep their literal there and ``rl/config.py`` names it; the learner's own parts (trainer, trainer
group) name the config's default. So of a config field and the component parameter it feeds, at
most one default is a literal (read from the source with ``ast``), and both have the same value.
A scan of the whole code base then finds any *other* parameter or field that restates a config
default under the config's name. The second half builds the components from a config whose every
setting differs from its default, the way ``rl.setup`` does, and checks each value arrives.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

from envs.base import ToolEnv
from envs.registry import make_env
from envs.synth import pipeline as env_synth
from rewards.runner import RewardRunner
from rl import config as C
from rl import synth_math
from rl.data import synth_math_dataset
from rl.distributed import TrainerGroup, make_trainer
from rl.policy.configuration import DSASparseConfig
from rl.trainer import Trainer
from rollout.params import AgentConfig, EngineConfig, SamplingParams
from rollout.pool import RolloutPool

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rl", "rollout", "envs", "rewards")


class Const:
    """A module-level constant that owns a default (``Const(env_synth, "NUM_ENVS")``)."""

    def __init__(self, module: Any, name: str) -> None:
        self.module, self.name = module, name

    def __repr__(self) -> str:
        return f"{self.module.__name__}.{self.name}"


# (config section, its field, the component, the component's parameter / field / constant)
PAIRS: list[tuple[type, str, Any, str | None]] = [
    *[(C.RolloutConfig, f, SamplingParams, f) for f in ("temperature", "top_p", "top_k", "max_new_tokens", "stop")],
    (C.RolloutConfig, "batch_size", EngineConfig, "max_batch_size"),
    *[(C.RolloutConfig, f, EngineConfig, f) for f in ("record_routes", "record_topk", "compile")],
    (C.RolloutConfig, "num_workers", RolloutPool.__init__, "num_workers"),
    (C.RolloutConfig, "weight_sync", RolloutPool.__init__, "weight_sync"),
    (C.ResourcesConfig, "cpus_per_actor", RolloutPool.__init__, "num_cpus_per_worker"),
    (C.ResourcesConfig, "gpus_per_worker", RolloutPool.__init__, "num_gpus_per_worker"),
    *[(C.ResourcesConfig, "cpus_per_actor", f, "cpus_per_actor") for f in (TrainerGroup.__init__, make_trainer)],
    *[(C.ResourcesConfig, "gpus_per_trainer", f, "gpus_per_actor") for f in (TrainerGroup.__init__, make_trainer)],
    (C.RolloutConfig, "temperature", Trainer.__init__, "temperature"),
    *[(C.EnvConfig, f, AgentConfig, f) for f in ("max_turns", "context_fraction", "tool_timeout_s",
                                                  "max_result_chars", "tool_schema")],
    *[(C.EnvConfig, "tool_timeout_s", f, "timeout_s") for f in (ToolEnv.__init__, make_env)],
    *[(C.EnvConfig, "max_result_chars", f, "max_result_chars") for f in (ToolEnv.__init__, make_env)],
    (C.EnvConfig, "num_envs", Const(env_synth, "NUM_ENVS"), None),
    (C.EnvConfig, "levels", env_synth.synthesize, "levels"),
    (C.EnvConfig, "test_fraction", Const(env_synth, "TEST_FRACTION"), None),
    *[(C.RewardsConfig, f, RewardRunner.__init__, f) for f in ("timeout_s", "num_workers", "on_error",
                                                                "max_error_rate", "isolation")],
    (C.RewardsConfig, "worker_memory_mb", RewardRunner.__init__, "memory_mb"),
    *[(C.SynthMathConfig, "max_operand", f, "max_operand") for f in (synth_math.iter_problems,
                                                                      synth_math.generate_math, synth_math_dataset)],
    (C.SynthMathConfig, "levels", Const(synth_math, "LEVELS"), None),
    (C.ModelConfig, "attention_mode", DSASparseConfig, "attention_mode"),
    *[(C.IndexerTrainConfig, f, DSASparseConfig, f) for f in ("index_n_heads", "index_head_dim", "indexer_loss_weight")],
]

CONFIG_ONLY = {
    C.RolloutConfig: {"prompts_per_step"},
    C.EnvConfig: {"name", "path", "pass_k", "teacher_reasoning"},
    C.RewardsConfig: {"terms"},
    C.SynthMathConfig: {"num_train", "num_test", "seed"},
    C.ResourcesConfig: set(),
}
"""Settings of these sections that no component below the learner has a default for (the learner
reads them, or passes them to a parameter without a default, e.g. ``cold_start_examples``)."""

SAME_NAME_OTHER_KNOB = {
    ("rollout/pool.py", "RolloutPool.generate", "group_size"),  # samples per prompt of one call, not G
    ("rollout/pool.py", "RolloutPool.run_agent", "group_size"),
    ("rl/logger.py", "make_progress", "enabled"),  # the progress bar, not coldstart.enabled
}
"""Parameters that share a config field's name and default value but are another setting."""


# ---- reading defaults from the source ------------------------------------------------------------

def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _find(tree: ast.AST, qualname: str) -> ast.AST:
    node = tree
    for part in qualname.split("."):
        node = next(n for n in ast.iter_child_nodes(node)
                    if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
    return node


def _arg_defaults(fn: ast.FunctionDef) -> dict[str, ast.expr]:
    a = fn.args
    pos = a.posonlyargs + a.args
    out = {arg.arg: d for arg, d in zip(pos[len(pos) - len(a.defaults):], a.defaults)}
    out.update({arg.arg: d for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
    return out


def _field_node(cls_node: ast.ClassDef, name: str) -> ast.expr | None:
    for n in cls_node.body:
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == name:
            return n.value
    return None


def _config_default_expr(node: ast.expr | None) -> ast.expr | None:
    """The default inside ``_f(DEFAULT, ...)`` / ``_f(factory=...)`` / ``field(default_factory=...)``."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("_f", "field"):
        if node.args:
            return node.args[0]
        kw = {k.arg: k.value for k in node.keywords}
        return kw.get("factory") or kw.get("default_factory") or kw.get("default")
    return node


def _is_literal(node: ast.expr | None) -> bool:
    """A value written out: a constant, a container of constants, ``list`` (an empty list) or a lambda
    returning one of these."""
    if isinstance(node, ast.Constant):
        return node.value is not None
    if isinstance(node, ast.UnaryOp):
        return _is_literal(node.operand)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Lambda):
        return _is_literal(node.body)
    return isinstance(node, ast.Name) and node.id in ("list", "dict", "tuple", "set")


def _config_default(cls: type, name: str) -> tuple[Any, ast.expr | None]:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    node = _config_default_expr(_field_node(_find(_tree(ROOT / "rl/config.py"), cls.__name__), name))
    return value, node


def _component_default(comp: Any, name: str | None) -> tuple[Any, ast.expr | None]:
    """(default value or MISSING, its expression in the source or None)."""
    if isinstance(comp, Const):
        tree = _tree(Path(inspect.getsourcefile(comp.module)))
        node = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                    and any(getattr(t, "id", None) == comp.name for t in n.targets))
        return getattr(comp.module, comp.name), node
    tree = _tree(Path(inspect.getsourcefile(comp)))
    if inspect.isclass(comp):
        f = {f.name: f for f in dataclasses.fields(comp)}[name]
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        return value, _field_node(_find(tree, comp.__qualname__), name)
    p = inspect.signature(comp).parameters[name]
    default = dataclasses.MISSING if p.default is inspect.Parameter.empty else p.default
    return default, _arg_defaults(_find(tree, comp.__qualname__)).get(name)


def _same(a: Any, b: Any) -> bool:
    norm = (lambda v: list(v) if isinstance(v, (list, tuple)) else v)
    return norm(a) == norm(b) and type(norm(a)) is type(norm(b))


def _label(comp: Any, name: str | None) -> str:
    return repr(comp) if isinstance(comp, Const) else f"{comp.__qualname__}({name})"


@pytest.mark.parametrize("cls,field,comp,param", PAIRS,
                         ids=[f"{c.__name__}.{f}-{_label(p, n)}" for c, f, p, n in PAIRS])
def test_a_shared_default_is_one_value_written_once(cls, field, comp, param) -> None:
    value, node = _config_default(cls, field)
    comp_value, comp_node = _component_default(comp, param)
    if comp_value is dataclasses.MISSING:
        return  # the component takes the value from its caller: nothing to disagree
    where = f"{cls.__name__}.{field} and {_label(comp, param)}"
    assert _same(value, comp_value), f"{where} have different defaults: {value!r} vs {comp_value!r}"
    assert not (_is_literal(node) and _is_literal(comp_node)), (
        f"{where} both write the default {value!r}: keep the literal in the lower layer and name it in the other")


def test_every_setting_is_a_pair_or_config_only() -> None:
    """A new setting of these sections must be classified: fed to a component (a pair above) or read
    by the learner only."""
    paired: dict[type, set[str]] = {}
    for cls, field, _, _ in PAIRS:
        paired.setdefault(cls, set()).add(field)
    for cls, only in CONFIG_ONLY.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == paired.get(cls, set()) | only, f"{cls.__name__}: classify {names ^ (paired[cls] | only)}"


def _config_defaults() -> dict[str, list[Any]]:
    """Field name -> the literal defaults of that name in rl/config.py (None and seeds left out)."""
    out: dict[str, list[Any]] = {}
    stack = [C.TrainConfig]
    while stack:
        cls = stack.pop()
        for f in dataclasses.fields(cls):
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(value):
                stack.append(type(value))
            elif value is not None and value is not dataclasses.MISSING and f.name != "seed":
                out.setdefault(f.name, []).append(value)
    return out


def _literal_defaults(path: Path):
    """(qualname, parameter or field name, value) of every literal default in a module."""
    def walk(node: ast.AST, prefix: str):
        for n in ast.iter_child_nodes(node):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for name, d in _arg_defaults(n).items():
                    if _is_literal(d):
                        yield prefix + n.name, name, ast.literal_eval(d)
                yield from walk(n, prefix + n.name + ".")
            elif isinstance(n, ast.ClassDef):
                for b in n.body:
                    if isinstance(b, ast.AnnAssign) and isinstance(b.target, ast.Name) and _is_literal(b.value) \
                            and not isinstance(b.value, (ast.Lambda, ast.Name)):
                        yield prefix + n.name, b.target.id, ast.literal_eval(b.value)
                yield from walk(n, prefix + n.name + ".")
    yield from walk(_tree(path), "")


def test_no_other_part_restates_a_config_default() -> None:
    """Anywhere in the code base, a parameter or field named like a config setting whose literal
    default equals that setting's is a second copy, unless it is the owner of a pair above."""
    defaults = _config_defaults()
    owners = {(Path(inspect.getsourcefile(c)).relative_to(ROOT).as_posix(), c.__qualname__.removesuffix(".__init__"), p)
              for _, _, c, p in PAIRS if not isinstance(c, Const)}
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel == "rl/config.py":
                continue
            for qual, name, value in _literal_defaults(path):
                qual = qual.removesuffix(".__init__")
                if any(_same(value, d) for d in defaults.get(name, [])) and (rel, qual, name) not in owners \
                        and (rel, qual, name) not in SAME_NAME_OTHER_KNOB:
                    found.append(f"{rel}: {qual}({name}={value!r})")
    assert not found, "defaults restated (name the owner's instead):\n" + "\n".join(found)


def test_the_checks_catch_a_restated_default() -> None:
    """The detectors themselves: a literal on both sides is seen, a name is not a literal."""
    both = ast.parse("x: float = _f(1.0, gt=0.0)").body[0].value
    named = ast.parse("x: float = _f(SamplingParams.temperature, gt=0.0)").body[0].value
    assert _is_literal(_config_default_expr(both)) and not _is_literal(_config_default_expr(named))
    assert _is_literal(_config_default_expr(ast.parse("_f(factory=lambda: [1, 2])").body[0].value))
    assert _is_literal(_config_default_expr(ast.parse("_f(factory=list)").body[0].value))
    assert not _is_literal(_config_default_expr(ast.parse("_f(factory=lambda: list(LEVELS))").body[0].value))


# ---- every setting reaches its component ---------------------------------------------------------

def _other(f: dataclasses.Field, value: Any) -> Any:
    """A valid value of field ``f`` other than ``value``."""
    meta = f.metadata
    if "choices" in meta:
        return next(c for c in meta["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, list):
        return value[1:] if len(value) > 1 else ["###"]
    if isinstance(value, int):
        return value - 1 if ("le" in meta and value + 1 > meta["le"]) else value + 1
    candidates = [value / 2, value + 0.5, 0.5] if value else [0.5, 0.25]
    ok = [c for c in candidates if c != value and meta.get("gt", -1e9) < c < meta.get("lt", 1e9)
          and meta.get("ge", -1e9) <= c <= meta.get("le", 1e9)]
    return ok[0]


def _changed_config() -> C.TrainConfig:
    """A config whose every setting of the paired sections differs from its default."""
    cfg = C.TrainConfig()
    cfg.budget.max_steps = 1
    for section in (cfg.rollout, cfg.env, cfg.rewards, cfg.data.synth, cfg.resources):
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if value is not None and not isinstance(value, dict) and f.name != "seed":
                setattr(section, f.name, _other(f, value))
    cfg.env.name = "synth"
    C.validate(cfg)
    return cfg


def _arrived(cfg: C.TrainConfig, built: dict[Any, Any]) -> None:
    for cls, field, comp, param in PAIRS:
        if comp not in built:
            continue
        section = {C.RolloutConfig: cfg.rollout, C.EnvConfig: cfg.env, C.RewardsConfig: cfg.rewards,
                   C.SynthMathConfig: cfg.data.synth, C.ResourcesConfig: cfg.resources}[cls]
        got, want = built[comp](param), getattr(section, field)
        assert _same(got, want) or got == want, f"{cls.__name__}.{field}={want!r} arrived as {param}={got!r}"
        assert not _same(got, _config_default(cls, field)[0]), f"{field}: the test did not change it"


def test_the_run_passes_every_setting_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``rl.setup`` / ``rl.sources`` build from the config carries every changed setting."""
    from envs import data as env_data
    from rl import data as rl_data
    from rl.setup import pool_options, reward_runner

    cfg = _changed_config()
    sp = SamplingParams.from_config(cfg.rollout)
    ec = EngineConfig.from_config(cfg.rollout)
    ac = AgentConfig.from_env_config(cfg.env)
    with reward_runner(cfg) as runner:
        pass
    pool = pool_options(cfg)
    calls: dict[str, Any] = {}

    def fake_synthesize(n, seed, families, levels):
        calls.update(num_envs=n, levels=levels)
        return [], None

    def fake_to_dataset(tasks, test_fraction, seed):
        calls.update(test_fraction=test_fraction)
        return {"train": [], "test": []}

    def fake_math(num_train, num_test, levels, seed, cache_dir, max_operand):
        calls.update(max_operand=max_operand, math_levels=levels)

    monkeypatch.setattr(env_synth, "synthesize", fake_synthesize)
    monkeypatch.setattr("envs.synthesize.to_dataset", fake_to_dataset)
    monkeypatch.setattr(rl_data, "synth_math_dataset", fake_math)
    env_data.load_tasks(cfg.env, cfg.seed)
    rl_data.load_prompts(cfg.data)
    _arrived(cfg, {
        SamplingParams: lambda p: getattr(sp, p), EngineConfig: lambda p: getattr(ec, p),
        AgentConfig: lambda p: getattr(ac, p), RewardRunner.__init__: lambda p: getattr(runner, p),
        RolloutPool.__init__: lambda p: pool[p], env_synth.synthesize: lambda p: calls[p],
    })
    assert calls["num_envs"] == cfg.env.num_envs and calls["test_fraction"] == cfg.env.test_fraction
    assert calls["max_operand"] == cfg.data.synth.max_operand and calls["math_levels"] == cfg.data.synth.levels


def test_the_learner_builds_components_from_the_config_only() -> None:
    """In the learner (``rl/`` above the policy), a call of a paired component passes every paired
    parameter, by position or keyword (or goes through ``from_config`` / ``**options``): none is
    left to the component's own default."""
    needs: dict[str, tuple[Any, set[str]]] = {}
    for _, _, comp, param in PAIRS:
        if not isinstance(comp, Const) and param is not None:
            needs.setdefault(comp.__qualname__.removesuffix(".__init__"), (comp, set()))[1].add(param)
    missing = []
    for path in sorted((ROOT / "rl").rglob("*.py")):
        if "policy" in path.parts:
            continue  # below the config: cannot read it
        for node in ast.walk(_tree(path)):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in needs or any(k.arg is None for k in node.keywords):
                continue
            comp, params = needs[name]
            if inspect.isclass(comp):
                positional: list[str] = []  # dataclasses: keyword use only
            else:
                positional = [p for p in inspect.signature(comp).parameters if p != "self"][:len(node.args)]
            left = params - {k.arg for k in node.keywords} - set(positional)
            if left:
                missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}(...) leaves {sorted(left)} to its default")
    assert not missing, "\n".join(missing)
