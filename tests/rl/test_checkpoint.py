"""Tests of rl.checkpoint: exact resume (in process and after SIGKILL of a real process), RNG and
extra state, atomic save under simulated crashes, retention, export under ZeRO-3."""
from __future__ import annotations

import functools
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _trainer_fixtures as fx

from rl import checkpoint
from rl.trainer import Trainer

HERE = Path(__file__).parent


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def trajs():
    return fx.sample_trajectories(fx.tiny_policy(seed=0))


def draws() -> tuple[float, float, float]:
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def two_updates(trajs) -> dict[str, torch.Tensor]:
    """The uninterrupted run: updates with advantages of seed 1 then seed 2."""
    trainer = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    trainer.train_step(trajs, fx.fixed_advantages(len(trajs), seed=1))
    trainer.train_step(trajs, fx.fixed_advantages(len(trajs), seed=2))
    return trainer.export_state_dict()


@pytest.mark.parametrize("stage", [0, 3])
def test_resume_is_exact_in_process(tmp_path, trajs, stage):
    a = Trainer(fx.tiny_policy, fx.algo(mini_batch_size=4, epochs_per_batch=2), fx.ds(stage))
    a.train_step(trajs, fx.fixed_advantages(len(trajs), seed=1))
    a.save(tmp_path, step=1, extra={"budget": {"tokens": 123}})
    after_save = draws()
    ma = a.train_step(trajs, fx.fixed_advantages(len(trajs), seed=2))
    wa = a.export_state_dict()

    b = Trainer(fx.tiny_policy, fx.algo(mini_batch_size=4, epochs_per_batch=2), fx.ds(stage))
    step, extra = b.load(tmp_path)
    assert (step, extra) == (1, {"budget": {"tokens": 123}})
    assert draws() == after_save  # python / numpy / torch RNG restored (and advanced as in `a`)
    assert b.global_step == 4
    mb = b.train_step(trajs, fx.fixed_advantages(len(trajs), seed=2))
    wb = b.export_state_dict()
    assert mb["loss"] == ma["loss"] and mb["lr"] == ma["lr"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_after_sigkill(tmp_path, trajs):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)  # the child is its own single-process group
    child = subprocess.Popen([sys.executable, str(HERE / "_ckpt_child.py"), str(tmp_path), "0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        for line in child.stdout:
            if line.strip() == "SAVED":
                break
        else:
            pytest.fail(f"child exited with {child.wait()} before saving")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    resumed = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    step, extra = resumed.load(tmp_path)
    assert (step, extra) == (1, {"sampler": {"epoch": 3, "index": 17}})
    resumed.train_step(trajs, fx.fixed_advantages(len(trajs), seed=2))
    got = resumed.export_state_dict()
    want = two_updates(trajs)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_crash_mid_save_leaves_latest_intact(tmp_path, trajs, monkeypatch):
    trainer = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    trainer.save(tmp_path, step=1)
    w1 = trainer.export_state_dict()
    trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))

    real_save = torch.save

    def crash_on_meta(obj, f, *a, **kw):
        if str(f).endswith("meta.pt"):
            raise OSError("simulated crash: disk full")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", crash_on_meta)
    with pytest.raises(OSError, match="simulated crash"):
        trainer.save(tmp_path, step=2)
    monkeypatch.undo()
    assert (tmp_path / ".partial-step_00000002").exists()  # DeepSpeed's files were half written
    assert checkpoint.latest_tag(tmp_path) == "step_00000001"

    # A crash after the rename but before `latest` is rewritten: latest still names step 1.
    monkeypatch.setattr(checkpoint, "_write_atomic", lambda *a: (_ for _ in ()).throw(OSError("crash")))
    with pytest.raises(OSError):
        trainer.save(tmp_path, step=2)
    monkeypatch.undo()
    assert checkpoint.latest_tag(tmp_path) == "step_00000001"
    assert not list(tmp_path.glob(".partial-*"))  # the next save cleared the stale partial

    fresh = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    fresh.train_step(trajs, fx.fixed_advantages(len(trajs), seed=5))  # move away, then load
    assert fresh.load(tmp_path)[0] == 1
    for k, v in fresh.export_state_dict().items():
        assert torch.equal(v, w1[k]), k


