"""Prompt data sets: the embedded synthesized math generator, local files and hub data sets.

Every source ends as a ``datasets.DatasetDict`` with ``train`` (and ``test`` when configured) whose
rows have at least ``prompt`` (str) and, when the source has one, ``answer`` (str); other columns
pass through to the rewards and environments as fields.

Synthesized math: integer arithmetic and short multi-step word problems with exact answers.

- Level 1: one addition or subtraction of numbers up to ``max_operand`` (default 99).
- Level 2: one multiplication (a one-digit by a larger number) or a three-term sum/difference.
- Level 3: two operations with precedence, e.g. ``(a + b) * c`` or ``a * b - c``.
- Level 4: a two- or three-step word problem.

Each problem carries a short worked ``solution`` (one step per operation) for supervised cold
starts. The data set is a pure function of (seed, levels, sizes). Train and test are disjoint by
construction: a problem's split is decided by a hash of its text, so no prompt is in both.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import datasets

    from rl.config import DataConfig

LEVELS = (1, 2, 3, 4)
TEST_FRACTION_MOD = 10  # a problem is a test problem when hash % 10 == 0 (about 10% of the space)


class DataError(ValueError):
    """A data source that cannot be loaded; the message names the source and the fix."""


@dataclass(frozen=True)
class MathProblem:
    prompt: str
    """The question as the user asks it."""
    answer: str
    """The exact answer (an integer, as text)."""
    solution: str
    """A worked solution, one ``a op b = c.`` step per operation."""
    level: int
    """Difficulty level (see the module docstring)."""


def _step(a: int, op: str, b: int) -> tuple[int, str]:
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return value, f"{a} {op} {b} = {value}."


def _level1(rng: random.Random, m: int) -> MathProblem:
    a, b, op = rng.randint(0, m), rng.randint(0, m), rng.choice("+-")
    value, step = _step(a, op, b)
    return MathProblem(f"What is {a} {op} {b}?", str(value), step, 1)


def _level2(rng: random.Random, m: int) -> MathProblem:
    if rng.random() < 0.5:
        a, b = rng.randint(2, 9), rng.randint(min(10, m), m)
        if rng.random() < 0.5:
            a, b = b, a
        value, step = _step(a, "*", b)
        return MathProblem(f"What is {a} * {b}?", str(value), step, 2)
    a, b, c = rng.randint(min(10, m), m), rng.randint(min(10, m), m), rng.randint(min(10, m), m)
    op1, op2 = rng.choice("+-"), rng.choice("+-")
    v1, s1 = _step(a, op1, b)
    v2, s2 = _step(v1, op2, c)
    return MathProblem(f"What is {a} {op1} {b} {op2} {c}?", str(v2), f"{s1} {s2}", 2)


def _level3(rng: random.Random, m: int) -> MathProblem:
    a, b, c = rng.randint(2, min(30, m)), rng.randint(2, min(30, m)), rng.randint(2, 9)
    if rng.random() < 0.5:
        op = rng.choice("+-")
        v1, s1 = _step(a, op, b)
        v2, s2 = _step(v1, "*", c)
        return MathProblem(f"What is ({a} {op} {b}) * {c}?", str(v2), f"{s1} {s2}", 3)
    op = rng.choice("+-")
    v1, s1 = _step(c, "*", a)
    v2, s2 = _step(v1, op, b)
    return MathProblem(f"What is {c} * {a} {op} {b}?", str(v2), f"{s1} {s2}", 3)


_NAMES = ("Ada", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivan", "Juno", "Kai", "Lena")
_ITEMS = ("apples", "books", "coins", "marbles", "pens", "stamps", "cards", "shells")


def _level4(rng: random.Random, m: int) -> MathProblem:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    start, bags, per_bag = rng.randint(min(5, m), min(60, m)), rng.randint(2, 9), rng.randint(2, min(12, m))
    v1, s1 = _step(bags, "*", per_bag)
    v2, s2 = _step(start, "+", v1)
    if rng.random() < 0.5:
        return MathProblem(
            f"{name} has {start} {item} and buys {bags} boxes with {per_bag} {item} each. "
            f"How many {item} does {name} have now?", str(v2), f"{s1} {s2}", 4)
    gone = rng.randint(1, v2)
    v3, s3 = _step(v2, "-", gone)
    return MathProblem(
        f"{name} has {start} {item}, buys {bags} boxes with {per_bag} {item} each, "
        f"then gives away {gone}. How many {item} are left?", str(v3), f"{s1} {s2} {s3}", 4)


GENERATORS: dict[int, Callable[[random.Random, int], MathProblem]] = {
    1: _level1, 2: _level2, 3: _level3, 4: _level4}


def is_test_problem(prompt: str) -> bool:
    """The split of a problem, a pure function of its text (so splits can never overlap)."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(digest[:4], "little") % TEST_FRACTION_MOD == 0


def iter_problems(seed: int, levels: tuple[int, ...] | list[int],
                  max_operand: int = 99) -> Iterator[MathProblem]:
    """An endless deterministic stream of problems, levels drawn uniformly from ``levels``.

    ``max_operand`` caps the numbers a problem states (multipliers stay single-digit)."""
    bad = [lv for lv in levels if lv not in GENERATORS]
    if bad or not levels:
        raise DataError(f"data.synth.levels={list(levels)} is invalid: allowed levels are {list(LEVELS)}")
    if max_operand < 12:
        raise DataError(f"data.synth.max_operand={max_operand} is invalid: must be >= 12")
    rng = random.Random(seed)
    while True:
        yield GENERATORS[rng.choice(list(levels))](rng, max_operand)


def generate_math(num_train: int, num_test: int, levels: tuple[int, ...] | list[int],
                  seed: int, max_operand: int = 99) -> tuple[list[MathProblem], list[MathProblem]]:
    """Unique problems for each split, disjoint across splits.

    Raises:
        DataError: when the levels' problem space is too small for the sizes asked.
    """
    train: dict[str, MathProblem] = {}
    test: dict[str, MathProblem] = {}
    misses = 0
    for problem in iter_problems(seed, levels, max_operand):
        split = test if is_test_problem(problem.prompt) else train
        limit = num_test if split is test else num_train
        if problem.prompt in split or len(split) >= limit:
            misses += 1  # consecutive draws that added nothing: the space is (nearly) exhausted
            if misses > 50_000:
                raise DataError(
                    f"data.synth: levels {list(levels)} have too few distinct problems for "
                    f"{num_train} train + {num_test} test; lower the sizes or add levels")
            continue
        split[problem.prompt] = problem
        misses = 0
        if len(train) >= num_train and len(test) >= num_test:
            return list(train.values()), list(test.values())
    raise AssertionError("unreachable")


def default_cache_dir() -> Path:
    """``$DSA_RL_CACHE`` or ``~/.cache/dsa-rl``."""
    return Path(os.environ.get("DSA_RL_CACHE", Path.home() / ".cache" / "dsa-rl"))


def synth_math_dataset(num_train: int, num_test: int, levels: list[int], seed: int,
                       cache_dir: str | Path | None = None, max_operand: int = 99) -> datasets.DatasetDict:
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
