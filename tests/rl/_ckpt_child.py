"""Child process of the save / SIGKILL / resume test: one update, an atomic save, then it waits to
be killed (prints SAVED first). Usage: python _ckpt_child.py CKPT_DIR STAGE"""
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import _trainer_fixtures as fx

from rl.trainer import Trainer

if __name__ == "__main__":
    torch.set_num_threads(1)
    ckpt, stage = sys.argv[1], int(sys.argv[2])
    trajs = fx.sample_trajectories(fx.tiny_policy(seed=0))
    trainer = Trainer(fx.tiny_policy, fx.algo(), fx.ds(stage))
    trainer.train_step(trajs, fx.fixed_advantages(len(trajs), seed=1))
    trainer.save(ckpt, step=1, extra={"sampler": {"epoch": 3, "index": 17}})
    print("SAVED", flush=True)
    time.sleep(600)