def test_retention_and_missing(tmp_path):
    trainer = Trainer(fx.tiny_policy, fx.algo(kl_coef=0.0), fx.ds(0))
    with pytest.raises(FileNotFoundError):
        trainer.load(tmp_path)
    for step in (1, 2, 3):
        trainer.save(tmp_path, step=step, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (tmp_path / "latest").read_text() == "step_00000003"


def test_export_under_zero3_loads_with_auto_classes(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl.policy.tokenizer import load_tokenizer

    tok = load_tokenizer()
    factory = functools.partial(fx.tiny_policy, vocab_size=len(tok))
    trajs = fx.sample_trajectories(factory(), num_prompts=1, group=4, max_new=6)
    weights = {}
    for stage in (0, 3):
        trainer = Trainer(factory, fx.algo(kl_coef=0.0), fx.ds(stage))
        trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
        weights[stage] = trainer.export_state_dict()
    out = trainer.export_pretrained(tmp_path / "export", tokenizer=tok)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "DSAForCausalLM"
    loaded = model.state_dict()
    assert loaded.keys() == weights[3].keys()
    for k, v in weights[3].items():
        assert torch.equal(loaded[k], v), k
        torch.testing.assert_close(v, weights[0][k], rtol=0, atol=1e-4)  # the same update as ZeRO-0
    assert len(AutoTokenizer.from_pretrained(out)) == len(tok)


def test_a_truncated_latest_checkpoint_falls_back_to_the_intact_previous_one(tmp_path, trajs, capfd):
    trainer = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    trainer.save(tmp_path, step=1)
    w1 = trainer.export_state_dict()
    trainer.train_step(trajs, fx.fixed_advantages(len(trajs)))
    trainer.save(tmp_path, step=2)
    assert checkpoint.find_intact(tmp_path) == ("step_00000002", [])
    biggest = max((p for p in (tmp_path / "step_00000002").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    data = biggest.read_bytes()
    biggest.write_bytes(data[: len(data) // 2])  # cut short, as by a full disk or a killed copy
    fresh = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    assert fresh.load(tmp_path)[0] == 1
    err = capfd.readouterr().err
    assert "step_00000002 is damaged" in err and "bytes" in err and "resuming from step_00000001" in err
    for k, v in fresh.export_state_dict().items():
        assert torch.equal(v, w1[k]), k
    # Same size, one byte altered: only the checksum can tell.
    biggest.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert checkpoint.verify(tmp_path / "step_00000002") == \
        f"{biggest.relative_to(tmp_path / 'step_00000002')} does not match its checksum"
    assert checkpoint.verify(tmp_path / "step_00000002", full=False) is None
    (tmp_path / "step_00000001" / "meta.pt").unlink()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        fresh.load(tmp_path)


@pytest.mark.slow
def test_trainer_killed_while_writing_a_checkpoint_resumes_from_the_last_intact_one(tmp_path, trajs):
    """SIGKILL lands in the middle of saving step 2 (a torn meta.pt in the partial directory):
    resume picks step 1, verified by its checksums, with exactly the weights it had."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    child = subprocess.Popen([sys.executable, str(HERE / "_ckpt_child.py"), str(tmp_path), "0", "mid-save"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        for line in child.stdout:
            if line.strip() == "WRITING":
                break
        else:
            pytest.fail(f"child exited with {child.wait()} before writing step 2")
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    assert (tmp_path / ".partial-step_00000002" / "meta.pt").read_bytes() == b"half a pickle"
    assert checkpoint.find_intact(tmp_path) == ("step_00000001", [])  # every file matches its checksum
    assert (tmp_path / "step_00000001" / checkpoint.CHECKSUMS).exists()
    resumed = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    step, extra = resumed.load(tmp_path)
    assert (step, extra) == (1, {"sampler": {"epoch": 3, "index": 17}})
    one = Trainer(fx.tiny_policy, fx.algo(), fx.ds(0))
    one.train_step(trajs, fx.fixed_advantages(len(trajs), seed=1))
    want = one.export_state_dict()
    for k, v in resumed.export_state_dict().items():
        assert torch.equal(v, want[k]), k
