"""Problem by problem: two policies' greedy answers on an experiment's held-out and validation rows.

A run's summary gives accuracies; this says which problems moved. Both policies (``save_pretrained``
directories, e.g. the cached cold start and a run's ``final/``) decode the experiment's rows
greedily, scored by its trained reward; per set, the table gives each policy's count of right
answers, the problems that went wrong -> right and right -> wrong, and the standard error of the
paired difference (``sqrt(up + down - (up - down)^2 / n) / n``).

Run: python -m benchmarks.smollm_heldout BEFORE_DIR AFTER_DIR [--experiment smollm_math]
(the data settings, prompt and reward are the experiment's; ``DSA_RL_CACHE`` as for the run)
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path


def paired(before: list[bool], after: list[bool]) -> dict[str, float]:
    """Counts and the paired difference's standard error (in points) for one set of problems."""
    n = len(before)
    up = sum((not b) and a for b, a in zip(before, after))
    down = sum(b and (not a) for b, a in zip(before, after))
    se = math.sqrt(max(up + down - (up - down) ** 2 / n, 0.0)) / n
    return {"n": n, "before": sum(before), "after": sum(after), "up": up, "down": down,
            "diff": 100 * (sum(after) - sum(before)) / n, "se": 100 * se}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--experiment", default="smollm_math")
    a = p.parse_args(argv)

    import torch
    from hydra import compose, initialize_config_dir
    from transformers import AutoModelForCausalLM

    from rl.config import register_configs, to_config
    from rl.policy.tokenizer import load_tokenizer
    from rl.setup import reward_runner
    from rl.sources import load_data, make_source
    from rollout.engine import EngineConfig, RolloutEngine
    from rollout.sampling import SamplingParams

    register_configs()
    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
        cfg = to_config(compose(config_name="train", overrides=[f"+experiment={a.experiment}"]))
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_actor)))
    tok = load_tokenizer(a.before)
    source = make_source(cfg, tok, load_data(cfg))
    sets = {"held-out": source.test_rows or [], "validation": source.val_rows or []}
    rows = sets["held-out"] + sets["validation"]
    rewards = reward_runner(cfg)
    term = next(iter(cfg.rewards.terms))
    right = {}
    try:
        for name, path in (("before", a.before), ("after", a.after)):
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            engine = RolloutEngine(model, tok, EngineConfig.from_config(cfg.rollout, record_routes=False,
                                                                        record_topk=False))
            trajs = source.generate(engine, rows, SamplingParams.from_config(cfg.rollout, greedy=True), 1, cfg.seed)
            result = rewards.score(*source.reward_inputs(rows, trajs))
            right[name] = [v > 0 for v in result.per_term[term]]
    finally:
        rewards.close()
    n_test = len(sets["held-out"])
    parts = {"held-out": slice(0, n_test), "validation": slice(n_test, len(rows)), "both": slice(0, len(rows))}
    print(f"{'set':<12}{'n':>5}{'before':>8}{'after':>7}{'diff (pts)':>12}{'se':>6}{'wrong->right':>14}{'right->wrong':>14}")
    for name, part in parts.items():
        if part.stop > part.start:
            r = paired(right["before"][part], right["after"][part])
            print(f"{name:<12}{r['n']:>5}{r['before']:>8}{r['after']:>7}{r['diff']:>+12.1f}{r['se']:>6.1f}"
                  f"{r['up']:>14}{r['down']:>14}")


if __name__ == "__main__":
    main()
