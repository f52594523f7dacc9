"""Entry point: ``python -m rl.train +experiment=math [overrides]``.

Hydra composes ``configs/train.yaml`` with the overrides, :func:`rl.config.to_config` validates
every value, and :func:`rl.loop.run` does the work. Any configuration mistake stops here, before
Ray, DeepSpeed or a model is touched, with one line naming the key, the value and what is allowed.
"""
from __future__ import annotations

import os
import signal
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rl.config import ConfigError, register_configs, to_config
from rl.device import cpu_thread_settings

# Without a GPU the trainer, the rollout workers and the reward workers share the machine's cores in
# turn: idle OpenMP threads must sleep, not spin for long (spinning halved throughput on two cores),
# but a short spin before sleeping (GNU OpenMP's GOMP_SPINCOUNT) keeps the trainer's threads awake
# between the many small ops of a training step: 0.76 -> 0.44 s per math step. With a GPU nothing is
# set (rl.device). Before torch loads.
for _key, _value in cpu_thread_settings().items():
    os.environ.setdefault(_key, _value)

register_configs()


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        config = to_config(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        sys.exit(2)
    run_dir = HydraConfig.get().runtime.output_dir
    from rl.loop import run  # heavy imports (torch, ray) only after the config is known good
    from rl.setup import StartupError

    # SIGTERM (a scheduler's cancel, `kill`) unwinds like Ctrl-C, so the run shuts its Ray workers
    # down; the last complete checkpoint stays valid either way.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        run(config, run_dir)
    except StartupError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
