"""Synthesized math data: sizes, speed-independent determinism, disjoint splits, verified answers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from math_verify import parse, verify

from rl.config import DataConfig, SynthMathConfig
from rl.data import DataError, generate_math, is_test_problem, load_prompts, synth_math_dataset


@pytest.fixture(scope="module")
def full_set(tmp_path_factory: pytest.TempPathFactory):
    return synth_math_dataset(10_000, 1_000, [1, 2, 3, 4], seed=0, cache_dir=tmp_path_factory.mktemp("c"))


def test_sizes_and_disjoint_splits(full_set) -> None:
    train, test = full_set["train"], full_set["test"]
    assert (len(train), len(test)) == (10_000, 1_000)
    assert len(set(train["prompt"])) == 10_000 and len(set(test["prompt"])) == 1_000
    assert not set(train["prompt"]) & set(test["prompt"])
    assert all(is_test_problem(p) for p in test["prompt"])
    assert set(test["level"]) == {1, 2, 3, 4}


def test_every_answer_verifies_against_the_generator(full_set) -> None:
    for split in ("train", "test"):
        for row in full_set[split].select(range(0, len(full_set[split]), 7)):
            # The generator's own value, computed independently from the solution's last step.
            value = row["solution"].rstrip(".").split("= ")[-1]
            assert verify(parse(f"${value}$"), parse(f"\\boxed{{{row['answer']}}}")), row


def test_solutions_are_correct_arithmetic() -> None:
    train, _ = generate_math(300, 30, [1, 2, 3, 4], seed=3)
    for p in train:
        for step in p.solution.split(". "):
            lhs, rhs = step.rstrip(".").split(" = ")
            assert eval(lhs) == int(rhs), p
        assert p.solution.rstrip(".").split(" = ")[-1] == p.answer


def test_deterministic_by_seed_and_cached(tmp_path: Path) -> None:
    a = generate_math(50, 10, [1, 2], seed=1)
    assert a == generate_math(50, 10, [1, 2], seed=1)
    assert a != generate_math(50, 10, [1, 2], seed=2)
    first = synth_math_dataset(20, 5, [1], 0, tmp_path)
    assert len(list((tmp_path / "data").iterdir())) == 1
    assert synth_math_dataset(20, 5, [1], 0, tmp_path)["train"]["prompt"] == first["train"]["prompt"]


def test_level_4_is_a_word_problem_with_steps() -> None:
    train, _ = generate_math(5, 1, [4], seed=0)
    assert all("How many" in p.prompt and p.solution.count("=") >= 2 for p in train)


def test_bad_levels_and_too_small_space() -> None:
    with pytest.raises(DataError, match="allowed levels"):
        generate_math(5, 1, [7], seed=0)
    with pytest.raises(DataError, match="too few distinct problems"):
        generate_math(10**6, 10, [1], seed=0)


def test_local_json_file_with_column_mapping(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "gold": str(i), "extra": i} for i in range(5)]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = DataConfig(source=str(path), prompt_column="question", answer_column="gold", test_split=None)
    dd = load_prompts(cfg)
    assert dd["train"]["prompt"] == [r["question"] for r in rows]
    assert dd["train"]["answer"] == [r["gold"] for r in rows]
    assert dd["train"]["extra"] == list(range(5))


def test_local_parquet_file(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "d.parquet"
    datasets.Dataset.from_list([{"prompt": "p", "answer": "1"}]).to_parquet(str(path))
    assert load_prompts(DataConfig(source=str(path), test_split=None))["train"]["prompt"] == ["p"]


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_prompts(DataConfig(source=str(tmp_path / "missing.json")))
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"q": "x"}]))
    with pytest.raises(DataError, match="has splits \\['train'\\]"):
        load_prompts(DataConfig(source=str(path)))
    with pytest.raises(DataError, match="no column 'prompt'"):
        load_prompts(DataConfig(source=str(path), test_split=None))
    with pytest.raises(DataError, match="could not load it as a hub data set"):
        load_prompts(DataConfig(source="no-such-org/no-such-dataset-xyz"))


def test_synth_source_uses_config(tmp_path: Path) -> None:
    cfg = DataConfig(synth=SynthMathConfig(num_train=30, num_test=6, levels=[1]), cache_dir=str(tmp_path))
    dd = load_prompts(cfg)
    assert (len(dd["train"]), len(dd["test"])) == (30, 6)
