"""Atomic, resumable checkpoints of a :class:`~rl.trainer.Trainer`, and policy export.

Layout of a checkpoint directory::

    DIR/latest                  text: the name of the newest complete checkpoint ("step_00000012")
    DIR/step_00000012/state/    DeepSpeed's files (policy, optimizer and LR-scheduler states; ZeRO
                                partitions one file per rank)
    DIR/step_00000012/rng_rank{r}.pt   python / numpy / torch / device RNG and trainer generators
    DIR/step_00000012/meta.pt   step, world size, ZeRO stage and the caller's ``extra`` dict

Integrity: before the rename rank 0 writes ``checksums.json`` (size and SHA-256 of every file of the
checkpoint). :func:`load` verifies the checkpoint ``latest`` names; if a file is missing, truncated
or altered (a disk filled up, a copy cut short) it says so on stderr and falls back to the newest
earlier checkpoint that verifies. :func:`find_intact` is the same search without loading.

Atomicity: every rank writes into ``DIR/.partial-step_00000012``; after a barrier rank 0 renames
it to ``step_00000012`` (one ``os.replace``), then rewrites ``latest`` through a temporary file and
another ``os.replace``. A crash at any point leaves ``latest`` naming a complete earlier checkpoint
(partial directories are ignored by ``load`` and removed by the next ``save``). The directory must
be visible to every rank (one node, or a shared file system).

Export: :func:`gather_state_dict` collects full weights also under ZeRO-3 (a collective: every rank
must call it), :func:`export_pretrained` writes a ``save_pretrained`` directory (+ tokenizer)
that ``AutoModelForCausalLM.from_pretrained`` loads.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

LATEST = "latest"
STATE_TAG = "state"


CHECKSUMS = "checksums.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checksums(ckpt: Path) -> None:
    """Record size and SHA-256 of every file under ``ckpt`` in ``ckpt/checksums.json``."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    table = {str(p.relative_to(ckpt)): [p.stat().st_size, _sha256(p)] for p in files}
    with open(ckpt / CHECKSUMS, "w") as f:
        json.dump(table, f)
        f.flush()
        os.fsync(f.fileno())


