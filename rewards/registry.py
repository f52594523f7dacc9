"""Finding reward functions: built-in names, entry points of installed packages, dotted paths.

A reward function is a plain callable ``fn(prompts, completions, **fields) -> list[float]`` that
scores a batch (sync or ``async def``). A config term names it in one of three ways, tried by
:func:`load_reward` in this order:

1. a **built-in** registered with :func:`register_reward` (``math_correct``, ``format``, ...);
2. an **entry point** named ``name`` in the group ``dsa_rl.rewards`` of any installed package
   (``[project.entry-points."dsa_rl.rewards"] my_reward = "my_pkg.rewards:my_reward"``);
3. a **dotted import path** (config key ``_target_``): ``"my_pkg.rewards.my_reward"`` or
   ``"my_pkg.rewards:my_reward"``.

A built-in name wins over an entry point of the same name (a plugin cannot silently replace a
built-in; a warning says so); two installed packages that claim the same entry-point name are an
error naming both, since which one loads would otherwise depend on install order. An unknown name
raises :class:`KeyError` listing every built-in and entry point that does exist.

Not in the paper: V3.2 only says its rewards are rule-based; this module is our plugin contract.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import warnings
from collections.abc import Callable
from typing import Any

from rl.registry import Registry

ENTRY_POINT_GROUP = "dsa_rl.rewards"

RewardFn = Callable[..., Any]
"""``fn(prompts: list, completions: list[str], **fields: list) -> list[float]`` (or a coroutine)."""

REWARDS: Registry[RewardFn] = Registry("reward")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a built-in reward under ``name``; a duplicate name raises ValueError.

    >>> @register_reward("doctest_always_one")
    ... def always_one(prompts, completions, **fields):
    ...     return [1.0] * len(completions)
    >>> get_reward("doctest_always_one")(["p"], ["c"])
    [1.0]
    """
    return REWARDS.register(name)


def _ensure_builtins() -> None:
    """Import the modules whose import registers the built-ins (kept lazy: no import cycle)."""
    importlib.import_module("rewards.builtin")
    importlib.import_module("rewards.code")


def get_reward(name: str) -> RewardFn:
    """The built-in reward registered as ``name`` (KeyError listing the built-ins otherwise)."""
    _ensure_builtins()
    return REWARDS.get(name)


def builtin_rewards() -> tuple[str, ...]:
    """Names of the built-in rewards, sorted."""
    _ensure_builtins()
    return REWARDS.names()


def _entry_points() -> dict[str, list[importlib.metadata.EntryPoint]]:
    """Entry points of group ``dsa_rl.rewards`` by name (a list: several packages may claim one)."""
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if all(ep.value != other.value for other in found.get(ep.name, [])):
            found.setdefault(ep.name, []).append(ep)
    return found


def plugin_rewards() -> dict[str, str]:
    """Entry-point rewards of installed packages: ``{name: "module:attr"}``, sorted by name."""
    return {name: eps[0].value for name, eps in sorted(_entry_points().items())}


def _describe_known() -> str:
    plugins = plugin_rewards()
    return (f"built-in rewards: {', '.join(builtin_rewards())}; "
            f"entry points in group {ENTRY_POINT_GROUP!r}: {', '.join(plugins) if plugins else '(none installed)'}; "
            "or give a dotted import path as _target_ (e.g. 'my_pkg.rewards.my_reward')")


def import_callable(path: str) -> RewardFn:
    """Import ``"pkg.mod.attr"`` or ``"pkg.mod:attr"`` (attr may be dotted: ``Class.method``)."""
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
        candidates = [(module_name, attr_path)]
    else:
        parts = path.split(".")
        if len(parts) < 2:
            raise ValueError(f"reward target {path!r} is not a dotted path 'module.function'")
        # Try the longest importable module prefix first: "a.b.c.f" -> (a.b.c, f), (a.b, c.f), ...
        candidates = [(".".join(parts[:i]), ".".join(parts[i:])) for i in range(len(parts) - 1, 0, -1)]
    errors = []
    for module_name, attr_path in candidates:
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                errors.append(f"no module {module_name!r}")
                continue
            raise  # the module exists but one of ITS imports is missing: show that, not ours
        try:
            for attr in attr_path.split("."):
                obj = getattr(obj, attr)
        except AttributeError:
            raise ImportError(f"reward target {path!r}: module {module_name!r} has no attribute "
                              f"{attr_path!r}") from None
        if not callable(obj):
            raise TypeError(f"reward target {path!r} is a {type(obj).__name__}, not a callable")
        return obj
    raise ImportError(f"reward target {path!r} cannot be imported ({'; '.join(errors)})")


def load_reward(name: str | None = None, target: str | None = None) -> RewardFn:
    """Resolve a config term to its callable: exactly one of ``name`` or ``target`` (``_target_``).

    ``name`` is looked up among the built-ins, then the entry points of group ``dsa_rl.rewards``;
    a ``name`` that contains a dot and matches neither is tried as a dotted path too.

    >>> load_reward(name="length_penalty").__name__
    'length_penalty'
    >>> load_reward(target="rewards.builtin.format_reward").__name__
    'format_reward'
    """
    if (name is None) == (target is None):
        raise ValueError(f"a reward term needs exactly one of 'name' or '_target_' (got name={name!r}, "
                         f"_target_={target!r})")
    if target is not None:
        return import_callable(target)
    assert name is not None
    _ensure_builtins()
    eps = _entry_points().get(name, [])
    if name in REWARDS:
        if eps:
            warnings.warn(f"reward {name!r} is a built-in and also an entry point of "
                          f"{_dist_name(eps[0])} ({eps[0].value}); the built-in is used. Use "
                          f"_target_: {eps[0].value.replace(':', '.')} for the plugin's.", stacklevel=2)
        return REWARDS.get(name)
    if len(eps) > 1:
        owners = ", ".join(f"{_dist_name(ep)} ({ep.value})" for ep in eps)
        raise KeyError(f"reward entry point {name!r} is claimed by several packages: {owners}; "
                       "uninstall one or use _target_ with the dotted path you want")
    if eps:
        fn = eps[0].load()
        if not callable(fn):
            raise TypeError(f"entry point {name!r} ({eps[0].value}) is a {type(fn).__name__}, not a callable")
        return fn
    if "." in name or ":" in name:
        return import_callable(name)
    raise KeyError(f"unknown reward {name!r}; {_describe_known()}")


def _dist_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"package {dist.name!r}" if dist is not None else "an installed package"
