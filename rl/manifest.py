"""Run manifest: what was submitted, from which code, to which cluster (``manifest.json``).

``python -m rl.submit`` writes one manifest per submission into the run's output directory
(``outputs/<experiment>/<YYYY-mm-dd_HH-MM-SS>/manifest.json``, the same directory the job's Hydra
run dir points at, so the manifest sits beside ``summary.json`` and the checkpoints). It records the
user's overrides (enough to re-compose the config), the resolved config (to read, and to compare),
the git commit and whether the working tree had uncommitted changes, the versions of the key
packages, the cluster target and the scheduler's job id. ``python -m rl.submit --from-manifest
PATH`` re-submits the same overrides to a fresh run directory.

Not a lock file: package versions are recorded, not enforced. Values of ``cluster.env`` entries
whose names look secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``) are written as
``<redacted>``; a re-submission leaves those overrides out (set them again, or export them).
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
import re
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
KEY_PACKAGES = ("dsa-rl", "torch", "deepspeed", "ray", "transformers", "datasets", "tokenizers",
                "hydra-core", "omegaconf", "math-verify", "wandb", "accelerate")
"""Distributions whose versions a manifest records (missing ones are recorded as ``None``)."""
REDACTED = "<redacted>"
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Whether an environment variable's name looks secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``,
    ``*PASSW*``, ``*CREDENTIAL*``): its value is never written to a file or sent to a Ray head."""
    return bool(_SECRET.search(name))


def secret_env_override(override: str) -> tuple[str, str] | None:
    """``(NAME, value)`` of a ``[+|++]cluster.env.NAME=value`` override with a secret-looking name."""
    key, sep, value = override.partition("=")
    name = key.lstrip("+~")
    if sep and name.startswith("cluster.env.") and is_secret(name[len("cluster.env."):]):
        return name[len("cluster.env."):], value
    return None


def redact_overrides(overrides: list[str]) -> list[str]:
    """``cluster.env`` overrides that name a secret-looking variable get the value ``<redacted>``."""
    out = []
    for o in overrides:
        key, sep, _ = o.partition("=")
        name = key.lstrip("+~")
        secret = sep and name.startswith("cluster.env") and _SECRET.search(o if name == "cluster.env" else name)
        out.append(f"{key}={REDACTED}" if secret else o)
    return out


def redact_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with secret-looking variables' values replaced by ``<redacted>``."""
    return {k: (REDACTED if _SECRET.search(k) else v) for k, v in env.items()}


def package_versions(names: tuple[str, ...] = KEY_PACKAGES) -> dict[str, str | None]:
    """``{distribution: version}`` plus ``python``; ``None`` for one that is not installed."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_state(repo: str | Path) -> dict[str, Any]:
    """``{"commit": sha | None, "dirty": bool | None, "branch": name | None}`` of ``repo``.

    ``dirty`` is True when tracked files differ from the commit or untracked, non-ignored files
    exist (what a working-dir upload would carry). All ``None`` outside a git checkout.
    """
    def git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", *args], cwd=repo, check=False, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.strip() if res.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "branch": None}
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "branch": git("rev-parse", "--abbrev-ref", "HEAD")}


def utc_now() -> str:
    """The current time, ISO 8601 in UTC (seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def build_manifest(*, overrides: list[str], config: dict[str, Any], cluster: dict[str, Any], run_dir: str | Path,
                   repo: str | Path, job_id: str | None = None, entrypoint: str | None = None) -> dict[str, Any]:
    """The manifest of one submission (a JSON-serialisable dict).

    Args:
        overrides: the user's Hydra overrides, as typed (``cluster=...`` included; the run-dir
            override that ``rl.submit`` adds is not).
        config: the resolved, validated config as a plain dict.
        cluster: the cluster target (``kind``, ``address`` / ``partition`` ...).
        run_dir: the run's output directory (absolute).
        repo: the code that was submitted (git state is read there).
        job_id: the scheduler's id (Ray submission id or Slurm job id).
        entrypoint: the command the job runs.
    """
    config = json.loads(json.dumps(config, default=str))
    redacted = redact_overrides(list(overrides))
    for o, r in zip(overrides, redacted):
        if o != r and entrypoint:
            entrypoint = entrypoint.replace(shlex.quote(o), shlex.quote(r))
    cluster = dict(cluster)
    for c in (cluster, config.get("cluster")):
        if isinstance(c, dict) and isinstance(c.get("env"), dict):
            c["env"] = redact_env(c["env"])
    return {"schema": SCHEMA_VERSION, "created": utc_now(), "submitted_from": socket.gethostname(),
            "argv": redact_overrides(list(sys.argv)), "overrides": redacted,
            "run_dir": str(run_dir), "cluster": cluster, "job_id": job_id, "entrypoint": entrypoint,
            "git": git_state(repo), "packages": package_versions(), "config": config}


def write_manifest(run_dir: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``run_dir/manifest.json`` atomically (temp file + rename); returns its path."""
    path = Path(run_dir) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path


def record_placement(run_dir: str | Path, placement: dict[str, Any]) -> Path:
    """Add the run's placement (``rl.placement.describe``: nodes, their resources, the node of each
    trainer rank and rollout worker) to ``run_dir/manifest.json`` as ``"placement"``. A run that was
    not submitted (``rl.train`` directly) gets a manifest holding only that (and no overrides)."""
    path = Path(run_dir) / MANIFEST_NAME
    data = json.loads(path.read_text()) if path.is_file() else {"schema": SCHEMA_VERSION, "created": utc_now()}
    data["placement"] = placement
    return write_manifest(run_dir, data)


class ManifestError(ValueError):
    """A manifest file that cannot be used for a re-submission; the message says why."""


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load a manifest (a ``manifest.json`` file or the run directory holding one) and check it."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ManifestError(f"--from-manifest {path}: no such file (give a manifest.json or its run directory)")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ManifestError(f"--from-manifest {p}: not valid JSON ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("overrides"), list):
        raise ManifestError(f"--from-manifest {p}: not a dsa-rl manifest (no 'overrides' list)")
    if data.get("schema") != SCHEMA_VERSION:
        raise ManifestError(f"--from-manifest {p}: schema {data.get('schema')!r}, this version reads "
                            f"{SCHEMA_VERSION}")
    return data
