"""Our GRPO loop against TRL's ``GRPOTrainer``: seconds per step and held-out accuracy after N steps.

Both sides start from the same cold-start policy (a ``save_pretrained`` directory with its tokenizer,
e.g. the one ``python -m rl.train +experiment=math`` caches under ``$DSA_RL_CACHE/coldstart/<key>/``),
loaded through ``AutoModelForCausalLM`` after ``import rl.policy``, and run N GRPO steps on CPU with
the same data (the math experiment's synthesized set), reward (``rewards.builtin.math_correct``),
B prompts x G completions per step, completion length, temperature 1, learning rate and warm-up.

- **Ours**: ``python -m rl.train +experiment=math model.path=PATH budget.max_steps=N logger=none``
  as a subprocess (Ray rollout worker + DeepSpeed ZeRO-0 trainer). Seconds per step: the mean of
  ``time/rollout_s + time/reward_s + time/train_s + time/sync_s`` from ``history.jsonl``
  (start-up and the loop's own held-out evaluations are not counted).
- **TRL**: ``GRPOTrainer`` in this process (``use_cpu=True``, fp32, ``report_to="none"``).
  Seconds per step: wall clock from ``on_train_begin`` to the end of the last optimizer step,
  divided by N (model loading and trainer construction are not counted); its split: time inside
  ``GRPOTrainer._generate`` (rollout) and ``_calculate_rewards`` (reward), the rest is "train"
  (padding, log-probs, loss, backward, optimizer).

Matched settings (ours -> TRL): advantages R - mean(R) with no std scaling -> ``scale_rewards="none"``;
per-sequence token mean, then mean over sequences (``seq_mean_token_mean``) -> ``loss_type="grpo"``;
clip 0.2 / 0.28 -> ``epsilon=0.2, epsilon_high=0.28``; no KL term -> ``beta=0.0``; grad clip 1.0;
AdamW (torch defaults, weight decay 0) with linear warm-up ``(k + 1) / 5`` over the first 5 optimizer
steps, then constant (the same ``LambdaLR`` object is handed to TRL); one RL step = B*G samples in
mini-batches of 64 = 2 optimizer updates on both sides (TRL: ``per_device_train_batch_size=64``,
``steps_per_generation=B*G/64``, ``max_steps=N*B*G/64``).

Differences that remain (documented, not matched): ours skips the forward and backward of rows whose
advantage is 0 (groups with equal rewards; exact: they add a zero gradient, see ``rl.trainer``),
sorts each mini-batch by length before cutting micro-batches, and also applies the V3.2 off-policy sequence
mask, Keep Sampling Mask and Keep Routing (no-ops at temperature 1 / with no MoE drift on one step,
nearly so here); TRL samples with ``transformers.generate`` in the training process, ours with its
own KV-cache engine on a Ray worker; data order differs (both shuffle the same train split with
seed 0); TRL's generation also stops at EOS.

Held-out accuracy: each final policy is decoded greedily on the same first ``--test-size`` held-out
problems with our ``RolloutEngine`` (the same decoding for both, ``--max-new-tokens`` tokens) and
scored with ``math_correct``. The cold start is scored the same way for reference.

The table gives the median and the mean seconds per step and the mean split; the ratio is taken on
the medians, which a shared machine's stalls (other jobs) disturb least. The machine is shared: compare the ratio, and repeat on a quiet machine for absolute figures.
The two sides run one after the other, so a machine whose speed drifts over minutes favours one:
``--rounds R`` repeats both R times, alternating which side goes first, and reports the median of
the rounds' ratios (one run of ours had 0.51 where the runs before and after had 0.43: the machine
was ~45% slower for ours and ~20% for TRL).
``--threads T`` sets ``OMP_NUM_THREADS`` (both sides) and the TRL process's torch threads; our Ray
rollout worker keeps its own ``torch.set_num_threads(num_cpus_per_worker)``. Each side runs in its
own subprocess with its own OpenMP waiting: TRL, alone in its process, with ``OMP_WAIT_POLICY=ACTIVE``,
its fastest setting on an idle two-core machine (seconds per step 2.03, vs 2.13 with a 200k spin
count and 3.04 with ``PASSIVE``; ``--trl-wait-policy`` to change it); ours with ``rl.train``'s own
defaults (``PASSIVE`` plus ``GOMP_SPINCOUNT=200000``: its trainer and its Ray workers take turns on
the cores). This process (the held-out evaluations) sleeps while they run (``PASSIVE``).

Run: python -m benchmarks.grpo_vs_trl --policy /tmp/e2e_cache/coldstart/b074d28a70fe1402 [--steps 10]
Needs TRL (``pip install trl``, or the project's optional extra ``[trl]``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This process only evaluates; its idle OpenMP threads must sleep while a side runs (an ACTIVE
# policy here spun both cores through our run: 5x slower). Each side sets its own (module docstring).
_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
if "--trl-only" not in sys.argv:  # (the TRL child keeps what its parent gave it)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch

MINI_BATCH = 64  # the math experiment's algorithm.mini_batch_size
WARMUP = 5  # rl.config.AlgorithmConfig.warmup_steps (optimizer steps)
DATA = {"num_train": 10000, "num_test": 1000, "levels": [1, 2, 3, 4], "seed": 0, "max_operand": 20}


def _data():
    from rl.data import synth_math_dataset

    return synth_math_dataset(DATA["num_train"], DATA["num_test"], DATA["levels"], DATA["seed"],
                              max_operand=DATA["max_operand"])


def heldout_accuracy(path: str | Path, test_size: int, max_new_tokens: int) -> float:
    """Greedy accuracy of the policy saved at ``path`` on the first ``test_size`` held-out problems."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import rl.policy  # noqa: F401  (registers the DSA classes with the Auto* factories)
    from rewards.builtin import math_correct
    from rollout.engine import EngineConfig, RolloutEngine

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    test = _data()["test"].select(range(test_size))
    engine = RolloutEngine(model, tok, EngineConfig(record_routes=False, record_topk=False, record_masks=False))
    prompts = engine.encode([[{"role": "user", "content": p}] for p in test["prompt"]])
    trajs = engine.generate_greedy(prompts, max_new_tokens)
    scores = math_correct(list(test["prompt"]), [t.completion for t in trajs], answer=list(test["answer"]))
    return sum(scores) / len(scores)


