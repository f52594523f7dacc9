"""benchmarks/grpo_vs_trl.py's pure helpers: argument defaults and checks, shared settings, the
Hydra overrides of our side, medians over rounds and the table (no run, no timing)."""
from __future__ import annotations

import pytest

from benchmarks import grpo_vs_trl as b


def test_mode_defaults_and_matched_settings():
    tiny = b.parse_args(["--policy", "/p"])
    assert (tiny.steps, tiny.prompts, tiny.group, tiny.max_new_tokens, tiny.test_size) == (10, 16, 8, 40, 200)
    m = b.matched(tiny)  # the README's tiny table: 128 samples in mini-batches of 64, no KL, top-p 1
    assert (m.updates, m.mini_batch, m.top_p, m.kl_coef, m.off_policy_delta) == (2, 64, 1.0, 0.0, None)
    smol = b.parse_args(["--model", "smollm2", "--steps", "2"])
    assert (smol.steps, smol.prompts, smol.group, smol.max_new_tokens, smol.lr, smol.test_size) == (2, 8, 8, 40, 5e-6, 50)
    m = b.matched(smol)
    assert (m.updates, m.mini_batch, m.top_p, m.kl_coef, m.off_policy_delta, m.extract) == (4, 16, 0.95, 0.01, 0.05, "last_number")
    assert b.matched(b.parse_args(["--model", "smollm2", "--extract", "strict"])).extract == "strict"
    assert b.matched(tiny).extract == "strict"
    assert m.system_prompt == b.SMOLLM2_SYSTEM and smol.argv == ["--model", "smollm2", "--steps", "2"]


@pytest.mark.parametrize("argv, message", [
    ([], "needs --policy"),
    (["--policy", "/p", "--prompts", "3"], "multiple of the mini-batch 64"),
    (["--model", "smollm2", "--prompts", "3", "--group", "3"], "multiple of --updates 4"),
    (["--model", "smollm2", "--rounds", "0"], "--rounds 0"),
])
def test_bad_arguments_name_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit):
        b.parse_args(argv)
    assert message in capsys.readouterr().err


def test_child_argv_drops_the_result_flag():
    args = b.parse_args(["--model", "smollm2", "--trl-only", "/tmp/r.json", "--steps", "1"])
    assert args.trl_only == "/tmp/r.json" and args.argv == ["--model", "smollm2", "--steps", "1"]


def test_our_overrides_quote_the_prompts():
    args = b.parse_args(["--model", "smollm2", "--index-topk", "512"])
    over = b.our_overrides(args, b.matched(args))
    assert over[:2] == ["model.path=gguf:smollm2", "model.index_topk=512"]
    assert "data.system_prompt=null" in over and f'data.prompt_template="{b.SMOLLM2_TEMPLATE}"' in over
    assert {"rollout.top_p=0.95", "algorithm.kl_coef=0.01", "algorithm.mini_batch_size=16",
            "++rewards.terms.correct.kwargs.extract=last_number"} <= set(over)
    # ours runs with the smollm_math experiment's engine settings: packing, whole groups, one worker
    assert {"algorithm.share_prefix=true", "algorithm.group_minibatches=true", "rollout.num_workers=1"} <= set(over)
    # both sides train on the smollm_math experiment's problems (levels 1-2)
    assert {"data.synth.levels=[1,2]", "data.synth.num_train=2000", "data.synth.max_operand=20"} <= set(over)
    with pytest.raises(ValueError, match="double quotes"):
        b._hydra_str('say "hi"')
    # tiny mode: +experiment=math now runs top-p 0.95 and KL 0.01; the README table's settings (and
    # TRL's side) are top-p 1 and no KL, so ours is told so
    tiny = b.parse_args(["--policy", "/p"])
    assert {"rollout.top_p=1.0", "algorithm.kl_coef=0.0"} <= set(b.our_overrides(tiny, b.matched(tiny)))


def _side(median, trained):
    return {"median": median, "s_per_step": median + 1, "rollout": 1.0, "reward": 0.1, "train": 2.0, "sync": 0.5,
            "trained": trained, "lenient": 0.5}


def test_summary_takes_medians_over_rounds_and_the_table_lists_them():
    rounds = [{"ours": _side(4.0, 0.2), "trl": _side(10.0, 0.2)},   # ratio 0.4
              {"ours": _side(6.0, 0.3), "trl": _side(10.0, 0.1)},   # 0.6
              {"ours": _side(3.0, 0.2), "trl": _side(12.0, 0.3)}]   # 0.25
    s = b.summarize(rounds)
    assert s["ours"]["median"] == 4.0 and s["trl"]["median"] == 10.0 and s["ours"]["trained"] == 0.2
    assert s["ratios"] == [0.4, 0.6, 0.25] and s["ratio"] == 0.4
    assert s["mean_ratio"] == pytest.approx(5 / 11)  # (5/11, 7/11, 4/13)
    assert s["gap"] == pytest.approx(0.0) and s["met"]  # gaps 0, +0.2, -0.1
    table = b.format_table(rounds, s).splitlines()
    assert len(table) == 2 + 2 * 3 + 2
    assert table[2] == "| 1 (dsa-rl first) | dsa-rl | 4.00 | 5.00 | 1.00 | 0.10 | 2.00 | 0.50 | 20.0% | 50.0% |"
    assert table[4].startswith("| 2 (TRL first) | dsa-rl | 6.00 |")
    assert table[-2].startswith("| median | dsa-rl | 4.00 |") and table[-1].startswith("|  | TRL | 10.00 |")
