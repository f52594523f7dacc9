"""Rollout throughput: our engine vs `transformers` `generate()`, recording costs, 1 vs 2 Ray workers.

Tiny preset (embedded tokenizer's vocabulary), batch 64, prompts of 32 tokens, 128 new tokens
(EOS ignored, so every row produces 128), temperature 0.8, top-k 20, top-p 0.9 for every row.
In-process rows run with one intra-op thread and are timed in CPU seconds of this process
(`time.process_time`), which stays meaningful on a shared, loaded machine; wall seconds are shown
too. Ray rows are timed in wall seconds (their CPU time is in the worker processes); each Ray
worker has one CPU and one thread. Each row is the best of `--repeats` rounds, and the rounds
interleave the rows, so a change of machine load hits every row alike.

`--compile` adds the engine with its `torch.compile`d decode step and sampler (`EngineConfig(compile=
True)`); the one-time compile (about a minute per configuration on two cores, less when inductor's
on-disk cache holds the graphs) is printed and not counted in the rows.

    python -m benchmarks.rollout [--compile] [--repeats 3] [--no-ray]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# This file is named like the package it measures: drop its own folder from the import path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch

from rl.policy import DSAConfig, DSAForCausalLM
from rl.policy.tokenizer import load_tokenizer
from rollout.engine import EngineConfig, RolloutEngine
from rollout.sampling import SamplingParams, sample_next

B, P, N = 64, 32, 128


def best(fn, repeats: int) -> tuple[float, float]:
    """(cpu seconds, wall seconds) of the fastest of `repeats` runs (by CPU time)."""
    runs = []
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        fn()
        runs.append((time.process_time() - c, time.perf_counter() - w))
    return min(runs)


def plain_loop(model, ids, params) -> None:
    """The textbook loop: prefill, then forward + sample per step, no records."""
    cache = model.new_cache(B, P + N)
    logits = model(ids, cache=cache, logits_to_keep=1).logits[:, -1]
    gen = torch.Generator().manual_seed(0)
    for s in range(N):
        tok, _, _ = sample_next(logits, params, gen)
        if s + 1 < N:
            pos = torch.full((B, 1), P + s)
            logits = model(tok[:, None], position_ids=pos, cache=cache).logits[:, -1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="also time the torch.compile'd decode step")
    ap.add_argument("--no-ray", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tok = load_tokenizer()
    torch.manual_seed(0)
    cfg = DSAConfig.from_preset("tiny", vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    model = DSAForCausalLM(cfg).eval()
    ids = torch.randint(10, len(tok), (B, P))
    prompts = ids.tolist()
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=N, ignore_eos=True)
    rows: list[tuple[str, float | None, float]] = []

    def hf() -> None:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=True,
                                 temperature=0.8, top_k=20, top_p=0.9, pad_token_id=tok.pad_token_id)
        assert out.shape == (B, P + N)

    def engine(**kw):
        eng = RolloutEngine(model, tok, EngineConfig(**kw))
        c = time.process_time()
        eng.generate(prompts, params)  # warm-up (and the compile, at the measured shapes, when asked)
        if kw.get("compile"):
            print(f"compile + warm-up ({kw}): {time.process_time() - c:.0f} s CPU", flush=True)
        return lambda: eng.generate(prompts, params, seed=0)

    def plain() -> None:
        with torch.no_grad():
            plain_loop(model, ids, params)

    configs = [
        ("transformers generate()", hf),
        ("plain loop (forward + sample)", plain),
        ("engine, no records", engine(record_masks=False, record_routes=False)),
        ("engine + masks", engine(record_masks=True, record_routes=False)),
        ("engine + masks + routes", engine(record_masks=True, record_routes=True)),
        ("engine + masks + routes + DSA selections", engine(record_masks=True, record_routes=True, record_topk=True)),
    ]
    if args.compile:
        configs += [
            ("compiled engine, no records", engine(record_masks=False, record_routes=False, compile=True)),
            ("compiled engine + masks", engine(record_masks=True, record_routes=False, compile=True)),
            ("compiled engine + masks + routes", engine(record_masks=True, record_routes=True, compile=True)),
            ("compiled engine + masks + routes + DSA selections",
             engine(record_masks=True, record_routes=True, record_topk=True, compile=True)),
        ]
    # Rounds interleave the configurations, so a change of machine load hits all of them alike.
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in configs}
    for _ in range(args.repeats):
        for name, fn in configs:
            runs[name].append(best(fn, 1))
    rows += [(name, *min(runs[name])) for name, _ in configs]
    if not args.no_ray:
        import ray

        from rollout.pool import RolloutPool

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        for compiled in (False, True) if args.compile else (False,):
            for n in (1, 2):
                ecfg = EngineConfig(record_masks=True, record_routes=True, compile=compiled)
                pool = RolloutPool(cfg, None, ecfg, num_workers=n, state_dict=model.state_dict(), chunk_size=B // n,
                                   max_in_flight=1)
                pool.generate(prompts, params)  # actors started and warm (compiled, when asked)
                _, wall = best(lambda pool=pool: pool.generate(prompts, params), args.repeats)
                name = f"Ray pool, {n} worker{'s' * (n > 1)}{', compiled' * compiled} (+ masks + routes)"
                rows.append((name, None, wall))
                pool.shutdown()
        ray.shutdown()

    base = rows[0][1]
    print(f"\nbatch {B}, prompt {P}, {N} new tokens, T=0.8 top-k 20 top-p 0.9, 1 thread per process\n")
    print(f"| {'configuration':52s} | {'tok/s (CPU time)':>16s} | {'tok/s (wall)':>12s} | {'vs generate()':>13s} |")
    print(f"|{'-' * 54}|{'-' * 18}|{'-' * 14}|{'-' * 15}|")
    for name, cpu, wall in rows:
        tps_cpu = f"{B * N / cpu:16.0f}" if cpu is not None else f"{'-':>16s}"
        ratio = f"{base / cpu:12.2f}x" if cpu is not None else f"{'-':>13s}"
        print(f"| {name:52s} | {tps_cpu} | {B * N / wall:12.0f} | {ratio} |")
    by = {name: cpu for name, cpu, _ in rows}
    for prefix in ("engine", "compiled engine") if args.compile else ("engine",):
        plain = by[f"{prefix}, no records"]
        for rec in ("masks", "masks + routes", "masks + routes + DSA selections"):
            name = f"{prefix} + {rec}"
            print(f"recording cost, {name}: {100 * (by[name] / plain - 1):+.1f}% of rollout time")

if __name__ == "__main__":
    main()
