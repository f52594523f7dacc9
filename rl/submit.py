"""Submit a training run to a cluster: ``python -m rl.submit cluster=ray_job|slurm [overrides]``.

The overrides are ``rl.train``'s (same config tree, composed and validated here first), plus the
``cluster`` group. Everything that can be checked on this machine is checked before anything is
submitted: the config values, the Ray address (``ray_job``), the partition and the GPU counts
(``slurm``); each failure is one line on stderr and exit status 2.

* ``cluster=ray_job``: the Ray Jobs API (``JobSubmissionClient``) at ``cluster.address`` or
  ``$RAY_ADDRESS`` (the dashboard, ``http://HEAD:8265``). The runtime environment uploads this
  repository as the working directory (without ``.venv``, ``outputs``, ``wandb``, ``.git``) and sets
  ``cluster.env`` plus a few forwarded variables (:data:`FORWARD_ENV`). Inside the job,
  ``rl.train`` joins the job's cluster (``rl.cluster.init_ray``: plain ``RAY_ADDRESS`` from Ray).
* ``cluster=slurm``: renders an sbatch script (:func:`render_sbatch`, from ``rl/templates/sbatch.sh``),
  saves it beside the manifest and submits it with ``sbatch`` (or prints it with ``--dry-run``).

Every submission writes ``manifest.json`` (:mod:`rl.manifest`) into the run directory
(``outputs/<experiment>/<timestamp>``, absolute; or the ``hydra.run.dir=`` override), which is also
the job's Hydra run dir, so ``summary.json`` and the checkpoints land beside it. That directory must
be visible to the job: the same machine, or a shared filesystem.

Job control: ``--follow`` (stream logs until the job ends; exit status 0 only on success),
``--list``, ``--logs ID``, ``--status ID``, ``--stop ID`` (with ``cluster=...`` to say where), and
``--from-manifest PATH`` (re-submit a manifest's overrides, plus any new ones, to a new run dir).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rl.config import ClusterConfig, ConfigError, TrainConfig, register_configs, to_config
from rl.manifest import (
    REDACTED,
    ManifestError,
    build_manifest,
    is_secret,
    read_manifest,
    redact_overrides,
    write_manifest,
)

REPO = Path(__file__).resolve().parent.parent
"""The repository that is submitted (its ``configs/`` is the config tree)."""
RAY_EXCLUDES = [".venv", "outputs", "wandb", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache",
                ".ruff_cache", "multirun"]
"""Paths left out of the Ray job's working-directory upload."""
FORWARD_ENV = ("DSA_RL_CACHE", "WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY", "HF_HOME", "HF_HUB_OFFLINE",
               "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "DS_ACCELERATOR", "TORCH_EXTENSIONS_DIR")
"""Variables copied from the submitting shell into a Ray job when set (``cluster.env`` wins)."""
SLURM_DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
              "BOOT_FAIL", "DEADLINE"}


class SubmitError(RuntimeError):
    """A submission that must not go ahead; the message is one line naming the input and the fix."""


