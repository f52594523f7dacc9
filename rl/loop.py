"""The GRPO loop: prompts -> rollouts -> rewards -> advantages -> update -> weight sync -> account.

``run(config, run_dir)`` is what ``python -m rl.train`` calls. ``rl.setup.build_run`` checks every
input before any work (data, registry and reward names, Ray address, budget) and returns the run's
parts (``Run``). Then, per step:

1. sample B prompts (seeded, resumable order: ``run.sampler``), 2. G rollouts each on the Ray
workers (``run.source.rollout`` on ``run.pool``), 3. score them with the reward terms
(``run.rewards``), 4. group-relative advantages, 5. the DeepSpeed trainer's updates
(``run.trainer.train_step``), 6. sync the new weights (version + 1) to every worker, 7. account
the budget, log, evaluate (``run.evaluator``) and checkpoint on schedule. The run stops at the first
budget limit, evaluates once more, writes the summary (``summary.json``), a plot (``progress.png``)
and the final policy (``final/``). With ``keep_best`` each evaluation also scores the validation
rows, and the run ends with the validation-best policy (``rl.best``): the figures after RL and
``final/`` are that policy's; the last step's held-out greedy accuracy is kept beside them.

The run's task source (``rl.sources``) says what a prompt and a rollout are: one completion of a
data set prompt, or (``env.name`` set, ``+experiment=agent``) one multi-turn tool-use episode in a
synthesized environment, scored by its verifier. Everything else is the same for both.

Departures from V3.2: there is no separate reference-model service (the trainer keeps a frozen
copy when ``kl_coef > 0``); weights reach the workers through the Ray object store, or a
``torch.distributed`` broadcast from the driver (``rollout.weight_sync=broadcast``).
"""
from __future__ import annotations

import json
import time
from typing import Any

import torch

from rl.advantages import get_advantage
from rl.best import BestPolicy
from rl.config import TrainConfig
from rl.evaluate import plot_history
from rl.setup import Run, build_run
from rollout.types import kept_sizes


def run(cfg: TrainConfig, run_dir: str) -> dict[str, Any]:
    """Run GRPO until the budget is spent; returns the summary."""
    run = build_run(cfg, run_dir)
    algo, B, G = cfg.algorithm, cfg.rollout.prompts_per_step, cfg.algorithm.group_size
    advantage = get_advantage(algo.advantage)
    history, step = run.history, run.step
    best = BestPolicy.resume(run.dir / "best", step) if cfg.keep_best else None
    try:
        clock = time.perf_counter()
        if step == 0:
            history.append({"step": 0, **run.evaluator(run.trainer.export_state_dict(), 0, sampled=True)})
            history[-1].update(_validate(run, best, 0))
            run.say(f"before RL: {_fmt(history[-1])}")
        run.stage_seconds["eval_before"] = time.perf_counter() - clock
        clock = time.perf_counter()
        with run.progress as bar:
            task = bar.add_task("grpo", total=1000, info="")
            while (reason := run.budget.exhausted()) is None:
                t0 = time.perf_counter()
                rows = [run.source.train_rows[i] for i in run.sampler.next_batch(B)]
                trajs = run.source.rollout(run.pool, rows, run.sampling, G)
                t1 = time.perf_counter()
                group_rows = [r for r in rows for _ in range(G)]
                result = run.rewards.score(*run.source.reward_inputs(group_rows, trajs))
                rewards = torch.tensor(result.totals, dtype=torch.float32)
                group_ids = torch.arange(B).repeat_interleave(G)
                adv = advantage(rewards, group_ids, scale_by_std=algo.scale_by_std)
                t2 = time.perf_counter()
                metrics = run.trainer.train_step(trajs, adv)
                t3 = time.perf_counter()
                step += 1
                run.pool.sync_weights(run.trainer.export_state_dict(), version=step)  # rollout.weight_sync
                run.budget.add_step(run.model_config, [len(t.tokens) for t in trajs],
                                    sum(t.num_sampled for t in trajs), algo.epochs_per_batch, algo.kl_coef > 0)
                m = {"step": step, **_step_metrics(trajs, result, metrics), **run.source.metrics(trajs),
                     **recipe_metrics(trajs, run.model_config),
                     **run.budget.metrics(),
                     "time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "time/train_s": t3 - t2,
                     "time/sync_s": time.perf_counter() - t3,
                     "rollout/tokens_per_s": sum(t.num_sampled for t in trajs) / max(t1 - t0, 1e-9)}
                if step % cfg.eval_every == 0:
                    m.update(run.evaluator(run.trainer.export_state_dict(), step))
                    m.update(_validate(run, best, step))
                history.append(m)
                run.logger.log(m, step)
                bar.update(task, completed=int(1000 * run.budget.fraction_done()), info=_fmt(m))
                if step % cfg.checkpoint_every == 0:
                    _checkpoint(run, step, best)
        run.stage_seconds["rl"] = time.perf_counter() - clock
        clock = time.perf_counter()
        last, selected = _last_and_selected(run, best, step)
        final = run.evaluator(None if selected else run.trainer.export_state_dict(), step, sampled=True)
        run.stage_seconds["eval_after"] = time.perf_counter() - clock
        history.append({"step": step, **final, **({"selected_step": best.step} if selected else {})})
        # the selected policy's figures under selected/ (eval/ at this step is the last policy's)
        run.logger.log({k.replace("eval/", "selected/", 1): v for k, v in final.items()} if selected else final, step)
        _checkpoint(run, step, best)
        summary = _summary(run, history, reason, step, last=last if selected else None)
        run.say(f"after RL: {_fmt(history[-1])}")
        print(format_summary(summary), flush=True)
        return summary
    finally:
        run.close()


