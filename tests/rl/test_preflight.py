"""Bad inputs to ``python -m rl.train``: exit status 2, one line naming the problem, before Ray
starts, and no ``outputs/`` directory left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rl.config import TrainConfig
from rl.preflight import PreflightError, check_inputs

REPO = Path(__file__).resolve().parents[2]


def _cfg(**data) -> TrainConfig:
    cfg = TrainConfig()
    for k, v in data.items():
        obj, *path = k.split(".")
        setattr(getattr(cfg, obj), path[0], v) if path else setattr(cfg, obj, v)
    return cfg


@pytest.fixture
def bad_inputs(tmp_path) -> dict[str, tuple[list[str], str]]:
    """name -> (overrides, a fragment the one line must hold)."""
    (tmp_path / "corrupt.jsonl").write_text('{"prompt": "a", "answer": "1"}\n{"prompt": "b", "answ\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp_path / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "list.jsonl").write_text('[1, 2]\n')
    (tmp_path / "bad.parquet").write_text("not parquet")
    (tmp_path / "nomodel").mkdir()
    empty_run = tmp_path / "empty_run"
    (empty_run / "checkpoints").mkdir(parents=True)
    cut_run = tmp_path / "cut_run" / "checkpoints" / "step_00000001"
    cut_run.mkdir(parents=True)
    (cut_run / "meta.pt").write_bytes(b"x" * 10)
    (cut_run / "checksums.json").write_text(json.dumps({"meta.pt": [100, "0" * 64]}))
    return {
        "corrupt jsonl line": ([f"data.source={tmp_path}/corrupt.jsonl"], "line 2 is not valid JSON"),
        "empty jsonl": ([f"data.source={tmp_path}/empty.jsonl"], "the file is empty"),
        "blank jsonl": ([f"data.source={tmp_path}/blank.jsonl"], "holds no rows"),
        "binary file": ([f"data.source={tmp_path}/binary.jsonl"], "binary data"),
        "not utf-8": ([f"data.source={tmp_path}/latin1.jsonl"], "not UTF-8"),
        "json list line": ([f"data.source={tmp_path}/list.jsonl"], "not an object"),
        "bad parquet": ([f"data.source={tmp_path}/bad.parquet"], "not a parquet file"),
        "missing data file": ([f"data.source={tmp_path}/nope.jsonl"], "no such file"),
        "unknown preset": (["model.preset=abc"], "is not a preset"),
        "missing model dir": ([f"model.path={tmp_path}/no_such_model"], "no such directory"),
        "model dir without config": ([f"model.path={tmp_path}/nomodel"], "no config.json"),
        "missing gguf file": ([f"model.path=gguf:{tmp_path}/no.gguf"], "no GGUF file at"),
        "resume without checkpoints dir": ([f"resume={tmp_path}"], "no checkpoints/ directory"),
        "resume, empty checkpoints": ([f"resume={empty_run}"], "holds no complete checkpoint"),
        "resume, only a truncated one": ([f"resume={tmp_path / 'cut_run'}"], "meta.pt has 10 bytes, 100 were written"),
    }


def test_check_inputs_names_each_problem(bad_inputs):
    for name, (overrides, fragment) in bad_inputs.items():
        key, value = overrides[0].split("=", 1)
        with pytest.raises(PreflightError) as info:
            check_inputs(_cfg(**{key: value}))
        msg = str(info.value)
        assert fragment in msg and "\n" not in msg and msg.startswith(key), (name, msg)


def test_good_inputs_pass(tmp_path):
    (tmp_path / "ok.jsonl").write_text('{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": "2"}\n')
    (tmp_path / "doc.json").write_text('[\n {"prompt": "a", "answer": "1"}\n]\n')
    for source in (f"{tmp_path}/ok.jsonl", f"{tmp_path}/doc.json", "synth_math", "some-org/some-hub-set"):
        check_inputs(_cfg(**{"data.source": source}))


@pytest.mark.slow
def test_rl_train_bad_inputs_end_to_end(bad_inputs, tmp_path):
    """The real entry point: exit 2, one stderr line, no Ray, no outputs/ left (about 5 s each)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for name, (overrides, fragment) in bad_inputs.items():
        start = time.monotonic()
        res = subprocess.run([sys.executable, "-m", "rl.train", "logger=none", *overrides], capture_output=True,
                             text=True, env=env, cwd=tmp_path, timeout=300, check=False)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "real_accelerator" not in ln]
        assert res.returncode == 2 and len(lines) == 1 and fragment in lines[0], (name, res.stderr[-2000:])
        assert "ray" not in res.stdout.lower() + lines[0].lower() or "ray" in fragment
        assert not (tmp_path / "outputs").exists(), name
        assert time.monotonic() - start < 60, name
