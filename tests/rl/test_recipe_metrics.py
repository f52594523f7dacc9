"""The metrics that show each recipe part acting (rl.loop.recipe_metrics / recipe_summary), the
evaluator's extra readings, and the cold start's prompts (hand-computed values)."""
from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from rl.loop import recipe_metrics, recipe_summary
from rollout.types import Trajectory, kept_sizes, pack_mask


def _traj(length: int, prompt_len: int, kept: list[int] | None) -> Trajectory:
    """A trajectory whose sampled token at position p kept ``kept[p - prompt_len]`` ids of a 10-word vocabulary."""
    loss_mask = torch.arange(length) >= prompt_len
    mask = None
    if kept is not None:
        rows = torch.zeros(length, 10, dtype=torch.bool)
        for i, n in enumerate(kept):
            rows[prompt_len + i, :n] = True
        mask = pack_mask(rows)
    return Trajectory(tokens=torch.zeros(length, dtype=torch.long), prompt_len=prompt_len, loss_mask=loss_mask,
                      logprobs=torch.zeros(length), completion="", finish_reason="stop", weight_version=0,
                      sampling_mask=mask)


def test_kept_sizes_count_the_kept_ids():
    rows = torch.zeros(3, 19, dtype=torch.bool)
    rows[0, [0, 8, 18]] = True
    rows[2] = True
    assert kept_sizes(pack_mask(rows)).tolist() == [3, 0, 19]


def test_kept_set_sizes_and_the_sparse_share():
    # positions 3..6 sampled (kept 1, 2, 3, 4 ids) and 2..3 (kept 10, 10); index_topk 4: the token at
    # position p is produced by the query that sees p keys, sparse when p > 4 -> positions 5, 6 only.
    trajs = [_traj(7, 3, [1, 2, 3, 4]), _traj(4, 2, [10, 10])]
    cfg = SimpleNamespace(attention_mode="sparse", index_topk=4)
    m = recipe_metrics(trajs, cfg)
    assert m["rollout/kept_set_mean"] == (1 + 2 + 3 + 4 + 10 + 10) / 6
    assert m["rollout/kept_set_max"] == 10
    assert m["rollout/sparse_token_frac"] == 2 / 6
    dense = recipe_metrics(trajs, SimpleNamespace(attention_mode="dense", index_topk=4))
    assert dense["rollout/sparse_token_frac"] == 0.0
    untruncated = recipe_metrics([_traj(7, 3, None)], cfg)
    assert "rollout/kept_set_mean" not in untruncated


def test_recipe_summary_means_what_was_logged():
    history = [{"step": 0, "eval/greedy_accuracy": 0.1},
               {"step": 1, "train/kl": 0.0, "train/clip_frac_high": 0.5},
               {"step": 2, "train/kl": 0.02, "train/clip_frac_high": float("nan")}]
    assert recipe_summary(history) == {"train/kl": 0.01, "train/clip_frac_high": 0.5}


def test_teacher_examples_use_the_runs_prompt_ids():
    from rl.coldstart import encode_chat, teacher_examples
    from rl.policy.tokenizer import load_tokenizer

    tok = load_tokenizer()
    row = {"prompt": "What is 1 + 2?", "answer": "3", "solution": "1 + 2 = 3."}
    plain = teacher_examples(tok, [row], 0.0, random.Random(0))[0]
    assert plain == encode_chat(tok, row["prompt"], "<think>1 + 2 = 3.</think>\\boxed{3}")
    head = [7, 8, 9]
    ids, mask = teacher_examples(tok, [{**row, "prompt_ids": head}], 0.0, random.Random(0))[0]
    assert ids[:3] == head and mask[:3] == [0, 0, 0] and ids[3:] == plain[0][-len(ids[3:]):]


def test_the_summary_table_shows_the_recipe_and_the_stage_times():
    from rl.loop import format_summary

    summary = {"before": {"eval/greedy_accuracy": 0.1, "eval/greedy_lenient": 0.3},
               "after": {"eval/greedy_accuracy": 0.4, "eval/greedy_lenient": 0.5},
               "recipe": {"train/kl": 0.002, "rollout/kept_set_mean": 3.5},
               "stage_seconds": {"convert": 12.4, "rl": 300.2},
               "budget": {"budget/seconds": 310.0, "budget/samples": 64, "budget/flops": 1e12},
               "stopped": "max_steps", "steps": 2, "run_dir": "RUN"}
    text = format_summary(summary)
    assert "greedy_lenient               0.300     0.500" in text
    assert "recipe (mean over steps): kl 0.002, kept_set_mean 3.5" in text
    assert "wall time: convert 12 s, rl 300 s" in text


def test_evaluation_scores_each_reading_of_the_same_answers():
    from rl.evaluate import scores

    # 2 prompts x 2 samples; the strict term is trained, the lenient one has weight 0
    per_term = {"correct": [1.0, 0.0, 0.0, 0.0], "lenient": [1.0, 1.0, 0.0, 1.0]}
    totals = [1.0, 0.0, 0.0, 0.0]
    assert scores("sampled", per_term, totals, "correct", 2) == {
        "eval/sampled_accuracy": 0.25, "eval/sampled_reward": 0.25, "eval/pass@2": 0.5}
    assert scores("greedy", per_term, totals, "correct", 1) == {
        "eval/greedy_accuracy": 0.25, "eval/greedy_reward": 0.25, "eval/greedy_lenient": 0.75}


def test_the_summary_table_shows_validation_and_the_selected_step():
    from rl.loop import format_summary

    summary = {"before": {"eval/greedy_accuracy": 0.1}, "after": {"eval/greedy_accuracy": 0.4},
               "validation": {"before": {"val/greedy_accuracy": 0.2}, "after": {"val/greedy_accuracy": 0.5}},
               "selected_step": 8, "last": {"eval/greedy_accuracy": 0.35},
               "budget": {"budget/seconds": 310.0, "budget/samples": 64, "budget/flops": 1e12},
               "stopped": "max_steps", "steps": 16, "run_dir": "RUN"}
    text = format_summary(summary)
    assert "validation greedy_accuracy     0.200     0.500" in text
    assert "after = the validation-best policy, step 8 of 16 (keep_best); the last step's greedy accuracy: 0.350" in text