def _validate(run: Run, best: BestPolicy | None, step: int) -> dict[str, float]:
    """``keep_best``: the validation metrics of the weights the evaluator holds (just evaluated on
    the held-out rows), offered to ``best``; {} otherwise."""
    if best is None:
        return {}
    m = run.evaluator(None, step, split="val")
    if best.offer(step, m["val/greedy_accuracy"], lambda d: _save_evaluated(run, d)):
        run.say(f"step {step}: best validation greedy accuracy so far ({m['val/greedy_accuracy']:.3f}), kept in {best.path}")
    return m


def _save_evaluated(run: Run, directory: Any) -> None:
    """Write the weights the evaluator holds as a ``save_pretrained`` directory (+ tokenizer)."""
    from rl.checkpoint import export_pretrained

    export_pretrained(run.evaluator.model, directory, tokenizer=run.tokenizer)


def _last_and_selected(run: Run, best: BestPolicy | None, step: int) -> tuple[dict[str, float], bool]:
    """At the end of a ``keep_best`` run: validate the last policy if its step was not, and when an
    earlier policy wins, the last one's held-out greedy metrics (before the evaluator takes the
    winner's weights). Returns (those metrics, whether the run ends with an earlier policy)."""
    if best is None:
        return {}, False
    validated = next((h for h in run.history if h.get("step") == step and "val/greedy_accuracy" in h), None)
    if validated is None:  # the last step was not an evaluation step (or a resumed run did not log it)
        last = run.evaluator(run.trainer.export_state_dict(), step)
        extra = {**last, **_validate(run, best, step)}
        run.history[-1].update(extra)
        run.logger.log(extra, step)
    else:
        last = {k: v for k, v in validated.items() if k.startswith("eval/greedy")}
    if best.step is not None and best.step < step:
        best.load_into(run.evaluator.model)
        run.say(f"keep_best: ending with the policy of step {best.step} (validation greedy accuracy "
                f"{best.accuracy:.3f}); the last step's held-out greedy accuracy is {last['eval/greedy_accuracy']:.3f}")
        return last, True
    return {}, False


def _checkpoint(run: Run, step: int, best: BestPolicy | None = None) -> None:
    """Everything a resume needs: the trainer's state plus the sampler, budget, history and weight
    version (and, with ``keep_best``, the kept policy stays on disk until a later checkpoint)."""
    extra = {"sampler": run.sampler.state_dict(), "budget": run.budget.state_dict(),
             "history": run.history, "weight_version": step}
    run.trainer.save(run.dir / "checkpoints", step=step, extra=extra, keep=2)
    if best is not None:
        best.checkpointed()


def _step_metrics(trajs, result, metrics: dict[str, float]) -> dict[str, float]:
    lengths = [t.num_sampled for t in trajs]
    out = {f"train/{k}": v for k, v in metrics.items()}
    out.update(result.metrics())
    out["reward/mean"] = sum(result.totals) / len(result.totals)
    out["response/length_mean"] = sum(lengths) / len(lengths)
    out["response/truncated_frac"] = sum(t.finish_reason == "length" for t in trajs) / len(trajs)
    return out


def recipe_metrics(trajs, model_config: Any) -> dict[str, float]:
    """What shows Keep Sampling Mask and DSA acting in a step's rollouts.

    ``rollout/kept_set_mean`` / ``_max``: mean and largest size of the recorded kept sets (top-p /
    top-k; absent when nothing truncates); ``rollout/sparse_token_frac``: share of sampled tokens
    whose query saw more causal keys than ``index_topk``, so the top-k selection dropped some (0 in
    dense mode)."""
    out: dict[str, float] = {}
    sizes = [kept_sizes(t.sampling_mask[t.loss_mask]) for t in trajs if t.sampling_mask is not None]
    sizes = torch.cat(sizes).double() if sizes else torch.zeros(0)
    if sizes.numel():
        out.update({"rollout/kept_set_mean": sizes.mean().item(), "rollout/kept_set_max": sizes.max().item()})
    n = sum(int(t.loss_mask.sum()) for t in trajs)
    if n:
        sparse = getattr(model_config, "attention_mode", "dense") == "sparse"
        k = getattr(model_config, "index_topk", None) if sparse else None
        # the token at position p is produced by the query at p - 1, which sees p keys: dropped when p > k
        over = 0 if k is None else sum(int(t.loss_mask[k + 1:].sum()) for t in trajs)
        out["rollout/sparse_token_frac"] = over / n
    return out


