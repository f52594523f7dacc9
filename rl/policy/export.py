"""Export a DSA policy to DeepSeek-V3.2's checkpoint format: ``python -m rl.policy.export SRC DST``.

SRC is an MLA-based DSA policy directory (model_type ``dsa``: a run's ``final/``, a checkpoint
converted from DeepSeek-V3/V3.2 by ``python -m rl.policy.convert``); DST becomes a ``deepseek_v32``
directory that ``transformers.AutoModelForCausalLM.from_pretrained`` loads as
``DeepseekV32ForCausalLM`` and that the engines serving V3.2 read (see README, "DeepSeek-V3.2
checkpoints"). The work is `rl.policy.deepseek.export_deepseek_v32` (streamed shard by shard).

`write_final(save, directory, fmt)` is the run option ``model.final_format``: a run writes its
``final/`` in our ``dsa`` format, or in ``deepseek_v32`` (the ``dsa`` copy then goes to
``final_dsa/``, which ``resume``-free fine-tuning and ``model.path=`` can still read).
"""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from rl.policy.deepseek import CheckpointError, export_deepseek_v32

FINAL_FORMATS = ("dsa", "deepseek_v32")


def write_final(save: Callable[[Path], object], directory: str | Path, fmt: str = "dsa") -> Path:
    """Write a policy to `directory` in format `fmt` ("dsa" or "deepseek_v32"). `save(path)` writes the
    policy as a ``dsa`` directory (e.g. the trainer's ``export_pretrained``). Returns `directory`."""
    directory = Path(directory)
    if fmt not in FINAL_FORMATS:
        raise ValueError(f"final format {fmt!r}: allowed {FINAL_FORMATS}")
    if fmt == "dsa":
        save(directory)
        return directory
    native = directory.with_name(directory.name + "_dsa")
    save(native)
    if directory.exists():
        shutil.rmtree(directory)
    export_deepseek_v32(native, directory)
    return directory


def main(argv: list[str] | None = None) -> None:
    """CLI: python -m rl.policy.export SRC DST (SRC: a dsa policy directory; DST: the deepseek_v32 export)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("src")
    p.add_argument("dst")
    a = p.parse_args(argv)
    try:
        export_deepseek_v32(a.src, a.dst)
    except CheckpointError as err:
        sys.exit(f"error: {err}")
    print(f"exported {a.src} -> {a.dst} (deepseek_v32)")


if __name__ == "__main__":
    main()
