"""One GRPO ``train_step`` with and without shared-prefix packing (``algorithm.share_prefix``).

B prompts x G replies of synthetic tokens (random ids: the cost does not depend on them), ragged
reply lengths (uniform in [L/2, L]), KL on (the reference forward runs too), Keep Sampling Mask off,
``mini_batch_size = B*G/updates`` (whole groups with packing on), on SmolLM2 (``gguf:smollm2``,
converted once with DSA top-k 2048 and cached as ``rl.train`` does) or any source ``model.path`` takes. Both trainers start from the same weights;
each side is timed ``--repeats`` times after one warm-up step, alternating; the table gives the
median seconds per step and the ratio.

Run: python -m benchmarks.prefix_packing [--model gguf:smollm2] [--prompts 8 --group 8 --prompt-len 57 --reply-len 40]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def trajectories(B: int, G: int, prompt_len: int, reply_len: int, vocab: int, seed: int = 0):
    from rollout.types import Trajectory

    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(B):
        prompt = torch.randint(100, vocab, (prompt_len,), generator=g)
        for s in range(G):
            n = int(torch.randint(reply_len // 2, reply_len + 1, (1,), generator=g))
            toks = torch.cat([prompt, torch.randint(100, vocab, (n,), generator=g)])
            mask = torch.zeros(len(toks), dtype=torch.bool)
            mask[prompt_len:] = True
            out.append(Trajectory(tokens=toks, prompt_len=prompt_len, loss_mask=mask,
                                  logprobs=torch.full((len(toks),), -5.0), completion="", finish_reason="length",
                                  weight_version=0, prompt_index=b, sample_index=s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gguf:smollm2", help="a model.path rl.train accepts")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=57, help="SmolLM2 chat prompt of a word problem: ~57 tokens")
    ap.add_argument("--reply-len", type=int, default=40)
    ap.add_argument("--updates", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    from transformers import AutoModelForCausalLM

    import rl.policy  # noqa: F401  (registers the DSA model types)
    from rl.config import AlgorithmConfig, DeepSpeedConfig
    from rl.paths import default_cache_dir
    from rl.policy.convert import cached_convert
    from rl.trainer import Trainer

    path = str(cached_convert(args.model, default_cache_dir(), index_topk=2048))  # dense: every key fits
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trajs = trajectories(args.prompts, args.group, args.prompt_len, args.reply_len, base.config.vocab_size)
    adv = torch.randn(len(trajs), generator=torch.Generator().manual_seed(1))
    mini = args.prompts * args.group // args.updates
    trainers = {}
    for name, packed in (("plain", False), ("packed", True)):
        algo = AlgorithmConfig(lr=1e-6, warmup_steps=0, kl_coef=0.01, mini_batch_size=mini, micro_batch_size=mini,
                               share_prefix=packed, group_minibatches=packed)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        trainers[name] = Trainer(model, algo, DeepSpeedConfig(zero_stage=0))
        trainers[name].train_step(trajs, adv)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for _ in range(args.repeats):
        for name, tr in trainers.items():
            t = time.perf_counter()
            tr.train_step(trajs, adv)
            times[name].append(time.perf_counter() - t)
    tokens = sum(len(t.tokens) for t in trajs)
    print(f"\n{args.prompts} prompts x {args.group} replies, prompt {args.prompt_len} tokens, replies "
          f"{args.reply_len // 2}-{args.reply_len}, {args.updates} updates, {tokens} tokens, {args.threads} threads")
    print("| forward | s/step (median) | runs |\n| --- | ---: | --- |")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.2f} | {', '.join(f'{t:.2f}' for t in ts)} |")
    print(f"ratio packed / plain: {statistics.median(times['packed']) / statistics.median(times['plain']):.2f}")


if __name__ == "__main__":
    main()
