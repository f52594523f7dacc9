"""Reward discovery: built-in names, dotted paths, and a real entry point of a pip-installed package."""
from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rewards.registry import (
    ENTRY_POINT_GROUP,
    builtin_rewards,
    get_reward,
    import_callable,
    load_reward,
    plugin_rewards,
    register_reward,
)
from rewards.runner import RewardRunner

PKG = Path(__file__).parent / "toy_reward_pkg"


def test_builtins_are_registered():
    assert set(builtin_rewards()) >= {"math_correct", "format", "length_penalty", "language_consistency",
                                      "env_verifier", "code_exec"}
    assert get_reward("format").__name__ == "format_reward"


def test_duplicate_name_raises():
    @register_reward("test_registry_once")
    def once(prompts, completions, **fields):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_registry_once")(once)


def test_unknown_name_lists_what_exists():
    with pytest.raises(KeyError) as e:
        load_reward(name="no_such_reward")
    msg = str(e.value)
    assert "math_correct" in msg and ENTRY_POINT_GROUP in msg and "_target_" in msg


def test_dotted_paths():
    assert load_reward(target="rewards.builtin.length_penalty") is get_reward("length_penalty")
    assert load_reward(target="rewards.builtin:length_penalty") is get_reward("length_penalty")
    assert import_callable("os.path.join") is __import__("os").path.join
    with pytest.raises(ImportError, match="no attribute"):
        load_reward(target="rewards.builtin.nope")
    with pytest.raises(ImportError, match="cannot be imported"):
        load_reward(target="no_such_pkg_xyz.fn")
    with pytest.raises(TypeError, match="not a callable"):
        load_reward(target="rewards.registry.ENTRY_POINT_GROUP")
    with pytest.raises(ValueError, match="exactly one"):
        load_reward(name="format", target="rewards.builtin.format_reward")


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install tests/rewards/toy_reward_pkg into a temp dir and put it on sys.path (and undo)."""
    tmp = tmp_path_factory.mktemp("plugin")
    src, target = tmp / "src", tmp / "site"
    shutil.copytree(PKG, src)  # build in a copy: no build/ or egg-info left in the repo
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(src)], check=True)
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("dsa_rl_toy_reward", None)
    importlib.invalidate_caches()


def test_entry_point_of_an_installed_package(installed_plugin):
    assert "toy_exclaim" not in builtin_rewards()
    assert plugin_rewards()["toy_exclaim"] == "dsa_rl_toy_reward:exclaim"
    fn = load_reward(name="toy_exclaim")
    assert fn.__module__ == "dsa_rl_toy_reward"
    assert Path(sys.modules["dsa_rl_toy_reward"].__file__).parent == installed_plugin
    assert fn(["p", "p"], ["yes!", "no"]) == [1.0, 0.0]


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_entry_point_reward_used_by_name_in_a_run(installed_plugin, isolation):
    terms = {"excl": {"name": "toy_exclaim", "weight": 2.0, "kwargs": {"bonus": 2}},
             "fmt": {"name": "format", "weight": 1.0, "kwargs": {"answer_style": "any"}}}
    with RewardRunner(terms, timeout_s=20, num_workers=2, isolation=isolation) as runner:
        res = runner.score(["q"] * 3, ["<think>r</think>wow!!", "<think>r</think>wow!", "wow!!"])
    assert res.per_term["excl"] == [1.0, 0.0, 1.0]
    assert res.per_term["fmt"] == [1.0, 1.0, 0.0]
    assert res.totals == [3.0, 1.0, 2.0]
    assert res.errors == []


def test_builtin_wins_over_a_plugin_of_the_same_name(monkeypatch):
    from rewards import registry

    class FakeEP:
        name, value, group, dist = "format", "dsa_rl_toy_reward:exclaim", ENTRY_POINT_GROUP, None

    monkeypatch.setattr(registry, "_entry_points", lambda: {"format": [FakeEP()], "twin": [FakeEP(), type(
        "Other", (FakeEP,), {"value": "other_pkg:fn"})()]})
    with pytest.warns(UserWarning, match="built-in is used"):
        assert load_reward(name="format") is get_reward("format")
    with pytest.raises(KeyError, match="claimed by several packages"):
        load_reward(name="twin")