# ---- configuration ------------------------------------------------------------------------------
def compose(overrides: list[str]) -> TrainConfig:
    """Compose ``configs/train.yaml`` with ``overrides`` (``hydra.*`` ones left out) and validate it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = hydra_compose("train", overrides=[o for o in overrides if not _is_hydra(o)])
    except (HydraException, OmegaConfBaseException) as err:
        lines = [ln.strip() for ln in str(err).split("Config search path")[0].splitlines() if ln.strip()]
        raise SubmitError(f"config error: {lines[0]}" + (f" ({' '.join(lines[1:])})" if lines[1:] else "")) from err
    try:
        return to_config(cfg)
    except ConfigError as err:
        raise SubmitError(f"config error: {err}") from err
    except OmegaConfBaseException as err:  # e.g. an interpolation to a key that does not exist
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        key = getattr(err, "full_key", None)
        raise SubmitError(f"config error: {key + ': ' if key else ''}{first}") from err


def _is_hydra(override: str) -> bool:
    return override.lstrip("+~").startswith("hydra.")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def run_dir_for(cfg: TrainConfig, overrides: list[str], now: _dt.datetime | None = None) -> Path:
    """The run's output directory: ``hydra.run.dir=`` if given, else ``outputs/<experiment>/<time>``
    under the current directory (a ``_N`` suffix avoids an existing one); absolute."""
    given = [o.split("=", 1)[1] for o in overrides if _key(o) == "hydra.run.dir"]
    if given:
        return Path(given[-1]).expanduser().resolve()
    stamp = (now or _dt.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    base = Path("outputs", cfg.experiment, stamp).resolve()
    path, n = base, 0
    while path.exists():
        n += 1
        path = base.with_name(f"{stamp}_{n}")
    return path


def _carries_secret(override: str) -> bool:
    """A ``cluster.env`` override whose value is a secret (secret-looking name, or a whole-dict
    ``cluster.env={...}`` naming one): it must not reach a command line, a file or the Ray head."""
    key = _key(override)
    if key == "cluster.env":
        return redact_overrides([override]) != [override]
    return key.startswith("cluster.env.") and is_secret(key[len("cluster.env."):])


def secret_env(cluster: ClusterConfig) -> dict[str, str]:
    """The ``cluster.env`` entries with secret-looking names (see :func:`rl.manifest.is_secret`)."""
    return {str(k): str(v) for k, v in cluster.env.items() if is_secret(str(k))}


def train_command(overrides: list[str], run_dir: Path, extra: list[str] = ()) -> str:
    """The shell command of the job: ``python -m rl.train`` with the overrides, the run dir and
    ``extra`` (already shell-ready, e.g. ``cluster.address="$head_ip:$port"``). Secret
    ``cluster.env`` overrides are left out: the job gets them as environment variables."""
    drop = {"hydra.run.dir", "cluster.address"} if extra else {"hydra.run.dir"}
    kept = [shlex.quote(o) for o in overrides if _key(o) not in drop and not _carries_secret(o)]
    return " ".join(["python", "-m", "rl.train", *kept, *extra, shlex.quote(f"hydra.run.dir={run_dir}")])


def needs_gpus(cfg: TrainConfig) -> bool:
    """True when the run asks for GPUs (resources or ``device=cuda``)."""
    res = cfg.resources
    return res.gpus_per_trainer > 0 or res.gpus_per_worker > 0 or cfg.device == "cuda"


def check_slurm_resources(cfg: TrainConfig) -> None:
    """GPU counts of a Slurm run: a GPU run needs ``cluster.gpus_per_node``, and the actors must fit."""
    c, res = cfg.cluster, cfg.resources
    if needs_gpus(cfg) and c.gpus_per_node == 0:
        asked = (f"resources.gpus_per_trainer={res.gpus_per_trainer:g}" if res.gpus_per_trainer > 0 else
                 f"resources.gpus_per_worker={res.gpus_per_worker:g}" if res.gpus_per_worker > 0 else "device=cuda")
        raise SubmitError(f"{asked} asks for GPUs but cluster.gpus_per_node=0: set cluster.gpus_per_node "
                          "to the GPUs of each node (or use resources.gpus_per_*=0 for a CPU run)")
    for name, per in (("gpus_per_trainer", res.gpus_per_trainer), ("gpus_per_worker", res.gpus_per_worker)):
        if per > c.gpus_per_node:
            raise SubmitError(f"resources.{name}={per:g} is more than cluster.gpus_per_node={c.gpus_per_node}: "
                              "one actor must fit on one node")
    trainers = cfg.deepspeed.num_processes
    need = trainers * res.gpus_per_trainer + cfg.rollout.num_workers * res.gpus_per_worker
    if need > c.nodes * c.gpus_per_node:
        raise SubmitError(f"the actors need {need:g} GPUs ({trainers} trainers x {res.gpus_per_trainer:g} + "
                          f"{cfg.rollout.num_workers} rollout workers x {res.gpus_per_worker:g}) but cluster.nodes="
                          f"{c.nodes} x cluster.gpus_per_node={c.gpus_per_node} = {c.nodes * c.gpus_per_node}")


def slurm_partitions() -> list[str]:
    """The partitions this Slurm cluster knows (``sinfo``)."""
    try:
        res = subprocess.run(["sinfo", "-h", "-o", "%R"], check=False, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as err:
        raise SubmitError("sinfo not found: cluster=slurm needs the Slurm client commands on PATH "
                          "(or use --dry-run to only print the script)") from err
    if res.returncode != 0:
        raise SubmitError(f"sinfo failed ({res.stderr.strip() or res.returncode}): is slurmctld reachable?")
    return sorted({p.strip() for p in res.stdout.split() if p.strip()})


def check_partition(partition: str | None, *, required: bool = True) -> None:
    """``partition`` must be one ``sinfo`` lists; ``required=False`` (dry runs) skips the check with a
    note on stderr when Slurm cannot be asked."""
    if partition is None:
        return
    try:
        known = slurm_partitions()
    except SubmitError as err:
        if required:
            raise
        print(f"note: cluster.partition not checked ({str(err).splitlines()[0]})", file=sys.stderr)
        return
    if partition not in known:
        raise SubmitError(f"cluster.partition={partition!r} is not a partition of this Slurm cluster "
                          f"(partitions: {', '.join(known) or 'none'})")


def ray_address(cluster: ClusterConfig) -> str:
    """The Ray dashboard address of a ``ray_job`` submission: ``cluster.address`` or ``$RAY_ADDRESS``."""
    address = cluster.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("cluster=ray_job needs the head's dashboard address: cluster.address=http://HEAD:8265 "
                          "or RAY_ADDRESS")
    return address


def ray_client(address: str):
    """A ``JobSubmissionClient`` for ``address``, after checking that something answers there."""
    from rl.cluster import check_reachable
    from rl.config import StartupError

    try:
        check_reachable(address)
    except StartupError as err:
        raise SubmitError(str(err).replace("unset cluster.address for a local cluster",
                                           "check cluster.address / RAY_ADDRESS")) from err
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as err:  # ConnectionError, AuthenticationError, ... (depends on the head)
        hint = ("; the head requires token authentication: set RAY_AUTH_MODE=token with its token, or start "
                "the head with RAY_AUTH_MODE=disabled") if "auth" in (type(err).__name__ + str(err)).lower() else ""
        raise SubmitError(f"cluster.address={address!r}: the Ray Jobs API did not answer ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}){hint}") from err


def job_env(cluster: ClusterConfig) -> dict[str, str]:
    """Environment variables of the job: :data:`FORWARD_ENV` that are set here, then ``cluster.env``."""
    env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
    env.update({str(k): str(v) for k, v in cluster.env.items() if not is_secret(str(k))})
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def render_sbatch(cfg: TrainConfig, train_cmd: str, run_dir: Path, repo: Path = REPO) -> str:
    """The sbatch script of a Slurm run (``rl/templates/sbatch.sh`` filled in from ``cfg.cluster``).

    ``train_cmd`` is the driver's command (:func:`train_command`); ``cluster.env`` is exported, except
    secret-looking variables, which (like the rest of the submitting shell's environment) reach the
    job through sbatch's default ``--export=ALL`` from sbatch's own environment: the script, a
    world-readable file, never holds them.
    """
    c = cfg.cluster
    extra = "".join(f"#SBATCH --{k}={v}\n" for k, v in (("gpus-per-node", c.gpus_per_node or None),
                                                        ("partition", c.partition), ("account", c.account))
                    if v is not None)
    values = {
        "JOB_NAME": f"dsa-rl-{cfg.experiment}", "NODES": str(c.nodes), "TIME": c.time, "SBATCH_EXTRA": extra,
        "RUN_DIR": shlex.quote(str(run_dir)), "REPO": shlex.quote(str(repo)), "SETUP": "".join(f"{line}\n" for line in c.setup),
        "EXPORTS": "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in c.env.items() if not is_secret(str(k)))
        + (f"# from sbatch's environment (secrets, not written here): {' '.join(sorted(secret_env(c)))}\n"
           if secret_env(c) else ""),
        "SRUN_GPUS": f"--gpus-per-node={c.gpus_per_node} " if c.gpus_per_node else "",
        "RAY_PORT": str(c.ray_port), "GPUS": str(c.gpus_per_node), "WAIT_S": str(c.wait_nodes_s),
        "HEAD_ARGS": " ".join(map(shlex.quote, c.ray_head_args)),
        "WORKER_ARGS": " ".join(map(shlex.quote, c.ray_worker_args)), "TRAIN": train_cmd,
    }
    bad = [k for k in c.env if not k.isidentifier()]
    if bad:
        raise SubmitError(f"cluster.env: {bad[0]!r} is not a valid environment variable name")
    text = (Path(__file__).parent / "templates" / "sbatch.sh").read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    return text


# ---- submission ---------------------------------------------------------------------------------
def submit(overrides: list[str], *, dry_run: bool = False, say=print) -> dict[str, Any]:
    """Validate, then submit (see module docstring). Returns the manifest (``{}`` on a dry run)."""
    cfg = compose(overrides)
    kind = cfg.cluster.kind
    if kind == "local":
        raise SubmitError("cluster.kind=local: nothing to submit; add cluster=ray_job or cluster=slurm "
                          "(or run `python -m rl.train` here)")
    run_dir = run_dir_for(cfg, overrides)
    user = [o for o in overrides if _key(o) != "hydra.run.dir"]
    if kind == "slurm":
        check_slurm_resources(cfg)
        if not dry_run and shutil.which("sbatch") is None:
            raise SubmitError("sbatch not found: cluster=slurm needs the Slurm client commands on PATH "
                              "(or use --dry-run to only print the script)")
        check_partition(cfg.cluster.partition, required=not dry_run)
        script = render_sbatch(cfg, train_command(user, run_dir, ['cluster.address="$head_ip:$port"']), run_dir)
        if dry_run:
            say(script)
            return {}
        return _submit_slurm(cfg, user, run_dir, script, say)
    if secret_env(cfg.cluster):
        names = ", ".join(f"cluster.env.{k}" for k in sorted(secret_env(cfg.cluster)))
        raise SubmitError(f"{names}: a secret is not sent through the Ray Jobs API (the head keeps a job's "
                          "runtime env in plain text); export it on the Ray cluster's nodes before `ray start`, "
                          "or use cluster=slurm")
    address = ray_address(cfg.cluster)
    client = ray_client(address)
    entrypoint = train_command(user, run_dir)
    runtime_env = {"working_dir": str(REPO), "excludes": RAY_EXCLUDES, "env_vars": job_env(cfg.cluster)}
    if dry_run:
        say(f"address: {address}\nentrypoint: {entrypoint}\nruntime_env: {runtime_env}")
        return {}
    job_id = f"dsa-rl-{cfg.experiment}-{run_dir.name}-{uuid.uuid4().hex[:6]}"
    manifest = _manifest(cfg, user, run_dir, {"kind": kind, "address": address}, job_id, entrypoint)
    path = write_manifest(run_dir, manifest)
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env=runtime_env,
                          metadata={"run_dir": str(run_dir), "experiment": cfg.experiment})
    except Exception as err:
        path.unlink(missing_ok=True)
        _rmdir_if_empty(run_dir)
        raise SubmitError(f"the Ray head at {address} refused the job ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from err
    say(f"job id: {job_id}\nrun dir: {run_dir}\nmanifest: {path}")
    return manifest


def _manifest(cfg: TrainConfig, overrides: list[str], run_dir: Path, cluster: dict[str, Any], job_id: str | None,
              entrypoint: str) -> dict[str, Any]:
    return build_manifest(overrides=overrides, config=asdict(cfg), cluster={**asdict(cfg.cluster), **cluster},
                          run_dir=run_dir, repo=REPO, job_id=job_id, entrypoint=entrypoint)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def _submit_slurm(cfg: TrainConfig, overrides: list[str], run_dir: Path, script: str, say) -> dict[str, Any]:
    run_dir.mkdir(parents=True, exist_ok=True)
    script_path = run_dir / "submit.sbatch"
    script_path.write_text(script)
    manifest = _manifest(cfg, overrides, run_dir, {"kind": "slurm", "script": str(script_path)}, None,
                         f"sbatch {script_path}")
    path = write_manifest(run_dir, manifest)
    res = subprocess.run(["sbatch", "--parsable", "--export=ALL", str(script_path)], check=False, capture_output=True, text=True,
                         timeout=120, env={**os.environ, **secret_env(cfg.cluster)})
    if res.returncode != 0:
        path.unlink(missing_ok=True)
        script_path.unlink(missing_ok=True)
        _rmdir_if_empty(run_dir)
        why = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit status {res.returncode}"
        raise SubmitError(f"sbatch refused the job: {why}")
    manifest["job_id"] = res.stdout.strip().split(";")[0]
    write_manifest(run_dir, manifest)
    say(f"job id: {manifest['job_id']}\nrun dir: {run_dir}\nmanifest: {path}\n"
        f"log: {run_dir}/slurm-{manifest['job_id']}.out")
    return manifest


# ---- job control --------------------------------------------------------------------------------
def follow(cluster: ClusterConfig, job_id: str, run_dir: str | None = None, say=print) -> str:
    """Stream the job's log until it ends; returns its final state (``SUCCEEDED`` / ``COMPLETED`` ...)."""
    if cluster.kind == "slurm":
        return _follow_slurm(job_id, Path(run_dir) / f"slurm-{job_id}.out" if run_dir else slurm_stdout(job_id), say)
    import asyncio

    client = ray_client(ray_address(cluster))

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(tail())
    while not (status := client.get_job_status(job_id)).is_terminal():
        time.sleep(1)
    return str(status.value)


def _slurm_job(job_id: str) -> dict[str, str]:
    """``scontrol show job`` fields of a job (empty once Slurm has forgotten it)."""
    res = subprocess.run(["scontrol", "show", "job", "-o", job_id], check=False, capture_output=True, text=True,
                         timeout=60)
    return dict(part.split("=", 1) for part in res.stdout.split() if "=" in part)


def slurm_state(job_id: str) -> str | None:
    """A Slurm job's state (``RUNNING``, ``COMPLETED`` ...; None once Slurm has forgotten it)."""
    return _slurm_job(job_id).get("JobState")


def slurm_stdout(job_id: str) -> Path | None:
    """The file a Slurm job writes its output to."""
    out = _slurm_job(job_id).get("StdOut")
    return Path(out) if out else None


def _follow_slurm(job_id: str, log: Path | None, say) -> str:
    offset, state = 0, None
    while True:
        state = slurm_state(job_id)
        if log is not None and log.exists():
            with log.open() as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            if chunk:
                print(chunk, end="", flush=True)
        if state is None or state in SLURM_DONE:
            return state or "UNKNOWN"
        time.sleep(2)


def control(args: argparse.Namespace, cluster: ClusterConfig, say=print) -> int:
    """``--list`` / ``--logs [--follow]`` / ``--status`` / ``--stop``; returns the exit status."""
    if args.logs and args.follow:
        state = follow(cluster, args.logs)
        say(f"job {args.logs}: {state}")
        return 0 if state in ("SUCCEEDED", "COMPLETED") else 1
    if cluster.kind == "slurm":
        if args.list:
            res = subprocess.run(["squeue", "-h", "-o", "%i %j %T %M %R"], check=False, capture_output=True, text=True)
            for line in res.stdout.splitlines():
                if line.split()[1].startswith("dsa-rl"):
                    say(line)
            return res.returncode
        if args.stop:
            return subprocess.run(["scancel", args.stop], check=False).returncode
        if args.status:
            say(slurm_state(args.status) or "UNKNOWN")
            return 0
        log = slurm_stdout(args.logs)
        if log is None or not log.exists():
            raise SubmitError(f"no log for Slurm job {args.logs} (unknown job, or its output file is gone)")
        say(log.read_text(), end="")
        return 0
    if cluster.kind != "ray_job":
        raise SubmitError("job control needs cluster=ray_job (with cluster.address / RAY_ADDRESS) or cluster=slurm")
    client = ray_client(ray_address(cluster))
    if args.list:
        for job in client.list_jobs():
            say(f"{job.submission_id}  {job.status.value:9s}  {job.entrypoint[:100]}")
    elif args.stop:
        say(f"{args.stop}: {'stop requested' if client.stop_job(args.stop) else 'not running'}")
    elif args.status:
        say(str(client.get_job_status(args.status).value))
    else:
        say(client.get_job_logs(args.logs), end="")
    return 0


def wait_for_nodes(address: str, want: int, timeout_s: float) -> int:
    """Block until ``want`` Ray nodes are alive at ``address`` (HOST:PORT); used by the sbatch script."""
    import socket

    host, _, port = address.rpartition(":")
    end = time.monotonic() + timeout_s
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            break
        except OSError:
            if time.monotonic() > end:
                raise SubmitError(f"the Ray head {address} did not come up within {timeout_s:g} s") from None
            time.sleep(1)
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        while (n := sum(1 for node in ray.nodes() if node["Alive"])) < want:
            if time.monotonic() > end:
                raise SubmitError(f"only {n} of {want} Ray nodes joined {address} within {timeout_s:g} s")
            time.sleep(2)
    finally:
        ray.shutdown()
    return n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rl.submit", description=__doc__.splitlines()[0],
                                     epilog="Other arguments are Hydra overrides, as for `python -m rl.train`.")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the job; submit nothing")
    parser.add_argument("--follow", action="store_true",
                        help="stream the job's logs until it ends (after submitting, or with --logs JOB_ID)")
    parser.add_argument("--from-manifest", metavar="PATH", help="re-submit the overrides of a manifest.json")
    parser.add_argument("--list", action="store_true", help="list jobs")
    parser.add_argument("--logs", metavar="JOB_ID", help="print a job's logs")
    parser.add_argument("--status", metavar="JOB_ID", help="print a job's state")
    parser.add_argument("--stop", metavar="JOB_ID", help="stop a job")
    parser.add_argument("--wait-nodes", nargs=3, metavar=("ADDRESS", "N", "SECONDS"), help=argparse.SUPPRESS)
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if o.startswith("-")]
    if bad:
        parser.error(f"unknown option {bad[0]}")
    try:
        if args.wait_nodes:
            n = wait_for_nodes(args.wait_nodes[0], int(args.wait_nodes[1]), float(args.wait_nodes[2]))
            print(f"ray: {n} nodes up at {args.wait_nodes[0]}", flush=True)
            return 0
        if args.list or args.logs or args.status or args.stop:
            return control(args, compose(overrides).cluster)
        if args.from_manifest:
            old = read_manifest(args.from_manifest)
            print(f"re-submitting {args.from_manifest} (commit {old['git'].get('commit')}, now "
                  f"{'same' if old['git'] == _git_now() else 'different'} code)", file=sys.stderr)
            dropped = [o for o in old["overrides"] if REDACTED in o]
            if dropped:
                print(f"note: left out redacted overrides (set them again): {' '.join(dropped)}", file=sys.stderr)
            overrides = [o for o in old["overrides"] if _key(o) != "hydra.run.dir" and o not in dropped] + overrides
        manifest = submit(overrides, dry_run=args.dry_run)
        if args.follow and manifest:
            state = follow(compose(overrides).cluster, manifest["job_id"], manifest["run_dir"])
            print(f"job {manifest['job_id']}: {state}", flush=True)
            return 0 if state in ("SUCCEEDED", "COMPLETED") else 1
        return 0
    except (SubmitError, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _git_now() -> dict[str, Any]:
    from rl.manifest import git_state

    return git_state(REPO)


if __name__ == "__main__":
    sys.exit(main())
