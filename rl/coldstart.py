"""Cold start: supervised fine-tuning on a teacher's worked solutions, then DSA's indexer stages.

V3.2 starts RL from a policy that already follows the output format. Our embedded policy starts
from random weights, so the cold start does three things, in order:

1. **SFT** (dense attention, all parameters) on chat-formatted demonstrations
   ``<|user|>PROBLEM<|end|><|assistant|><think>STEPS</think>\\boxed{ANSWER}<|end|>``; loss only on
   the assistant turn; for tool environments (``+experiment=agent``) the
   demonstrations are the reference solutions replayed through the multi-turn loop
   (``rollout.scripted.cold_start_examples``), loss on the assistant turns only.
2. **Dense warm-up of the indexer** (V3.2 section 2): everything but the lightning indexers is
   frozen; loss = KL(head-summed, L1-normalised attention || softmax(index scores)).
3. **Sparse stage**: top-k attention on, all parameters train on LM loss + the indexer KL over the
   selected set (indexer input detached). The saved policy has ``attention_mode="sparse"``.

**The teacher is deliberately imperfect**, so that RL has something to find (as in real pipelines,
where the demonstrations come from a weaker model): on multi-step problems it stops early with
probability ``teacher_stop_early`` — it writes the first step(s), then answers the intermediate
value. Its arithmetic is always right. The student imitates that habit: at the point where a
solution could stop, stopping is the more likely token, so greedy decoding answers too early on
most multi-step problems, while sampling continues often enough to find the reward. RL can then
lift greedy accuracy above the teacher's. Single-step problems are unaffected.

The result is saved with ``save_pretrained`` under the cache directory, keyed by a hash of
everything that determines it; a second run with the same settings loads it instead of training.
This module trains in-process with plain torch AdamW (a few minutes of a ~2 M-parameter model);
RL itself runs under DeepSpeed.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rl.config import ColdStartConfig
    from rl.policy import DSAForCausalLM


def teacher_response(solution: str, answer: str, rng: random.Random, stop_early: float) -> str:
    """The teacher's reply to a problem, given the exact worked ``solution`` and ``answer``.

    >>> teacher_response("2 * 3 = 6. 1 + 6 = 7.", "7", random.Random(0), stop_early=0.0)
    '<think>2 * 3 = 6. 1 + 6 = 7.</think>\\\\boxed{7}'
    """
    steps = [s if s.endswith(".") else s + "." for s in solution.split(". ")]
    if len(steps) > 1 and rng.random() < stop_early:
        steps = steps[: rng.randint(1, len(steps) - 1)]
        answer = steps[-1].rstrip(".").split(" = ")[-1]  # the intermediate value
    return f"<think>{' '.join(steps)}</think>\\boxed{{{answer}}}"


def encode_chat(tok: PreTrainedTokenizerBase, prompt: str, reply: str,
                head_ids: list[int] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of a one-turn chat and its loss mask (1 on the assistant reply and its end token).

    head_ids: the chat-templated prompt as the run presents it (system prompt and template
    applied, ``rl.sources.load_prompts``); None = ``prompt`` as the only user message."""
    if head_ids is None:
        head = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
    reply_ids = tok(reply + tok.eos_token, add_special_tokens=False)["input_ids"]
    return head_ids + reply_ids, [0] * len(head_ids) + [1] * len(reply_ids)


