"""Every YAML under configs/ composes and validates; bad values fail with one clear line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from rl.config import ConfigError, TrainConfig, register_configs, to_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# Options whose mandatory fields (???) a user fills in on the command line.
REQUIRED = {("model", "pretrained"): ["model.path=/some/dir"], ("data", "file"): ["data.source=x.json"]}
register_configs()


def _compose(overrides: list[str]) -> TrainConfig:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return to_config(compose(config_name="train", overrides=overrides))


def _options() -> list[tuple[str, str]]:
    return [(p.parent.name, p.stem) for p in sorted(CONFIGS.glob("*/*.yaml"))]


@pytest.mark.parametrize(("group", "option"), _options())
def test_every_yaml_composes(group: str, option: str) -> None:
    if group == "experiment":
        overrides = [f"+experiment={option}"]
    else:
        overrides = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    cfg = _compose(overrides)
    assert isinstance(cfg, TrainConfig)
    if group == "experiment":
        assert cfg.experiment == option


def test_group_options_set_only_what_differs() -> None:
    cfg = _compose(["deepspeed=zero3", "budget=smoke", "logger=none"])
    assert cfg.deepspeed.zero_stage == 3
    assert cfg.budget.max_steps == 2
    assert cfg.logger.kind == "none"
    assert cfg.algorithm.kl_estimator == "unbiased_k3"  # the default from rl/config.py


@pytest.mark.parametrize(("override", "message"), [
    ("algorithm.group_size=-1", "algorithm.group_size=-1 is invalid: must be >= 2"),
    ("budget.max_steps=0", "budget.max_steps=0 is invalid: must be >= 1"),
    ("model.attention_mode=full", "model.attention_mode='full' is invalid: allowed values are sparse, dense"),
    ("rollout.top_p=1.5", "rollout.top_p=1.5 is invalid: must be <= 1.0"),
    ("rollout.weight_sync=nccl",
     "rollout.weight_sync='nccl' is invalid: allowed values are object_store, broadcast"),
    ("rewards.max_error_rate=2", "rewards.max_error_rate=2.0 is invalid: must be <= 1.0"),
    ("algorithm.micro_batch_size=128",
     ("algorithm.micro_batch_size=128 is invalid: must be <= algorithm.mini_batch_size=64")),
])
def test_invalid_values_name_key_value_and_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _compose([override])
    assert str(err.value) == message


@pytest.mark.parametrize(("override", "message"), [
    ("algorithm.kl_estimator=k4",
     "algorithm.kl_estimator='k4' is invalid: allowed values are k1, k2, k3, unbiased_k3 (the registered KL estimator names)"),
    ("algorithm.advantage=ppo", "algorithm.advantage='ppo' is invalid: allowed values are grpo (the registered advantage estimator names)"),
    ("algorithm.policy_loss=dpo", "algorithm.policy_loss='dpo' is invalid: allowed values are "),
    ("algorithm.loss_agg=mean", "algorithm.loss_agg='mean' is invalid: allowed values are "),
])
def test_registry_names_are_checked_at_start_up(override: str, message: str) -> None:
    """Even a name whose part is switched off (kl_estimator with kl_coef 0) is checked."""
    with pytest.raises(ConfigError) as err:
        _compose([override, "algorithm.kl_coef=0"])
    assert str(err.value).startswith(message)


def test_budget_needs_a_limit() -> None:
    with pytest.raises(ConfigError, match="set at least one limit"):
        _compose(["budget.max_steps=null", "budget.max_seconds=null"])


def test_reward_term_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="rewards.terms.x is invalid: set exactly one"):
        _compose(["+rewards.terms={x:{weight:1.0}}"])
    cfg = _compose(["+rewards.terms={x:{_target_:my_pkg.my_reward}}"])
    assert cfg.rewards.terms["x"]._target_ == "my_pkg.my_reward"


def test_unknown_key_and_option_fail_at_composition() -> None:
    with pytest.raises(ConfigCompositionException):
        _compose(["algorithm.grup_size=3"])
    with pytest.raises(ConfigCompositionException):
        _compose(["model=nope"])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rl.train", *args], capture_output=True, text=True,
                          timeout=60, cwd=CONFIGS.parent, check=False)


def test_cli_prints_config_and_rejects_bad_values() -> None:
    ok = _cli("+experiment=math", "--cfg", "job")
    assert ok.returncode == 0, ok.stderr
    assert "experiment: math" in ok.stdout and "group_size: 8" in ok.stdout
    bad = _cli("+experiment=math", "algorithm.group_size=-1")
    assert bad.returncode != 0
    assert bad.stderr.strip() == "config error: algorithm.group_size=-1 is invalid: must be >= 2"
    k4 = _cli("+experiment=math", "algorithm.kl_estimator=k4")
    assert k4.returncode != 0 and k4.stderr.strip() == (
        "config error: algorithm.kl_estimator='k4' is invalid: allowed values are k1, k2, k3, unbiased_k3 "
        "(the registered KL estimator names)")
    unknown = _cli("model=nope")
    assert unknown.returncode != 0
    assert "Available options in 'model'" in unknown.stderr and "tiny" in unknown.stderr
