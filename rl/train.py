"""Entry point: ``python -m rl.train +experiment=math [overrides]``.

Hydra composes ``configs/train.yaml`` with the overrides, :func:`rl.config.to_config` validates
every value, and :func:`rl.loop.run` does the work. Any configuration mistake stops here, before
Ray, DeepSpeed or a model is touched, with one line naming the key, the value and what is allowed.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rl.config import ConfigError, StartupError, register_configs, to_config
from rl.device import cpu_thread_settings

# Without a GPU the trainer, the rollout workers and the reward workers share the machine's cores in
# turn: idle OpenMP threads must sleep, not spin for long (spinning halved throughput on two cores),
# but a short spin before sleeping (GNU OpenMP's GOMP_SPINCOUNT) keeps the trainer's threads awake
# between the many small ops of a training step: 0.76 -> 0.44 s per math step. With a GPU nothing is
# set (rl.device). Before torch loads.
for _key, _value in cpu_thread_settings().items():
    os.environ.setdefault(_key, _value)

register_configs()


def take_secret_env(argv: list[str]) -> list[str]:
    """Move secret ``cluster.env`` overrides (``+cluster.env.WANDB_API_KEY=...``; see
    :func:`rl.manifest.is_secret`) from ``argv`` into this process's environment, where they act.

    Hydra never sees their values, so they reach no file (``.hydra/*.yaml``, the wandb config and
    metadata, the manifest) and no printed config. Returns the remaining arguments.
    """
    from rl.manifest import secret_env_override

    kept = []
    for arg in argv:
        found = secret_env_override(arg)
        if found:
            os.environ[found[0]] = found[1]
        else:
            kept.append(arg)
    return kept


def _remove_run_dir(run_dir: str) -> None:
    """Remove the run directory Hydra made for a run that failed its config check (nothing else
    was written there yet), and its parents up to the working directory while they are empty."""
    path = Path(run_dir).resolve()
    if not path.is_dir() or not {p.name for p in path.iterdir()} <= {".hydra", "train.log"}:
        return
    shutil.rmtree(path, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in path.parents:
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        config = to_config(cfg)
    except ConfigError as err:
        _remove_run_dir(HydraConfig.get().runtime.output_dir)
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    from rl.preflight import PreflightError, check_inputs

    try:
        check_inputs(config)  # data files, model paths, resume: before Ray or a model is touched
    except PreflightError as err:
        _remove_run_dir(HydraConfig.get().runtime.output_dir)
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    run_dir = HydraConfig.get().runtime.output_dir
    from rl.loop import run  # heavy imports (torch, ray) only after the config is known good
    from rollout.pool import NodeLostError

    # SIGTERM (a scheduler's cancel, `kill`) unwinds like Ctrl-C, so the run shuts its Ray workers
    # down; the last complete checkpoint stays valid either way.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        run(config, run_dir)
    except StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except NodeLostError as err:  # a multi-node run lost a node: stop (rl.distributed says why)
        print(f"error: {err}; resume={config.resume or run_dir} continues from the last complete checkpoint",
              file=sys.stderr, flush=True)
        sys.exit(3)


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    sys.argv[1:] = take_secret_env(sys.argv[1:])
    if not any(a.startswith("-") for a in sys.argv[1:]):  # not --cfg / --help / --multirun ...
        # Compose once here: Hydra's own errors (an unknown key or group, a value of the wrong type)
        # become one line and exit status 2, before Hydra makes a run directory.
        from rl.submit import SubmitError, compose

        try:
            compose(sys.argv[1:])
        except SubmitError as err:
            print(str(err), file=sys.stderr)
            sys.exit(2)
    main()