def _batches(examples: list[tuple[list[int], list[int]]], batch_size: int, pad_id: int,
             rng: random.Random, device: torch.device):
    """Endless shuffled right-padded batches: input_ids (B, T), attention_mask (B, T), labels (B, T)."""
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            chunk = [examples[j] for j in order[i:i + batch_size]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.full((batch_size, width), pad_id, dtype=torch.long)
            att = torch.zeros(batch_size, width, dtype=torch.long)
            labels = torch.full((batch_size, width), -100, dtype=torch.long)
            for r, (x, m) in enumerate(chunk):
                ids[r, :len(x)] = torch.tensor(x)
                att[r, :len(x)] = 1
                labels[r, :len(x)] = torch.where(torch.tensor(m).bool(), torch.tensor(x), -100)
            yield ids.to(device), att.to(device), labels.to(device)


def _train(model: DSAForCausalLM, params: list[torch.nn.Parameter], batches, steps: int, lr: float,
           loss_fn: Callable[[Any], torch.Tensor], log: Callable[[str], None], name: str) -> float:
    """A plain AdamW loop with linear warm-up and cosine decay; returns the mean loss of the last 20."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * s / steps)).item()))
    model.train()
    recent: list[float] = []
    t0 = time.monotonic()
    for step in range(steps):
        loss = loss_fn(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        recent = (recent + [loss.item()])[-20:]
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"cold start [{name}] step {step + 1}/{steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.monotonic() - t0:.0f}s)")
    model.eval()
    return sum(recent) / max(1, len(recent))


def cold_start_key(cfg: ColdStartConfig, model_cfg: dict[str, Any], data_key: str) -> str:
    """A hash of everything that determines the cold-start policy."""
    cold = {k: v for k, v in asdict(cfg).items() if k != "pretrained"}  # where it runs, not what it makes
    blob = json.dumps({"v": 1, "cold": cold, "model": model_cfg, "data": data_key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def teacher_examples(tok: PreTrainedTokenizerBase, rows: list[dict[str, Any]], stop_early: float,
                     rng: random.Random) -> list[tuple[list[int], list[int]]]:
    """The teacher's demonstrations of data set records (``prompt``, ``answer``, ``solution``, and
    ``prompt_ids`` when the run templated them), encoded as (ids, loss mask) pairs (``encode_chat``)."""
    return [encode_chat(tok, r["prompt"], teacher_response(r["solution"], r["answer"], rng, stop_early),
                        r.get("prompt_ids")) for r in rows]


def overlong_replies(examples: list[tuple[list[int], list[int]]], max_new_tokens: int) -> tuple[int, int]:
    """(how many, longest): the demonstrations whose reply (the loss-masked tokens, end token
    included) is longer than ``max_new_tokens``, which a rollout therefore cuts before its answer.

    >>> overlong_replies([([1, 2, 3, 4], [0, 1, 1, 1]), ([1, 2], [0, 1])], max_new_tokens=2)
    (1, 3)
    """
    lengths = [sum(mask) for _, mask in examples]
    return sum(n > max_new_tokens for n in lengths), max(lengths, default=0)


def overlong_warning(examples: list[tuple[list[int], list[int]]], max_new_tokens: int) -> str | None:
    """A one-line warning when some demonstrations do not fit a rollout (``overlong_replies``), else None."""
    count, longest = overlong_replies(examples, max_new_tokens)
    if not count:
        return None
    return (f"warning: {count} of {len(examples)} cold-start replies are longer than rollout.max_new_tokens="
            f"{max_new_tokens} (longest {longest} tokens): rollouts of such problems are cut before the "
            f"answer and score 0; set rollout.max_new_tokens={longest} to fit them all")


def run_cold_start(model: DSAForCausalLM, tok: PreTrainedTokenizerBase,
                   examples: list[tuple[list[int], list[int]]], cfg: ColdStartConfig, seed: int,
                   log: Callable[[str], None] = print, rng: random.Random | None = None) -> dict[str, float]:
    """Train ``model`` in place through the three stages; returns the final loss of each.

    ``examples`` are encoded demonstrations: (token ids, loss mask) pairs, mask 1 where the model
    learns (``teacher_examples`` for math records; ``rollout.scripted.cold_start_examples`` for tool
    environments). rng: shuffles the batches (None = ``random.Random(seed)``).
    """
    rng = rng or random.Random(seed)
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    batches = _batches(examples, cfg.batch_size, tok.pad_token_id, rng, device)
    out = {}

    def lm_loss(mode: str, with_indexer: bool):
        def fn(batch):
            ids, att, labels = batch
            o = model(input_ids=ids, attention_mask=att, labels=labels, attention_mode=mode,
                      use_cache=False, output_indexer_loss=with_indexer)
            return o.loss
        return fn

    def indexer_only(batch):
        ids, att, _ = batch
        return model(input_ids=ids, attention_mask=att, attention_mode="dense", use_cache=False,
                     output_indexer_loss=True).indexer_loss

    if cfg.sft_steps:  # 0 for an already instruction-tuned checkpoint (coldstart.pretrained)
        out["sft_loss"] = _train(model, list(model.parameters()), batches, cfg.sft_steps, cfg.lr,
                                 lm_loss("dense", False), log, "sft, dense")
    if cfg.indexer_warmup_steps:
        params = model.freeze_all_but_indexer()
        out["indexer_warmup_loss"] = _train(model, params, batches, cfg.indexer_warmup_steps,
                                            cfg.indexer_lr, indexer_only, log, "indexer warm-up")
        for p in model.parameters():
            p.requires_grad_(True)
    if cfg.sparse_steps:
        out["sparse_loss"] = _train(model, list(model.parameters()), batches, cfg.sparse_steps,
                                    cfg.lr * 0.3, lm_loss("sparse", True), log, "sparse")
    model.config.attention_mode = "sparse"
    return out


def save_atomic(model: DSAForCausalLM, tok: PreTrainedTokenizerBase, path: Path,
                info: dict[str, Any]) -> None:
    """``save_pretrained`` into a temporary sibling, then rename: readers never see half a policy."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "cold_start.json").write_text(json.dumps(info, indent=2))
    if path.exists():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, path)
