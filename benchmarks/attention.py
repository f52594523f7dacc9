"""Decode cost of one DSA attention layer at DeepSeek-V3.2's proportions, dense vs sparse; and the
tiny preset's forward+backward throughput, sparse vs dense.

Part 1: ONE `MLAttention` layer with V3.2's shapes (hidden 7168, 128 heads, latent 512 + rope 64,
indexer 64 x 128, k = 2048), batch 1, fp32, on this machine's CPU. The cache is filled with random
latents / indexer keys for L-1 tokens (no prefill) and one new token is decoded. "dense" is the same
layer with every key selected (absorbed MQA attention over all L latents: what DSA itself runs when
L <= k); "DSA" is indexer over all L keys + top-k + one gather of k latents + attention over them.
Times are the whole layer (projections included) and the MAC limits are given for the attention
core alone and for the whole layer.

Part 2: tiny preset (vocab 4096), batch 16 x 192 tokens, forward + backward tokens/s in sparse
(index_topk 32) and dense mode.

Times are CPU seconds of this process (`time.process_time`; run with --threads 1), which stay
meaningful on a shared, loaded machine where wall time does not.

Run: python benchmarks/attention.py [--contexts 2048 8192 32768 131072] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import torch

from rl.policy import DSACache, DSAConfig, DSAForCausalLM
from rl.policy.flops import attention_macs_per_key, indexer_macs_per_key, linear_macs_per_token
from rl.policy.layers import model_rope_tables
from rl.policy.mla import MLAttention
from rl.policy.sparse import AttentionContext


def one_layer_config() -> DSAConfig:
    return DSAConfig.from_preset("deepseek-v3.2", num_hidden_layers=1, n_routed_experts=0, n_shared_experts=0)


def decode_ms(layer: MLAttention, cfg: DSAConfig, context: int, topk: int, repeats: int) -> tuple[float, float]:
    """Best-of-`repeats` ms to decode the token at position context-1 with `topk` keys selectable:
    (whole layer, attention core = `MLAttention.attend`: everything that grows with the context, plus
    the W_UV up-projection of the heads' outputs; the per-token projections are left out)."""
    layer.topk = topk
    cache = DSACache.allocate(cfg, 1, context)
    g = torch.Generator().manual_seed(0)
    cache.latents[0][:, : context - 1] = torch.randn(1, context - 1, cfg.latent_dim, generator=g)
    cache.index_keys[0][:, : context - 1] = torch.randn(1, context - 1, cfg.index_head_dim, generator=g)
    cache.valid[:, : context - 1] = True
    cache.seq_len = context - 1
    h = torch.randn(1, 1, cfg.hidden_size, generator=g)
    pos = torch.full((1, 1), context - 1)
    ctx = AttentionContext(
        start=context - 1, key_valid=cache.update_valid(context - 1, None, 1), mode="sparse",
        rope=model_rope_tables(cfg, pos)[0], index_rope=model_rope_tables(cfg, pos)[1],
        want_topk=False, want_indexer_loss=False,
    )
    whole, core = [], []
    for _ in range(repeats + 1):
        t0 = time.process_time()
        layer(h, ctx, cache)
        t1 = time.process_time()
        p = layer.project(h, ctx)
        latents, keys = cache.write(0, context - 1, p["entry"], p["index_k"])
        t2 = time.process_time()
        layer.attend(p, latents, keys, ctx, None)
        t3 = time.process_time()
        whole.append(t1 - t0)
        core.append(t3 - t2)

    # Minimum over repeats (first call dropped): the least disturbed run on a shared machine.
    return min(whole[1:]) * 1e3, min(core[1:]) * 1e3


def decode_table(contexts: list[int], repeats: int) -> None:
    cfg = one_layer_config()
    torch.manual_seed(0)
    with torch.no_grad():
        layer = MLAttention(cfg, 0).eval()
        for p in layer.parameters():
            p.normal_(0.0, 0.02)
    k = cfg.index_topk
    per_key_attn = attention_macs_per_key(cfg, absorbed=True)
    per_key_idx = indexer_macs_per_key(cfg)
    proj = (linear_macs_per_token(cfg) - cfg.hidden_size * cfg.vocab_size
            - 3 * cfg.hidden_size * cfg.intermediate_size)  # this layer's attention + indexer projections
    print(f"\nDecode, one layer at V3.2 shape (H=128, latent 512+64, indexer 64x128, k={k}), batch 1, fp32 CPU, "
          f"{torch.get_num_threads()} threads")
    print(f"{'context':>8} | {'core dense':>10} | {'core DSA':>8} | {'speed-up':>8} | {'MAC limit':>9} || "
          f"{'layer dense':>11} | {'layer DSA':>9} | {'speed-up':>8} | {'MAC limit':>9}")
    print(" " * 9 + "| " + "ms/token, attention core only".ljust(54) + "|| ms/token, whole layer (+ projections, W_o)")
    print("-" * 115)
    with torch.no_grad():
        for L in contexts:
            dense_layer, dense_core = decode_ms(layer, cfg, L, 1 << 30, repeats)
            dsa_layer, dsa_core = decode_ms(layer, cfg, L, k, repeats)
            core_d = per_key_attn * L
            core_s = per_key_attn * min(k, L) + (per_key_idx * L if L > k else 0)
            print(f"{L:>8} | {dense_core:>10.1f} | {dsa_core:>8.1f} | {dense_core / dsa_core:>7.2f}x | "
                  f"{core_d / core_s:>8.2f}x || {dense_layer:>11.1f} | {dsa_layer:>9.1f} | "
                  f"{dense_layer / dsa_layer:>7.2f}x | {(core_d + proj) / (core_s + proj):>8.2f}x")


def train_throughput(steps: int) -> None:
    print("\nTiny preset (vocab 4096), forward+backward, batch 16 x 192 tokens, fp32 CPU")
    print(f"{'mode':>7} | {'tokens/s':>9}")
    print("-" * 20)
    x = torch.randint(0, 4096, (16, 192), generator=torch.Generator().manual_seed(0))
    for mode in ("sparse", "dense"):
        torch.manual_seed(0)
        model = DSAForCausalLM(DSAConfig.from_preset("tiny", vocab_size=4096, attention_mode=mode)).train()
        times = []
        for _ in range(steps + 1):
            t0 = time.process_time()
            out = model(x, labels=x, use_cache=False)
            out.loss.backward()
            times.append(time.process_time() - t0)
        best = min(times[1:])
        print(f"{mode:>7} | {x.numel() / best:>9.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contexts", type=int, nargs="+", default=[2048, 8192, 32768, 131072])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    decode_table(args.contexts, args.repeats)
    train_throughput(args.train_steps)


if __name__ == "__main__":
    main()
