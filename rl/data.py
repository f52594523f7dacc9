"""Prompt data sets: the embedded synthesized math generator, local files and hub data sets.

Every source ends as a ``datasets.DatasetDict`` with ``train`` (and ``test`` when configured) whose
rows have at least ``prompt`` (str) and, when the source has one, ``answer`` (str); other columns
pass through to the rewards and environments as fields.

The embedded synthesized math (``rl.synth_math``) is cached on disk as a data set here. The data
set is a pure function of (seed, levels, sizes).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rl.paths import default_cache_dir
from rl.synth_math import (
    LEVELS,
    MAX_OPERAND,
    DataError,
    MathProblem,
    generate_math,
    is_test_problem,
    iter_problems,
)

if TYPE_CHECKING:
    import datasets

    from rl.config import DataConfig

__all__ = ["LEVELS", "DataError", "MathProblem", "default_cache_dir", "generate_math", "is_test_problem",
           "iter_problems", "load_prompts", "synth_math_dataset"]


def synth_math_dataset(num_train: int, num_test: int, levels: list[int], seed: int,
                       cache_dir: str | Path | None = None, max_operand: int = MAX_OPERAND) -> datasets.DatasetDict:
    """The synthesized math set as a ``DatasetDict``, generated once and cached on disk."""
    import datasets

    key = json.dumps({"v": 1, "n": num_train, "t": num_test, "levels": sorted(levels), "seed": seed, "m": max_operand},
                     sort_keys=True)
    path = Path(cache_dir or default_cache_dir()) / "data" / (
        "synth_math-" + hashlib.sha256(key.encode()).hexdigest()[:16])
    if (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    train, test = generate_math(num_train, num_test, levels, seed, max_operand)
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([asdict(p) for p in train]),
        "test": datasets.Dataset.from_list([asdict(p) for p in test]),
    })
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    dd.save_to_disk(str(tmp))
    if path.exists():  # another process finished first; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, path)  # atomic: readers never see half a data set
    return dd


_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def check_file(source: str) -> None:
    """Read a local data file once and raise :class:`DataError` (one line, with the line number)
    when it cannot be a data set: empty, binary or not UTF-8, a JSON Lines line that is not a JSON
    object, a parquet file without its magic bytes. Cheap enough to run before anything starts."""
    path = Path(source).expanduser()
    if path.suffix not in _FILE_BUILDERS:
        raise DataError(f"data.source={source!r}: unsupported file type {path.suffix!r}; "
                        f"use one of {sorted(_FILE_BUILDERS)}")
    where = f"data.source={source!r}"
    if path.stat().st_size == 0:
        raise DataError(f"{where}: the file is empty; give a file with at least one row")
    if path.suffix == ".parquet":
        with open(path, "rb") as f:
            head = f.read(4)
            f.seek(max(0, path.stat().st_size - 4))
            if path.stat().st_size < 8 or head != b"PAR1" or f.read(4) != b"PAR1":
                raise DataError(f"{where}: not a parquet file (no PAR1 magic bytes); check the file or its suffix")
        return
    with open(path, "rb") as f:
        if b"\0" in f.read(8192):
            raise DataError(f"{where}: binary data (a NUL byte near the start), not a text {path.suffix} file")
    if path.suffix == ".json":  # one JSON document (a list of rows, or columns), or JSON Lines
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise DataError(f"{where}: not UTF-8 text (byte {err.start}): re-save the file as UTF-8") from None
        except (ValueError, RecursionError):
            doc = None  # not one document: read as JSON Lines below
        if doc is not None:
            if not isinstance(doc, (list, dict)) or not doc:
                raise DataError(f"{where}: the JSON document is {'empty' if not doc else 'a ' + type(doc).__name__}; "
                                "give a list of row objects or JSON Lines")
            return
    rows = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{where}: line {n} is not UTF-8 text (byte {err.start}): re-save the file "
                                "as UTF-8") from None
            if not line.strip():
                continue
            rows += 1
            if path.suffix in (".jsonl", ".json"):
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError) as err:
                    raise DataError(f"{where}: line {n} is not valid JSON ({str(err)[:120]}); fix or remove it") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{where}: line {n} is a JSON {type(obj).__name__}, not an object "
                                    '{"prompt": ..., ...}; one object per line')
    if rows == 0:
        raise DataError(f"{where}: the file holds no rows (only blank lines)")


def _load_source(source: str) -> datasets.DatasetDict:
    import datasets

    path = Path(source).expanduser()
    looks_local = path.suffix in _FILE_BUILDERS or source.startswith((".", "/", "~"))
    if path.is_dir() and (path / "dataset_dict.json").exists():
        return datasets.load_from_disk(str(path))
    if path.is_file():
        check_file(source)
        try:
            return datasets.load_dataset(_FILE_BUILDERS[path.suffix], data_files={"train": str(path)})
        except Exception as err:  # pyarrow / datasets errors: many types, long messages
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise DataError(f"data.source={source!r}: could not be read as {_FILE_BUILDERS[path.suffix]} "
                            f"({type(err).__name__}: {first})") from err
    if looks_local:
        raise DataError(f"data.source={source!r}: no such file or directory; give an existing "
                        ".json/.jsonl/.parquet/.csv file, a save_to_disk directory or a hub data set id")
    try:
        return datasets.load_dataset(source)
    except Exception as err:  # hub errors are many types; the message is what matters
        raise DataError(f"data.source={source!r}: could not load it as a hub data set "
                        f"({type(err).__name__}: {err}); check the id, or set HF_HUB_OFFLINE=0") from err


def load_prompts(cfg: DataConfig) -> datasets.DatasetDict:
    """Load the configured data as a DatasetDict with ``prompt`` and ``answer`` columns.

    Columns are renamed from ``cfg.prompt_column`` / ``cfg.answer_column``. A file source with a
    single split gives ``train`` only; then ``test_split`` must be unset or present.
    """
    if cfg.source == "synth_math":
        s = cfg.synth
        return synth_math_dataset(s.num_train, s.num_test, list(s.levels), s.seed, cfg.cache_dir, s.max_operand)
    raw = _load_source(cfg.source)
    out = {}
    wanted = {"train": cfg.train_split, "test": cfg.test_split}
    for name, split in wanted.items():
        if split is not None and split not in raw:
            raise DataError(f"data.{name}_split={split!r}: {cfg.source!r} has splits {sorted(raw)}; "
                            f"pick one of them" + (" or set data.test_split=null" if name == "test" else ""))
    for name, split in wanted.items():
        if split is None:
            continue
        ds = raw[split]
        renames = {cfg.prompt_column: "prompt"}
        if cfg.answer_column is not None:
            renames[cfg.answer_column] = "answer"
        for col in renames:
            if col not in ds.column_names:
                raise DataError(f"data.source={cfg.source!r} has no column {col!r} (columns: "
                                f"{ds.column_names}); set data.prompt_column / data.answer_column")
        out[name] = ds.rename_columns({k: v for k, v in renames.items() if k != v})
    import datasets

    return datasets.DatasetDict(out)


@dataclass
class PromptSampler:
    """Seeded, resumable order over a data set: a fresh permutation per epoch."""

    size: int
    seed: int
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("the training split is empty: check data.source and data.train_split")
        self._shuffle()

    def _shuffle(self) -> None:
        self._order = list(range(self.size))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(self._order)

    def next_batch(self, n: int) -> list[int]:
        """The next ``n`` row indices (wrapping into a new epoch as needed)."""
        out = []
        while len(out) < n:
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._shuffle()
            take = min(n - len(out), self.size - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._shuffle()
