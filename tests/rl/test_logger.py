"""Loggers: wandb offline writes a local run without network; none is a no-op; progress renders."""
from __future__ import annotations

import io
from pathlib import Path

from rl.config import LoggerConfig
from rl.logger import NoopLogger, make_logger, make_progress


def test_wandb_offline_writes_local_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    logger = make_logger(LoggerConfig(kind="wandb", mode="offline"), str(tmp_path), "t", {"a": 1})
    logger.log({"reward": 0.5, "nan_metric": float("nan")}, step=1)
    logger.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))


def test_none_logger_prints_to_console(capsys) -> None:
    logger = make_logger(LoggerConfig(kind="none", log_every=2), "/nonexistent", "t", {})
    logger.log({"reward/mean": 0.25, "train/kl": 0.001, "other": 3.0}, step=2)
    logger.log({"reward/mean": 0.5}, step=3)
    logger.finish()
    assert capsys.readouterr().out == "step 2: reward=0.25 kl=0.001\n"
    NoopLogger().log({"x": 1.0}, step=0)


def test_progress_shows_info() -> None:
    progress = make_progress()
    progress.console.file = io.StringIO()
    with progress:
        task = progress.add_task("grpo", total=2, info="")
        progress.update(task, advance=2, info="reward 0.50")
    assert "reward 0.50" in progress.console.file.getvalue()


def test_wandb_never_gets_a_secret_env_value(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    secret = "s3cr3t-wandb-77"
    config = {"cluster": {"env": {"WANDB_API_KEY": secret, "HF_HOME": "/h"}}, "seed": 1}
    logger = make_logger(LoggerConfig(kind="wandb", mode="offline"), str(tmp_path), "t", config)
    logger.log({"reward": 0.5}, step=1)
    logger.finish()
    assert config["cluster"]["env"]["WANDB_API_KEY"] == secret  # the caller's dict is untouched
    files = [p for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert files and not any(secret.encode() in p.read_bytes() for p in files)
    assert any(b"/h" in p.read_bytes() for p in files)  # the non-secret value is still recorded
