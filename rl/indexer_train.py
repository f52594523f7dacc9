"""Make a dense checkpoint sparse: ``python -m rl.indexer_train +experiment=dsa_warmup model.path=DIR``,
then ``+experiment=dsa_sparse model.path=RUN_DIR/model`` (DeepSeek-V3.2 section 2).

- **warm-up** (``indexer.stage=warmup``): attention dense, everything but the lightning indexers
  frozen; loss = mean over tokens and layers of KL(head-summed, L1-normalised attention ||
  softmax(index scores)) over all causal keys.
- **sparse** (``indexer.stage=sparse``): top-k on, all parameters train on LM loss +
  ``indexer_loss_weight`` x the KL restricted to the selected set; the indexer's inputs are
  detached (so it learns only from its KL) and the KL target is detached (so the model learns only
  from the LM loss). The indexer keeps ``indexer.lr``, the rest trains at ``indexer.model_lr``.

``model.path`` is a Llama/Qwen2-family checkpoint (converted on the fly with ``rl.policy.convert``),
a DeepSeek-V3/V3.2 checkpoint (converted once into the native MLA policy, cached)
or an already converted ``dsa_llama`` model. Training runs in one process under a DeepSpeed engine
(ZeRO stage from ``deepspeed.zero_stage``; a torch AdamW, as ``rl.trainer``) until the first
``budget`` limit (steps, tokens, FLOPs, seconds). Before and after, :func:`measure` reports per
layer the indexer's recall of the true attention top-k (and the random-selection baseline) and the
LM loss of sparse vs dense attention on held-out text; the report goes to RUN_DIR/indexer_report.json
and the policy (``attention_mode="sparse"``) to ``indexer.output`` (default RUN_DIR/model).

Departures: V3.2 does not disclose the indexer loss weight or optimizer (ours: AdamW, weights in
config); the text is packed into fixed-length sequences without attention across documents masked.
"""
from __future__ import annotations

import json
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rl.config import IndexerTrainConfig, TrainConfig

# ---- data ---------------------------------------------------------------------------------------
MATH_CHAT_DOCS = 2000
"""Conversations of ``indexer.text=math_chat``."""