def run_ours(args, out: Path, env: dict[str, str]) -> dict[str, float]:
    """Our loop as a subprocess; returns seconds per step (mean and split) and the final policy dir."""
    run_dir = out / "ours"
    cmd = [sys.executable, "-m", "rl.train", "+experiment=math", f"model.path={args.policy}",
           f"budget.max_steps={args.steps}", "budget.max_seconds=100000", "logger=none",
           f"rollout.prompts_per_step={args.prompts}", f"algorithm.group_size={args.group}",
           f"rollout.max_new_tokens={args.max_new_tokens}", f"algorithm.lr={args.lr}",
           f"data.test_size={args.test_size}", "eval_every=100000", "checkpoint_every=100000",
           f"hydra.run.dir={run_dir}", *args.ours]
    print("ours:", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"our run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    steps = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    steps = [h for h in steps if "time/rollout_s" in h]
    parts = {k: sum(h[f"time/{k}_s"] for h in steps) / len(steps) for k in ("rollout", "reward", "train", "sync")}
    totals = [sum(h[f"time/{k}_s"] for k in parts) for h in steps]
    return {"s_per_step": sum(parts.values()), "median": statistics.median(totals), **parts,
            "steps": len(steps), "wall": wall,
            "final": str(run_dir / "final")}


def _backbone_forward(model) -> None:
    """Give ``model.model`` (our ``DSAModel``, which has no forward of its own: the causal LM runs the
    layers) the backbone forward TRL's fused LM head calls: final-normed hidden states (B, T, d).
    It runs the LM's forward keeping one position's logits (a negligible extra)."""
    from transformers.modeling_outputs import BaseModelOutput

    lm_forward = type(model).forward

    def forward(*args, **kwargs):
        kwargs.pop("logits_to_keep", None)
        out = lm_forward(model, *args, output_hidden_states=True, logits_to_keep=1, **kwargs)
        return BaseModelOutput(last_hidden_state=model.model.norm(out.hidden_states[-1]))  # (B, T, d)

    model.model.forward = forward


def run_trl(args, out: Path) -> dict[str, float]:
    """TRL's GRPOTrainer in this process; returns seconds per RL step and the final policy dir."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import rl.policy  # noqa: F401
    from rewards.builtin import math_correct
    from rl.trainer import lr_factor

    samples = args.prompts * args.group
    if samples % MINI_BATCH:
        sys.exit(f"B*G = {samples} must be a multiple of the mini-batch {MINI_BATCH}")
    per_gen = samples // MINI_BATCH  # optimizer updates per RL step, as in ours
    tok = AutoTokenizer.from_pretrained(args.policy)
    model = AutoModelForCausalLM.from_pretrained(args.policy)
    train = _data()["train"].map(lambda r: {"prompt": [{"role": "user", "content": r["prompt"]}]},
                                 remove_columns=["solution", "level"])

    def correct(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return math_correct(users, texts, answer=answer)

    cfg = GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, bf16=False, report_to="none", seed=0,
        num_generations=args.group, per_device_train_batch_size=MINI_BATCH, steps_per_generation=per_gen,
        gradient_accumulation_steps=1, max_completion_length=args.max_new_tokens, temperature=1.0,
        top_p=1.0, top_k=0, learning_rate=args.lr, beta=0.0, loss_type="grpo", scale_rewards="none",
        epsilon=0.2, epsilon_high=0.28, max_grad_norm=1.0, max_steps=args.steps * per_gen,
        logging_steps=1, save_strategy="no", num_iterations=1, disable_dropout=True,
        dataloader_num_workers=0, gradient_checkpointing=False)  # TRL defaults it on; our model has none
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(k, warmup_steps=WARMUP, schedule="constant", decay_steps=None, min_ratio=0.0))

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    _backbone_forward(model)
    trainer = GRPOTrainer(model=model, reward_funcs=[correct], args=cfg, train_dataset=train,
                          processing_class=tok, callbacks=[Clock()], optimizers=(opt, sched))
    phase = {"rollout": 0.0, "reward": 0.0}
    for name, key in (("_generate", "rollout"), ("_calculate_rewards", "reward")):
        setattr(trainer, name, _timed(getattr(trainer, name), phase, key))
    trainer.train()
    per_rl = [marks[i + per_gen] - marks[i] for i in range(0, len(marks) - per_gen, per_gen)]
    final = out / "trl" / "final"
    trainer.model.save_pretrained(final)
    tok.save_pretrained(final)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    n = len(per_rl)
    out = {"s_per_step": sum(per_rl) / n, "median": statistics.median(per_rl), "rollout": phase["rollout"] / n, "reward": phase["reward"] / n}
    out["train"] = out["s_per_step"] - out["rollout"] - out["reward"]
    return {**out, "sync": 0.0, "steps": n, "final": str(final), "reward_mean": sum(rewards) / max(len(rewards), 1)}


def run_trl_subprocess(args, out: Path, env: dict[str, str]) -> dict[str, float]:
    """``run_trl`` in a child process (its own OpenMP settings, from ``env``); returns its result."""
    result = out / "trl_result.json"
    cmd = [sys.executable, "-m", "benchmarks.grpo_vs_trl", "--trl-only", str(result), *sys.argv[1:]]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"the TRL run failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(result.read_text())


def _timed(fn, acc: dict[str, float], key: str):
    """``fn`` wrapped to add its wall time to ``acc[key]``."""
    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            acc[key] += time.perf_counter() - t0
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True,
                    help="cold-start policy dir (save_pretrained + tokenizer), e.g. a cached "
                         "$DSA_RL_CACHE/coldstart/<key> written by `python -m rl.train +experiment=math`")
    ap.add_argument("--steps", type=int, default=10, help="GRPO steps N on each side")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per step B")
    ap.add_argument("--group", type=int, default=8, help="completions per prompt G")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--test-size", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch/OMP threads for both sides (0: default)")
    ap.add_argument("--out", default=None, help="output dir (default: a temporary dir)")
    ap.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra Hydra overrides for our side, e.g. rollout.num_workers=2 rollout.compile=true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat both sides R times, alternating which goes first; the ratio is the "
                         "median of the rounds' ratios (a machine whose speed drifts over minutes)")
    ap.add_argument("--trl-wait-policy", default=_WAIT_POLICY or "ACTIVE", choices=("ACTIVE", "PASSIVE"),
                    help="OMP_WAIT_POLICY of the TRL side (default ACTIVE, its fastest on an idle machine)")
    ap.add_argument("--trl-only", default=None, metavar="JSON", help=argparse.SUPPRESS)  # the TRL child
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: must be at least 1")
    if args.trl_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        Path(args.trl_only).write_text(json.dumps(run_trl(args, Path(args.trl_only).parent)))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not installed: `pip install trl` (or `pip install -e .[trl]`) to run this comparison")
    if not (Path(args.policy) / "config.json").exists():
        sys.exit(f"--policy {args.policy}: no config.json; run `python -m rl.train +experiment=math` once "
                 "and pass its cached cold start ($DSA_RL_CACHE/coldstart/<key>)")
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}, "WANDB_MODE": "offline"}
    if _WAIT_POLICY is not None:  # the caller's choice, for our side too
        env["OMP_WAIT_POLICY"] = _WAIT_POLICY
    if args.threads:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
        torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="grpo_vs_trl-"))
    out.mkdir(parents=True, exist_ok=True)

    acc0 = heldout_accuracy(args.policy, args.test_size, args.max_new_tokens)
    trl_env = {**env, "OMP_WAIT_POLICY": args.trl_wait_policy}
    rounds = []  # (ours, theirs) per round
    for r in range(args.rounds):
        d = out if args.rounds == 1 else out / f"round{r + 1}"
        d.mkdir(parents=True, exist_ok=True)
        # Alternate which side goes first, so a slow drift of the machine hits both alike.
        if r % 2 == 0:
            ours = run_ours(args, d, env)
            theirs = run_trl_subprocess(args, d, trl_env)
        else:
            theirs = run_trl_subprocess(args, d, trl_env)
            ours = run_ours(args, d, env)
        rounds.append((ours, theirs))
    accs = [(heldout_accuracy(o["final"], args.test_size, args.max_new_tokens),
             heldout_accuracy(t["final"], args.test_size, args.max_new_tokens)) for o, t in rounds]

    print(f"\nGRPO, {args.steps} steps x {args.prompts} prompts x {args.group} completions, "
          f"{args.max_new_tokens} new tokens, lr {args.lr}, CPU threads {torch.get_num_threads()}; "
          f"held-out greedy accuracy on {args.test_size} problems (cold start {acc0:.3f}); "
          f"our overrides: {' '.join(args.ours) or 'none'}")
    print(f"{'':<8}{'median':>8}{'s/step':>9}{'rollout':>9}{'reward':>8}{'train':>8}{'sync':>7}{'accuracy':>10}")
    ratios = []
    for r, ((ours, theirs), (acc_ours, acc_trl)) in enumerate(zip(rounds, accs)):
        if args.rounds > 1:
            print(f"round {r + 1} ({'ours' if r % 2 == 0 else 'TRL'} first)")
        for name, res, acc in (("ours", ours, acc_ours), ("TRL", theirs, acc_trl)):
            print(f"{name:<8}{res['median']:>8.2f}{res['s_per_step']:>9.2f}{res['rollout']:>9.2f}"
                  f"{res['reward']:>8.2f}{res['train']:>8.2f}{res['sync']:>7.2f}{acc:>10.3f}")
        ratios.append(ours["median"] / theirs["median"])
    ratio = statistics.median(ratios)
    gap = statistics.median(a - b for a, b in accs)  # the sides are seeded: equal in every round, normally
    ok = ratio <= 0.5 and gap >= 0
    each = f"; rounds {', '.join(f'{x:.2f}' for x in ratios)}" if len(ratios) > 1 else ""
    mean_ratio = statistics.median(o["s_per_step"] / t["s_per_step"] for o, t in rounds)
    mean_label = "median of the rounds' mean ratios" if len(rounds) > 1 else "mean"
    print(f"time ratio ours/TRL {ratio:.2f} (median s/step{each}; {mean_label} {mean_ratio:.2f}; "
          f"goal <= 0.50), accuracy {gap:+.3f} vs TRL{' (median over rounds)' if len(rounds) > 1 else ''} "
          f"(goal >= 0): {'met' if ok else 'NOT met'}; outputs in {out}")


if __name__ == "__main__":
    main()
