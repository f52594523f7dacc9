"""Dense checkpoint -> DSA policy, end to end on a tiny Llama: conversion exactness, then the two
stages of ``rl.indexer_train`` with their per-layer recall / LM-gap tables.

    python benchmarks/convert.py [--pretrain-steps 200] [--warmup-steps 150] [--sparse-steps 100]

1. pre-trains a tiny Llama (transformers LlamaConfig, project tokenizer) on the synthesized corpus
   (seed 5) so its attention is not uniform, saves it;
2. converts it and prints max |logits_dense - logits_source| and the conversion time;
3. runs the warm-up and the sparse stage in-process (``rl.indexer_train.run``), measured on
   held-out packed text (seed 0 corpus), and prints each stage's table and a summary.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--warmup-steps", type=int, default=150)
    ap.add_argument("--sparse-steps", type=int, default=100)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import LlamaConfig, LlamaForCausalLM

    from rl.config import TrainConfig
    from rl.indexer_train import format_report, load_texts, pack, run
    from rl.policy.convert import convert_model
    from rl.policy.tokenizer import load_tokenizer

    work = Path(a.out or tempfile.mkdtemp(prefix="convert-bench-"))
    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=a.hidden, intermediate_size=2 * a.hidden,
                      num_hidden_layers=a.layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id)
    src = LlamaForCausalLM(cfg)
    data = pack(load_texts("synth", "text", "train", 5), tok, a.seq_len, 512)
    opt = torch.optim.AdamW(src.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    for _ in range(a.pretrain_steps):
        ids = data[torch.randint(0, 512, (16,))]
        loss = src(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"pre-training: {a.pretrain_steps} steps, final loss {loss.item():.3f}, {time.perf_counter() - t0:.1f}s")
    src.eval().save_pretrained(work / "llama")
    tok.save_pretrained(work / "llama")

    t0 = time.perf_counter()
    dsa = convert_model(src, index_topk=a.topk, index_n_heads=2, index_head_dim=16)
    t_conv = time.perf_counter() - t0
    ids = data[:4]
    with torch.no_grad():
        diff = (dsa(ids, attention_mode="dense", use_cache=False).logits - src(ids).logits).abs().max().item()
    print(f"| conversion time | max abs logit diff, dense vs source |\n|---|---|\n| {t_conv:.2f}s | {diff:.2e} |")

    reports = []
    path = work / "llama"
    for stage, steps in (("warmup", a.warmup_steps), ("sparse", a.sparse_steps)):
        c = TrainConfig(device="cpu")
        c.model.path, c.model.index_topk = str(path), a.topk
        c.indexer.stage, c.indexer.model_lr = stage, 1e-4
        c.indexer.seq_len, c.indexer.num_sequences, c.indexer.eval_sequences = a.seq_len, 256, 16
        c.indexer.index_n_heads, c.indexer.index_head_dim = 2, 16
        c.budget.max_steps, c.budget.max_seconds = steps, None
        t0 = time.perf_counter()
        r = run(c, str(work / stage), log=lambda s: None)
        print(f"\n{format_report(r['before'], r['after'], stage)}\n({steps} steps, {time.perf_counter() - t0:.1f}s)")
        reports.append(r)
        path = Path(r["model"])
    w, s = reports
    g0, g1, g2 = w["before"]["lm_gap"], w["after"]["lm_gap"], s["after"]["lm_gap"]
    print("\n| LM gap (sparse - dense) | value | closed |\n|---|---|---|")
    print(f"| converted | {g0:.4f} | - |\n| after warm-up | {g1:.4f} | {1 - g1 / g0:.0%} |")
    print(f"| after sparse stage | {g2:.4f} | {1 - g2 / g0:.0%} |")
    print(f"sparse LM loss after both stages {s['after']['lm_sparse']:.4f} vs the source's dense "
          f"{w['before']['lm_dense']:.4f}")


if __name__ == "__main__":
    main()