def math_chat_texts(tok: Any, num: int, seed: int) -> list[str]:
    """``num`` synthesized word problems (levels 1-4, seed ``seed``) with their worked solutions, each a
    user/assistant conversation rendered by ``tok``'s own chat template (for a pretrained model: the
    text it sees in RL, not the embedded tokenizer's format)."""
    from itertools import islice

    from rl.synth_math import LEVELS, MAX_OPERAND, iter_problems

    if getattr(tok, "chat_template", None) is None:
        raise ValueError("indexer.text=math_chat needs a tokenizer with a chat template (model.tokenizer=...)")

    def chat(p: Any) -> list[dict[str, str]]:
        reply = f"{p.solution} The answer is \\boxed{{{p.answer}}}."
        return [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": reply}]

    return [tok.apply_chat_template(chat(p), tokenize=False) for p in islice(iter_problems(seed, LEVELS, MAX_OPERAND), num)]


def load_texts(source: str, column: str, split: str, seed: int, tok: Any = None) -> list[str]:
    """Documents of ``source``: ``synth`` (embedded corpus of seed ``seed``), ``math_chat`` (see
    :func:`math_chat_texts`; needs ``tok``), a .txt file (one document per blank-line-separated
    block), a .json/.jsonl/.parquet file or directory, or a hub id."""
    if source == "synth":
        from rl.policy.tokenizer import training_corpus

        return training_corpus(num_problems=2000, seed=seed)
    if source == "math_chat":
        return math_chat_texts(tok, MATH_CHAT_DOCS, seed)
    path = Path(source)
    if path.suffix == ".txt":
        return [b for b in path.read_text().split("\n\n") if b.strip()]
    import datasets

    if path.exists():
        files = sorted(str(p) for p in (path.rglob("*") if path.is_dir() else [path])
                       if p.suffix in (".json", ".jsonl", ".parquet"))
        if not files:
            raise ValueError(f"indexer.text={source!r}: no .json/.jsonl/.parquet files there")
        kind = "parquet" if files[0].endswith(".parquet") else "json"
        ds = datasets.load_dataset(kind, data_files=files, split="train")
    else:
        ds = datasets.load_dataset(source, split=split)
    if column not in ds.column_names:
        raise ValueError(f"indexer.text_column={column!r} not in {ds.column_names}")
    return [t for t in ds[column] if t]


def pack(texts: list[str], tok: Any, seq_len: int, num: int) -> torch.Tensor:
    """Tokenize, join with EOS, and cut into ``num`` rows of ``seq_len`` tokens (B, T) LongTensor
    (the corpus is cycled if it is too short)."""
    ids: list[int] = []
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    for t in texts:
        ids.extend(tok(t, add_special_tokens=False)["input_ids"] + [eos])
    if not ids:
        raise ValueError("the text corpus is empty")
    need = seq_len * num
    reps = -(-need // len(ids))
    flat = torch.tensor((ids * reps)[:need], dtype=torch.long)
    return flat.view(num, seq_len)  # (num, T)


# ---- measurement --------------------------------------------------------------------------------
@torch.no_grad()
def measure(model: Any, data: torch.Tensor, batch_size: int) -> dict[str, Any]:
    """Per-layer top-k recall of the indexer vs the true dense attention, and the LM-loss gap.

    data: (N, T) token ids. Recall of layer l: over queries with more than k allowed keys, the
    mean of |topk(head-summed dense attention) & topk(index scores)| / k; ``random`` is the
    expected recall of a uniform random selection, the mean of k / #allowed over the same queries
    (also the expected attention mass it captures). ``mass``: mean attention probability (head-summed,
    normalised) that falls in the indexer's selection; ``mass_best``: the same for the true top-k
    (the ceiling). Returns {"recall", "mass", "mass_best": [per layer], "random": float,
    "lm_dense", "lm_sparse", "lm_gap" (sparse - dense)}.
    """
    from rl.policy.indexer import indices_to_mask, select_topk

    was_training = model.training
    model.eval()
    k = model.config.index_topk
    dev = next(model.parameters()).device
    hits = mass = best = None
    n_q, rand_sum, lm = 0, 0.0, {"dense": 0.0, "sparse": 0.0}
    for i in range(0, data.shape[0], batch_size):
        ids = data[i:i + batch_size].to(dev)
        out = model(ids, labels=ids, attention_mode="dense", use_cache=False, output_attention_maps=True)
        maps = out.attention_maps  # every DSA policy (native MLA or converted GQA) returns them
        lm["dense"] += out.lm_loss.item() * ids.shape[0]
        lm["sparse"] += model(ids, labels=ids, attention_mode="sparse", use_cache=False).lm_loss.item() * ids.shape[0]
        if hits is None:
            hits, mass, best = ([0.0] * len(maps) for _ in range(3))
        for layer, (target, scores, allowed) in enumerate(maps):
            n_allowed = allowed.sum(-1)  # (B, T)
            rows = n_allowed > k
            S = allowed.shape[-1]
            true_m = indices_to_mask(select_topk(target, allowed, k), S)
            idx_m = indices_to_mask(select_topk(scores, allowed, k), S)
            overlap = (true_m & idx_m).sum(-1).float() / k  # (B, T)
            hits[layer] += overlap[rows].sum().item()
            mass[layer] += (target * idx_m).sum(-1)[rows].sum().item()
            best[layer] += (target * true_m).sum(-1)[rows].sum().item()
            if layer == 0:
                n_q += int(rows.sum())
                rand_sum += (k / n_allowed[rows].float()).sum().item()
    model.train(was_training)
    n = data.shape[0]
    res = {"recall": [h / max(1, n_q) for h in hits or []], "random": rand_sum / max(1, n_q),
           "mass": [m / max(1, n_q) for m in mass or []], "mass_best": [b / max(1, n_q) for b in best or []],
           "lm_dense": lm["dense"] / n, "lm_sparse": lm["sparse"] / n}
    res["lm_gap"] = res["lm_sparse"] - res["lm_dense"]
    return res


def format_report(before: dict[str, Any], after: dict[str, Any], stage: str) -> str:
    """A text table: per-layer recall before/after, the random baseline, and LM losses."""
    lines = [(f"stage {stage}: top-k recall of the indexer vs the true attention top-k "
              f"(random selection: {before['random']:.3f})"),
             "| layer | recall before | recall after | mass before | mass after | mass of true top-k |",
             "|---|---|---|---|---|---|"]
    for i in range(len(before["recall"])):
        lines.append(f"| {i} | {before['recall'][i]:.3f} | {after['recall'][i]:.3f} | {before['mass'][i]:.3f} "
                     f"| {after['mass'][i]:.3f} | {after['mass_best'][i]:.3f} |")
    lines += ["| LM loss | before | after |", "|---|---|---|"]
    for key in ("lm_dense", "lm_sparse", "lm_gap"):
        lines.append(f"| {key} | {before[key]:.4f} | {after[key]:.4f} |")
    return "\n".join(lines)


# ---- training -----------------------------------------------------------------------------------
def load_policy(cfg: TrainConfig) -> tuple[Any, Any]:
    """The model (converted if ``model.path`` is a plain Llama/Qwen2 checkpoint, a ``gguf:`` source or a
    DeepSeek-V3/V3.2 directory; the last two once, cached) and its tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rl.device import pick_device, pick_dtype
    from rl.paths import default_cache_dir
    from rl.policy.convert import cached_convert, convert_model
    from rl.policy.deepseek import cached_conversion, is_deepseek_dir
    from rl.policy.gguf import is_gguf
    from rl.policy.llama import DSALlamaConfig
    from rl.policy.tokenizer import load_tokenizer

    path = cfg.model.path
    if path is None:
        raise ValueError("model.path is unset: give a Llama/Qwen2 checkpoint, a gguf: source or a converted "
                         "dsa_llama model")
    ic = cfg.indexer
    if is_gguf(path):  # GGUF: dequantized, exported and converted once (cached, as rl.train does)
        path = str(cached_convert(path, cfg.data.cache_dir or default_cache_dir(), seed=cfg.seed,
                                  index_topk=cfg.model.index_topk or 32, index_n_heads=ic.index_n_heads,
                                  index_head_dim=ic.index_head_dim))
    tok = load_tokenizer(cfg.model.tokenizer or path)
    dtype = pick_dtype(cfg.model.dtype, pick_device(cfg.device))

    if is_deepseek_dir(path):  # DeepSeek-V3/V3.2: converted to the native DSA policy once (cached)
        native = cached_conversion(path, cfg.data.cache_dir or default_cache_dir(), seed=cfg.seed, dtype=dtype,
                                   index_topk=cfg.model.index_topk)
        model = AutoModelForCausalLM.from_pretrained(native, dtype=dtype)
    elif AutoConfig.from_pretrained(path).model_type == DSALlamaConfig.model_type:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if cfg.model.index_topk is not None:
            model.config.index_topk = cfg.model.index_topk
            for layer in model.model.layers:
                layer.self_attn.topk = cfg.model.index_topk
    else:
        src = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model = convert_model(src, seed=cfg.seed, index_topk=cfg.model.index_topk or 32,
                              index_n_heads=ic.index_n_heads, index_head_dim=ic.index_head_dim)
    return model, tok


def _deepspeed_config(ic: IndexerTrainConfig, zero_stage: int, dtype: torch.dtype) -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": ic.batch_size, "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0, "zero_optimization": {"stage": zero_stage},
        "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": dtype == torch.bfloat16}, "fp16": {"enabled": dtype == torch.float16},
        "steps_per_print": 2**31 - 1, "wall_clock_breakdown": False,
    }


def train_stage(model: Any, data: torch.Tensor, cfg: TrainConfig, budget: Any,
                log: Callable[[str], None] = print) -> list[float]:
    """Train ``model`` in place for one stage (``cfg.indexer.stage``) until ``budget`` is exhausted.

    data: (N, T) packed token ids, cycled in a seeded shuffle. Returns the loss of every step."""
    import deepspeed

    from rl.policy.factory import policy_sequence_macs as sequence_forward_macs  # native or dsa_llama
    from rl.policy.indexer_loss import indexer_parameters
    from rl.process_group import init_distributed

    ic = cfg.indexer
    if cfg.deepspeed.zero_stage == 3 or cfg.deepspeed.num_processes != 1:
        raise ValueError("rl.indexer_train runs one process with ZeRO stage 0-2: set deepspeed.zero_stage<=2 "
                         "and deepspeed.num_processes=1")
    init_distributed()
    warm = ic.stage == "warmup"
    if warm:
        groups = [{"params": model.freeze_all_but_indexer(), "lr": ic.lr}]
    else:
        for p in model.parameters():
            p.requires_grad_(True)
        idx = {id(p) for p in indexer_parameters(model)}
        groups = [{"params": [p for p in model.parameters() if id(p) in idx], "lr": ic.lr},
                  {"params": [p for p in model.parameters() if id(p) not in idx], "lr": ic.model_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.95))
    dtype = next(model.parameters()).dtype
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=opt, config=_deepspeed_config(ic, cfg.deepspeed.zero_stage, dtype),
        lr_scheduler=lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / max(1, ic.warmup_steps))))
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos, losses, t0 = torch.randperm(data.shape[0], generator=gen), 0, [], time.monotonic()
    mode = "dense" if warm else "sparse"
    T = data.shape[1]
    cost = sequence_forward_macs(model.config, T, mode)
    engine.train()
    while (why := budget.exhausted()) is None:
        if pos + ic.batch_size > len(order):
            order, pos = torch.randperm(data.shape[0], generator=gen), 0
        ids = data[order[pos:pos + ic.batch_size]].to(engine.device)
        pos += ic.batch_size
        if warm:
            loss = engine(ids, attention_mode="dense", use_cache=False, output_indexer_loss=True).indexer_loss
        else:
            out = engine(ids, labels=ids, attention_mode="sparse", use_cache=False, output_indexer_loss=True)
            loss = out.lm_loss + ic.indexer_loss_weight * out.indexer_loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
        n = ids.shape[0]
        s = budget.spent
        s.train_tokens += n * T
        s.train_flops += 2.0 * 3 * n * cost.total
        s.attention_flops += 2.0 * 3 * n * cost.attention
        s.indexer_flops += 2.0 * 3 * n * cost.indexer
        budget.step_done()
        if s.steps % 25 == 0 or s.steps == 1:
            recent = losses[-25:]
            log(f"[{ic.stage}] step {s.steps} loss {sum(recent) / len(recent):.4f} ({time.monotonic() - t0:.0f}s)")
    log(f"[{ic.stage}] stopped: {why}")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return losses


def run(cfg: TrainConfig, run_dir: str, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load/convert, measure, train one stage, measure, save. Returns the report (also written as JSON)."""
    from rl.budget import Budget

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    torch.manual_seed(cfg.seed)
    ic = cfg.indexer
    model, tok = load_policy(cfg)
    dev = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    model.to(dev)
    texts = load_texts(ic.text, ic.text_column, ic.text_split, cfg.seed, tok)
    random.Random(cfg.seed).shuffle(texts)  # the held-out documents are a random sample
    n_eval = min(max(1, len(texts) // 10), 200)
    train = pack(texts[n_eval:], tok, ic.seq_len, ic.num_sequences)
    held = pack(texts[:n_eval], tok, ic.seq_len, ic.eval_sequences)
    budget = Budget.from_config(cfg.budget)
    before = measure(model, held, ic.batch_size)
    losses = train_stage(model, train, cfg, budget, log)
    after = measure(model, held, ic.batch_size)
    log(format_report(before, after, ic.stage))
    out = Path(ic.output or Path(run_dir) / "model")
    model.config.attention_mode = "sparse"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    report = {"stage": ic.stage, "index_topk": model.config.index_topk, "before": before, "after": after,
              "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
              "budget": budget.metrics(), "model": str(out)}
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "indexer_report.json").write_text(json.dumps(report, indent=2))
    log(f"saved {out}")
    return report


def _main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import DictConfig

    from rl.config import ConfigError, register_configs, to_config

    register_configs()

    @hydra.main(config_path="../configs", config_name="train", version_base="1.3")
    def main(dcfg: DictConfig) -> None:
        try:
            config = to_config(dcfg)
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            sys.exit(2)
        try:
            run(config, HydraConfig.get().runtime.output_dir, log=lambda s: print(s, file=sys.stderr, flush=True))
        except (ValueError, OSError) as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    main()


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    _main()
