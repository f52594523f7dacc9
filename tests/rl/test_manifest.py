"""Tests for rl.manifest: fields, git state (clean / dirty / no repo), atomic write, read checks."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rl.manifest import (
    MANIFEST_NAME,
    ManifestError,
    build_manifest,
    git_state,
    package_versions,
    read_manifest,
    write_manifest,
)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_state_clean_dirty_and_outside(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None, "branch": None}
    _git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "one")
    sha = _git(tmp_path, "rev-parse", "HEAD")
    assert git_state(tmp_path) == {"commit": sha, "dirty": False, "branch": "main"}
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path)["dirty"] is True
    _git(tmp_path, "checkout", "-q", "a.py")
    (tmp_path / "new.py").write_text("")  # untracked files would be uploaded too: dirty
    assert git_state(tmp_path)["dirty"] is True


def test_package_versions():
    v = package_versions(("torch", "surely-not-installed-pkg"))
    assert set(v) == {"python", "torch", "surely-not-installed-pkg"}
    assert v["torch"] and v["surely-not-installed-pkg"] is None


def test_build_write_read_round_trip(tmp_path):
    m = build_manifest(overrides=["cluster=slurm", "+experiment=math"], config={"seed": 0},
                       cluster={"kind": "slurm", "partition": "debug"}, run_dir=tmp_path / "run", repo=tmp_path,
                       job_id="42", entrypoint="sbatch x")
    assert {"schema", "created", "overrides", "config", "git", "packages", "cluster", "job_id", "run_dir",
            "entrypoint", "submitted_from", "argv"} <= set(m)
    assert m["created"].endswith("+00:00") and m["job_id"] == "42" and m["run_dir"] == str(tmp_path / "run")
    path = write_manifest(tmp_path / "run", m)
    assert path == tmp_path / "run" / MANIFEST_NAME and not list((tmp_path / "run").glob("*.tmp"))
    assert read_manifest(path) == json.loads(json.dumps(m))
    assert read_manifest(tmp_path / "run") == read_manifest(path)  # the run directory works too


def test_read_rejects_bad_files(tmp_path):
    with pytest.raises(ManifestError, match="no such file"):
        read_manifest(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(bad)
    bad.write_text('{"a": 1}')
    with pytest.raises(ManifestError, match="no 'overrides' list"):
        read_manifest(bad)
    bad.write_text('{"overrides": [], "schema": 99}')
    with pytest.raises(ManifestError, match="schema 99"):
        read_manifest(bad)


def test_secret_env_values_are_redacted(tmp_path):
    from rl.manifest import REDACTED, redact_overrides

    overrides = ["cluster=ray_job", "+cluster.env.WANDB_API_KEY=abc", "cluster.env.HF_HOME=/h",
                 "cluster.env={HF_TOKEN:xyz}", "seed=1"]
    assert redact_overrides(overrides) == ["cluster=ray_job", f"+cluster.env.WANDB_API_KEY={REDACTED}",
                                           "cluster.env.HF_HOME=/h", f"cluster.env={REDACTED}", "seed=1"]
    m = build_manifest(overrides=overrides, config={"cluster": {"env": {"WANDB_API_KEY": "abc", "HF_HOME": "/h"}}},
                       cluster={"env": {"HF_TOKEN": "xyz"}}, run_dir=tmp_path, repo=tmp_path,
                       entrypoint="python -m rl.train '+cluster.env.WANDB_API_KEY=abc' cluster.env.HF_HOME=/h")
    text = json.dumps(m)
    assert "abc" not in text and "xyz" not in text and "/h" in text
    assert m["config"]["cluster"]["env"] == {"WANDB_API_KEY": REDACTED, "HF_HOME": "/h"}
