"""Child process of the save / SIGKILL / resume test: one update, an atomic save, then it waits to
be killed (prints SAVED first). Usage: python _ckpt_child.py CKPT_DIR STAGE [mid-save]

With ``mid-save`` it then makes a second update and starts saving step 2, and hangs inside that
save (after DeepSpeed's files, while writing ``meta.pt``; prints WRITING): the parent kills it
in the middle of writing a checkpoint."""
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
    if sys.argv[3:4] == ["mid-save"]:
        from rl import checkpoint

        trainer.train_step(trajs, fx.fixed_advantages(len(trajs), seed=2))
        real_save = checkpoint.torch.save

        def hang_in_meta(obj, f, *a, **kw):
            if str(f).endswith("meta.pt"):
                with open(f, "wb") as out:
                    out.write(b"half a pickle")  # a torn file where the kill lands
                print("WRITING", flush=True)
                time.sleep(600)
            return real_save(obj, f, *a, **kw)

        checkpoint.torch.save = hang_in_meta
        trainer.save(ckpt, step=2)
    time.sleep(600)