def verify(ckpt: str | Path, *, full: bool = True) -> str | None:
    """Why checkpoint directory ``ckpt`` is not intact, or None when it is.

    Checks that ``meta.pt`` and every file in ``checksums.json`` exist with their recorded size
    and (``full``) SHA-256. A checkpoint without ``checksums.json`` (written by an older version)
    is accepted when its ``meta.pt`` exists.
    """
    ckpt = Path(ckpt)
    if not (ckpt / "meta.pt").is_file():
        return "meta.pt is missing"
    try:
        table = json.loads((ckpt / CHECKSUMS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        return f"{CHECKSUMS} cannot be read ({err})"
    for rel, (size, digest) in table.items():
        path = ckpt / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != size:
            return f"{rel} has {path.stat().st_size} bytes, {size} were written"
        if full and _sha256(path) != digest:
            return f"{rel} does not match its checksum"
    return None


def find_intact(directory: str | Path, *, full: bool = True) -> tuple[str | None, list[str]]:
    """``(tag, problems)``: the newest intact checkpoint (``latest``'s first, then older ones) and
    one line per damaged checkpoint passed over."""
    root = Path(directory)
    named = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else None
    tags = sorted((p.name for p in root.glob("step_*") if p.is_dir()), reverse=True)
    if named in tags:
        tags.remove(named)
        tags.insert(0, named)
    problems = []
    for tag in tags:
        why = verify(root / tag, full=full)
        if why is None:
            return tag, problems
        problems.append(f"checkpoint {root / tag} is damaged ({why})")
    return None, problems


def step_name(step: int) -> str:
    """Directory name of the checkpoint of ``step``."""
    return f"step_{step:08d}"


def _barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Every RNG state this process uses: python, numpy, torch CPU, each CUDA device, ``generators``."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "generators": {k: g.get_state() for k, g in generators.items()},
    }


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def save(trainer: Any, directory: str | Path, *, step: int, extra: dict[str, Any] | None = None,
         keep: int | None = None) -> Path:
    """Atomically write a checkpoint of ``trainer`` at ``step`` (collective: every rank calls it).

    Args:
        trainer: a :class:`~rl.trainer.Trainer` (uses ``engine``, ``rng_generators()``, ``ds``).
        directory: checkpoint root (created if missing).
        step: the caller's step counter (names the checkpoint; returned by :func:`load`).
        extra: any picklable state of the caller (data sampler, budget counters, ...).
        keep: keep only this many newest checkpoints (None keeps all).

    Returns:
        The final checkpoint directory.
    """
    root = Path(directory)
    name = step_name(step)
    partial = root / f".partial-{name}"
    final = root / name
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial.mkdir()
    _barrier()
    trainer.engine.save_checkpoint(str(partial), tag=STATE_TAG, save_latest=False)
    torch.save(rng_state(trainer.rng_generators()), partial / f"rng_rank{_rank()}.pt")
    if _rank() == 0:
        meta = {"step": step, "world_size": trainer.world_size, "zero_stage": trainer.ds.zero_stage,
                "extra": extra or {}}
        torch.save(meta, partial / "meta.pt")
    _barrier()
    if _rank() == 0:
        write_checksums(partial)
        _fsync_dir(partial)
        if final.exists():  # re-saving a step: move the old one aside, then drop it
            trash = root / f".partial-old-{name}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(partial, final)
        _fsync_dir(root)
        _write_atomic(root / LATEST, name)
        if keep is not None:
            for old in sorted(root.glob("step_*"))[:-keep]:
                if old.name != name:
                    shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def latest_tag(directory: str | Path) -> str | None:
    """Name of the newest complete checkpoint in ``directory``, or None."""
    path = Path(directory) / LATEST
    if not path.exists():
        return None
    tag = path.read_text().strip()
    return tag if (Path(directory) / tag / "meta.pt").exists() else None


def load(trainer: Any, directory: str | Path, *, tag: str | None = None) -> tuple[int, dict[str, Any]]:
    """Restore policy, optimizer, scheduler, RNG states of ``trainer`` (collective).

    Args:
        directory: a checkpoint root written by :func:`save`.
        tag: a checkpoint name (``step_00000012``); default: the one ``latest`` names.

    Returns:
        (step, extra) as given to :func:`save`.

    Raises:
        FileNotFoundError: no complete checkpoint.
    """
    root = Path(directory)
    if tag is None:
        tag, problems = find_intact(root)
        if problems and _rank() == 0:
            for line in problems:
                print(f"warning: {line}; " + (f"resuming from {tag}" if tag else "no earlier one is intact"),
                      file=sys.stderr, flush=True)
    if tag is None or not (root / tag / "meta.pt").exists():
        raise FileNotFoundError(f"no complete checkpoint in {root} (tag={tag!r})")
    meta = torch.load(root / tag / "meta.pt", weights_only=False)
    if meta["world_size"] != trainer.world_size:
        raise ValueError(f"checkpoint {root / tag} was written by {meta['world_size']} processes; "
                         f"this run has {trainer.world_size}: resume with the same deepspeed.num_processes")
    load_path, _ = trainer.engine.load_checkpoint(str(root / tag), tag=STATE_TAG, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
    if load_path is None:
        raise FileNotFoundError(f"DeepSpeed found no state in {root / tag / STATE_TAG}")
    state = torch.load(root / tag / f"rng_rank{_rank()}.pt", weights_only=False)
    set_rng_state(state, trainer.rng_generators())
    _barrier()
    return int(meta["step"]), meta["extra"]


def _is_zero3(p: Tensor) -> bool:
    return hasattr(p, "ds_id")


def gather_state_dict(module: nn.Module, *, rank0_only: bool = True) -> dict[str, Tensor]:
    """Full ``state_dict`` of ``module`` as CPU tensors, also when ZeRO-3 partitions it.

    A collective under ZeRO-3 (parameters are gathered one at a time with
    ``deepspeed.zero.GatheredParameters``; every rank must call this, in the same order).
    With ``rank0_only`` the ranks > 0 return an empty dict.
    """
    keep = not rank0_only or _rank() == 0
    params = dict(module.named_parameters())
    out: dict[str, Tensor] = {}
    for name, value in module.state_dict().items():
        p = params.get(name)
        if p is not None and _is_zero3(p):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                if keep:
                    out[name] = p.data.detach().to("cpu", copy=True)
        elif keep:
            out[name] = value.detach().to("cpu", copy=True)
    return out


def export_pretrained(module: nn.Module, directory: str | Path, *, tokenizer: Any = None) -> Path:
    """Write ``module`` (a ``PreTrainedModel``) as a ``save_pretrained`` directory, atomically.

    Collective under ZeRO-3 (the weights are gathered); rank 0 writes. The tokenizer, when given,
    is saved beside the weights so ``AutoTokenizer.from_pretrained(directory)`` works too.
    """
    out = Path(directory)
    state = gather_state_dict(module, rank0_only=True)
    if _rank() == 0:
        tmp = out.with_name(f".partial-{out.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        module.save_pretrained(tmp, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    _barrier()
    return out