def _fmt(m: dict[str, Any]) -> str:
    keys = [("reward/mean", "reward"), ("eval/greedy_accuracy", "acc"), ("val/greedy_accuracy", "val"),
            ("eval/sampled_accuracy", "sampled"),
            ("train/kl", "kl"), ("rollout/tokens_per_s", "tok/s")]
    return " ".join(f"{short} {m[k]:.3g}" for k, short in keys if k in m and m[k] == m[k])


RECIPE_KEYS = ("train/kl", "train/clip_frac_low", "train/clip_frac_high", "train/masked_frac",
               "train/logp_mismatch_mean", "train/logp_mismatch_max", "rollout/kept_set_mean",
               "rollout/sparse_token_frac")
"""The metrics that show each part of the V3.2 recipe acting (KL, clipping, off-policy masking,
sampler/trainer agreement, Keep Sampling Mask, DSA's selection)."""


def recipe_summary(history: list[dict[str, Any]]) -> dict[str, float]:
    """Mean over the training steps of each :data:`RECIPE_KEYS` metric that the run logged."""
    out = {}
    for key in RECIPE_KEYS:
        values = [h[key] for h in history if key in h and h[key] == h[key]]
        if values:
            out[key] = sum(values) / len(values)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """The end-of-run table: held-out metrics before and after RL, and what the run spent."""
    before, after = summary["before"], summary["after"]
    keys = sorted(k for k in after if k.startswith("eval/"))
    lines = [f"{'held-out':<24}{'before':>10}{'after':>10}"]
    lines += [f"{k[5:]:<24}{before.get(k, float('nan')):>10.3f}{after[k]:>10.3f}" for k in keys]
    val = summary.get("validation")
    if val:
        lines += [f"{'validation ' + k[4:]:<24}{val['before'].get(k, float('nan')):>10.3f}{v:>10.3f}"
                  for k, v in sorted(val["after"].items())]
    if "selected_step" in summary:
        lines.append(f"after = the validation-best policy, step {summary['selected_step']} of {summary['steps']} "
                     f"(keep_best); the last step's greedy accuracy: {summary['last']['eval/greedy_accuracy']:.3f}")
    recipe = summary.get("recipe") or {}
    if recipe:
        lines.append("recipe (mean over steps): " + ", ".join(f"{k.split('/', 1)[1]} {v:.3g}" for k, v in recipe.items()))
    if summary.get("stage_seconds"):
        lines.append("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["stage_seconds"].items()))
    b = summary["budget"]
    lines.append(f"stopped by {summary['stopped']} after {summary['steps']} steps, {b['budget/seconds']:.0f} s, "
                 f"{b['budget/samples']} samples, {b['budget/flops']:.3g} FLOPs; outputs in {summary['run_dir']}")
    return "\n".join(lines)


def _summary(run: Run, history: list[dict[str, Any]], reason: str, step: int,
             last: dict[str, float] | None = None) -> dict[str, Any]:
    before = next(h for h in history if "eval/greedy_accuracy" in h)
    after = history[-1]
    summary = {"stopped": reason, "steps": step, "before": before, "after": after,
               "budget": run.budget.metrics(), "run_dir": str(run.dir),
               "stage_seconds": dict(run.stage_seconds), "recipe": recipe_summary(history)}
    if last is not None:  # keep_best ended with an earlier policy
        summary.update(selected_step=after["selected_step"], last=last)
    val = [h for h in history if "val/greedy_accuracy" in h]
    if val:  # keep_best: the validation rows' greedy figures at step 0 and at the policy the run ends with
        end = summary.get("selected_step", step)
        pick = lambda h: {k: v for k, v in h.items() if k.startswith("val/")}
        after_val = next((h for h in val if h["step"] == end), None)
        summary["validation"] = {"before": pick(val[0]), "after": pick(after_val) if after_val else {}}
    (run.dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (run.dir / "history.jsonl").write_text("\n".join(json.dumps(h, default=float) for h in history))
    plot_history(history, run.dir / "progress.png")
    from rl.policy.export import write_final

    save = (lambda d: _save_evaluated(run, d)) if last is not None \
        else (lambda d: run.trainer.export_pretrained(d, tokenizer=run.tokenizer))
    write_final(save, run.dir / "final", run.cfg.model.final_format)
    return summary
