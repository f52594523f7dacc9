"""One-shot device check for a CUDA machine: the gpu tests, then one table of what the device does.

1. ``pytest -m gpu tests/gpu`` in a subprocess (its pass / fail / skip counts and failures go into
   the report);
2. one attention layer with DeepSeek-V3.2's shape (hidden 7168, 128 heads, latent 512 + rope 64,
   indexer 64 x 128, k = 2048), bf16, batch 1: DSA against dense attention, prefill of L tokens and
   the decode of token L, at L = 8K, 32K, 128K, with the peak memory each takes beyond the weights;
   a dense prefill whose time, extrapolated from the last context (quadratic), would exceed
   ``--max-row-s`` is skipped and reported as that estimate;
3. rollout tokens/s: the engine (static decode, `torch.compile`d, kept sets and routes recorded) against
   `transformers` `generate()` with the same sampling, on the ``tiny`` and ``small`` presets;
4. GRPO seconds per step on ``small``: rollouts on the engine, random 0/1 rewards, group-relative
   advantages, one DeepSpeed update (``model.dtype=auto``: bf16 on CUDA), the weights copied back.

Every row is timed in wall seconds with the device synchronised (best of ``--repeats``; GRPO:
median). Writes ``OUT.json`` and ``OUT.md`` (a Markdown table with the card's name) and prints the
table. Meant to finish in under 8 minutes on one H100; ``--budget-s`` skips the rows left when the
time is spent (they say so).

``--cpu-dry-run`` runs the same code on the CPU at tiny sizes (a small layer shape, contexts of a few
hundred tokens, short rollouts, eager decode), to check the script end to end without a GPU.

    python -m benchmarks.gpu_check [--out gpu_check] [--skip-tests] [--cpu-dry-run]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This folder holds benchmarks/rollout.py: keep it off the import path (it would shadow `rollout`).
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check", help="writes OUT.json and OUT.md")
    ap.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on the CPU (checks the script)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run pytest -m gpu first")
    ap.add_argument("--contexts", type=int, nargs="+", default=None, help="default 8K 32K 128K (dry run: 128 256 512)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-row-s", type=float, default=60.0, help="skip a dense prefill estimated to take longer")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip the rows left after this many seconds (default 450; none in a dry run)")
    ap.add_argument("--tests-timeout-s", type=float, default=300.0)
    return ap.parse_args(argv)


class Clock:
    """Wall time with the device synchronised, and the run's time budget."""

    def __init__(self, device, budget_s: float) -> None:
        self.device, self.start, self.budget_s = device, time.perf_counter(), budget_s

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def time(self, fn: Callable[[], object], repeats: int) -> float:
        """Best of ``repeats`` wall seconds of fn() (after one warm-up call)."""
        fn()
        best = float("inf")
        for _ in range(repeats):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t0)
        return best

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)


def peak_mem(device, fn: Callable[[], object]) -> float:
    """GiB the call allocated at its peak beyond what was allocated before it (CUDA; NaN on CPU)."""
    import torch

    if device.type != "cuda":
        fn()
        return float("nan")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**30


# ---- 1. the gpu tests ---------------------------------------------------------------------------------
def run_gpu_tests(timeout_s: float) -> dict:
    """``pytest -m gpu tests/gpu`` in a subprocess: counts, failed test ids, seconds."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/gpu"]
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
        out, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as err:
        out, rc = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""), "timeout"
    line = next((x for x in out.splitlines() if x.startswith("gpu tests:")), "gpu tests: no summary line")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", line)}
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.MULTILINE)
    print(line, flush=True)
    return {"returncode": rc, "summary": line, "counts": counts, "failed": failed,
            "seconds": round(time.perf_counter() - t0, 1), "tail": out[-3000:]}


# ---- 2. attention at V3.2's layer shape ---------------------------------------------------------------
def attention_rows(device, dtype, contexts: list[int], dry: bool, clock: Clock, repeats: int,
                   max_row_s: float) -> list[dict]:
    import torch

    from rl.policy import DSACache, DSAConfig
    from rl.policy.layers import model_rope_tables
    from rl.policy.mla import MLAttention
    from rl.policy.sparse import AttentionContext

    if dry:  # the `small` preset's layer: seconds on a CPU
        cfg = DSAConfig.from_preset("small", num_hidden_layers=1, n_routed_experts=0, index_topk=64)
    else:
        cfg = DSAConfig.from_preset("deepseek-v3.2", num_hidden_layers=1, n_routed_experts=0, n_shared_experts=0)
    torch.manual_seed(0)
    with torch.no_grad():
        layer = MLAttention(cfg, 0).to(device, dtype).eval()
        for p in layer.parameters():
            p.normal_(0.0, 0.02)
    k = cfg.index_topk
    H = cfg.num_attention_heads

    def ctx_for(start: int, T: int, mode: str, valid):
        pos = torch.arange(start, start + T, device=device)[None]  # (1, T)
        rope, index_rope = model_rope_tables(cfg, pos)
        return AttentionContext(start=start, key_valid=valid, mode=mode, rope=rope, index_rope=index_rope,
                                want_topk=False, want_indexer_loss=False)

    def prefill(h, L: int, mode: str, valid, reps: int) -> tuple[float, float]:
        """(best seconds, peak GiB) of the layer over L tokens."""
        def fn():
            return layer(h, ctx_for(0, L, mode, valid), None)
        return clock.time(fn, reps), peak_mem(device, fn)

    def decode(L: int, topk: int, g) -> tuple[float, float]:
        """(best ms, peak GiB) of the layer on token L, the cache holding L - 1 random entries;
        dense = every key selected (the absorbed MQA form over all of them)."""
        cache = DSACache.allocate(cfg, 1, L, device, dtype)
        cache.latents[0][:, : L - 1] = torch.randn(1, L - 1, cfg.latent_dim, generator=g).to(device, dtype)
        cache.index_keys[0][:, : L - 1] = torch.randn(1, L - 1, cfg.index_head_dim, generator=g).to(device, dtype)
        cache.valid[:, : L - 1] = True
        x = torch.randn(1, 1, cfg.hidden_size, generator=g).to(device, dtype)
        layer.topk = topk

        def step():
            cache.seq_len = L - 1
            return layer(x, ctx_for(L - 1, 1, "sparse", cache.update_valid(L - 1, None, 1)), cache)
        try:
            return clock.time(step, max(repeats, 5)) * 1e3, peak_mem(device, step)
        finally:
            layer.topk = k

    rows: list[dict] = []
    last_dense_prefill: tuple[int, float] | None = None
    g = torch.Generator(device="cpu").manual_seed(0)
    for L in contexts:
        # Query chunks bound the (H, C, L) fp32 scores to ~4 GiB (dense prefill at 128K: C = 64).
        rows_fit = max(1, int(4 * 2**30 / (H * L * 4)))
        layer.chunk = max(16, min(1024, 1 << (rows_fit.bit_length() - 1)))
        h = torch.randn(1, L, cfg.hidden_size, generator=g).to(device, dtype)
        valid = torch.ones(1, L, dtype=torch.bool, device=device)
        for mode in ("dense", "sparse"):
            row = {"part": "attention", "context": L, "attention": "dense" if mode == "dense" else f"DSA k={k}"}
            est = (last_dense_prefill[1] * (L / last_dense_prefill[0]) ** 2
                   if mode == "dense" and last_dense_prefill else 0.0)
            if clock.left() <= 0:
                row["prefill_note"] = "skipped: time budget spent"
            elif est > max_row_s:
                row["prefill_note"] = f"skipped: estimated {est:.0f} s (quadratic from {last_dense_prefill[0]})"
            else:
                try:
                    with torch.no_grad():
                        row["prefill_s"], row["prefill_mem_gib"] = prefill(h, L, mode, valid,
                                                                           1 if L >= 32768 else repeats)
                    if mode == "dense":
                        last_dense_prefill = (L, row["prefill_s"])
                except torch.OutOfMemoryError:
                    row["prefill_note"] = "out of memory"
                    torch.cuda.empty_cache()
            if clock.left() <= 0:
                row["decode_note"] = "skipped: time budget spent"
            else:
                try:
                    with torch.no_grad():
                        row["decode_ms"], row["decode_mem_gib"] = decode(L, k if mode == "sparse" else 1 << 30, g)
                except torch.OutOfMemoryError:
                    row["decode_note"] = "out of memory"
                    torch.cuda.empty_cache()
            print(f"L={L} {row['attention']}: prefill {row.get('prefill_s', row.get('prefill_note'))} s, "
                  f"decode {row.get('decode_ms', row.get('decode_note'))} ms", flush=True)
            rows.append(row)
    return rows


# ---- 3. rollout tokens/s ------------------------------------------------------------------------------
def rollout_rows(device, dtype, presets: list[str], dry: bool, clock: Clock, repeats: int) -> list[dict]:
    import torch

    from rl.policy import DSAConfig, DSAForCausalLM
    from rl.policy.tokenizer import load_tokenizer
    from rollout.engine import EngineConfig, RolloutEngine
    from rollout.sampling import SamplingParams

    B, P, N = (8, 16, 16) if dry else (64, 32, 128)
    tok = load_tokenizer()
    rows = []
    for preset in presets:
        if clock.left() <= 0:
            rows.append({"part": "rollout", "preset": preset, "note": "skipped: time budget spent"})
            continue
        torch.manual_seed(0)
        cfg = DSAConfig.from_preset(preset, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                    eos_token_id=tok.eos_token_id)
        model = DSAForCausalLM(cfg).to(device, dtype).eval()
        ids = torch.randint(10, len(tok), (B, P), generator=torch.Generator().manual_seed(0)).to(device)
        params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, max_new_tokens=N, ignore_eos=True)

        def hf(model=model, ids=ids):
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, do_sample=True,
                               temperature=0.8, top_k=20, top_p=0.9, pad_token_id=tok.pad_token_id)

        engine = RolloutEngine(model, tok, EngineConfig(max_batch_size=B, compile=not dry, record_routes=True))
        t0 = time.perf_counter()
        engine.warm_up()
        compile_s = time.perf_counter() - t0
        prompts = ids.tolist()
        t_hf = clock.time(hf, repeats)
        t_eng = clock.time(lambda engine=engine, prompts=prompts, params=params:
                           engine.generate(prompts, params, seed=0), repeats)
        row = {"part": "rollout", "preset": preset, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
               "batch": B, "prompt": P, "new_tokens": N, "generate_tok_s": B * N / t_hf,
               "engine_tok_s": B * N / t_eng, "speedup": t_hf / t_eng, "engine_compiled": not dry,
               "compile_s": compile_s}
        print(f"rollout {preset}: generate {row['generate_tok_s']:.0f} tok/s, engine {row['engine_tok_s']:.0f} "
              f"tok/s ({row['speedup']:.2f}x)", flush=True)
        rows.append(row)
    return rows


# ---- 4. GRPO s/step -----------------------------------------------------------------------------------
def grpo_row(device, dry: bool, clock: Clock) -> dict:
    import torch

    from rl.advantages import get_advantage
    from rl.config import AlgorithmConfig, DeepSpeedConfig
    from rl.device import pick_dtype
    from rl.policy import DSAConfig, DSAForCausalLM
    from rl.policy.tokenizer import load_tokenizer
    from rl.trainer import Trainer
    from rollout.engine import EngineConfig, RolloutEngine
    from rollout.sampling import SamplingParams

    if clock.left() <= 0:
        return {"part": "grpo", "preset": "small", "note": "skipped: time budget spent"}
    prompts_per_step, G, N, steps = (2, 4, 8, 2) if dry else (16, 8, 64, 4)
    tok = load_tokenizer()
    dtype = pick_dtype("auto", device)
    cfg = DSAConfig.from_preset("small", vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                eos_token_id=tok.eos_token_id)

    def factory():
        torch.manual_seed(0)
        return DSAForCausalLM(cfg).to(dtype)

    algo = AlgorithmConfig(group_size=G, lr=1e-5, warmup_steps=0, mini_batch_size=prompts_per_step * G,
                           micro_batch_size=min(32, prompts_per_step * G))
    trainer = Trainer(factory, algo, DeepSpeedConfig(zero_stage=0), temperature=1.0, norm_constant=float(N),
                      pad_id=tok.pad_token_id)
    engine = RolloutEngine(factory().to(device).eval(), tok, EngineConfig(compile=not dry))
    engine.warm_up()
    params = SamplingParams(temperature=1.0, max_new_tokens=N)
    g = torch.Generator().manual_seed(0)
    advantage = get_advantage(algo.advantage)
    phases: dict[str, list[float]] = {"rollout": [], "train": [], "sync": [], "step": []}
    for step in range(steps + 1):  # step 0 warms up (DeepSpeed, allocator)
        clock.sync()
        t0 = time.perf_counter()
        prompts = [torch.randint(10, len(tok), (24,), generator=g).tolist() for _ in range(prompts_per_step)]
        trajs = engine.generate([p for p in prompts for _ in range(G)], params, seed=step)
        t1 = time.perf_counter()
        rewards = torch.randint(0, 2, (len(trajs),), generator=g).float()
        adv = advantage(rewards, torch.arange(prompts_per_step).repeat_interleave(G), scale_by_std=False)
        trainer.train_step(trajs, adv)
        clock.sync()
        t2 = time.perf_counter()
        engine.model.load_state_dict(trainer.export_state_dict())
        engine.weight_version = step + 1
        clock.sync()
        t3 = time.perf_counter()
        if step > 0:
            for key, v in (("rollout", t1 - t0), ("train", t2 - t1), ("sync", t3 - t2), ("step", t3 - t0)):
                phases[key].append(v)
    row = {"part": "grpo", "preset": "small", "dtype": str(dtype).removeprefix("torch."),
           "prompts": prompts_per_step, "group": G, "max_new_tokens": N, "steps": steps}
    row.update({f"{k}_s": statistics.median(v) for k, v in phases.items()})
    print(f"GRPO small: {row['step_s']:.2f} s/step (rollout {row['rollout_s']:.2f}, train {row['train_s']:.2f}, "
          f"sync {row['sync_s']:.2f})", flush=True)
    return row


# ---- report -------------------------------------------------------------------------------------------
def _f(v, fmt: str) -> str:
    return "" if v is None or math.isnan(v) else format(v, fmt)


def markdown(report: dict) -> str:
    head = (f"**Device check** on {report['device']} ({report['dtype']}, torch {report['torch']}, "
            f"{report['date']}, {report['seconds']:.0f} s)")
    lines = [head, ""]
    t = report.get("tests")
    if t:
        lines += [f"`pytest -m gpu`: {t['summary'].removeprefix('gpu tests: ')}"
                  + (f"; failed: {', '.join(t['failed'])}" if t["failed"] else ""), ""]
    att = [r for r in report["rows"] if r["part"] == "attention"]
    if att:
        lines += ["| context | attention | prefill s | prefill peak GiB | decode ms/token | decode peak GiB |",
                  "| ---: | --- | ---: | ---: | ---: | ---: |"]
        for r in att:
            lines.append(f"| {r['context']} | {r['attention']} | {_f(r.get('prefill_s'), '.3f') or r.get('prefill_note')}"
                         f" | {_f(r.get('prefill_mem_gib'), '.2f')} | {_f(r.get('decode_ms'), '.2f') or r.get('decode_note')}"
                         f" | {_f(r.get('decode_mem_gib'), '.3f')} |")
        lines.append("")
    ro = [r for r in report["rows"] if r["part"] == "rollout"]
    if ro:
        lines += ["| rollout preset | params (M) | batch x new tokens | generate() tok/s | engine tok/s | engine vs generate() |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in ro:
            if "note" in r:
                lines.append(f"| {r['preset']} | {r['note']} | | | | |")
                continue
            eng = "compiled" if r["engine_compiled"] else "eager"
            lines.append(f"| {r['preset']} | {r['params_m']:.1f} | {r['batch']} x {r['new_tokens']} | "
                         f"{r['generate_tok_s']:.0f} | {r['engine_tok_s']:.0f} ({eng}) | {r['speedup']:.2f}x |")
        lines.append("")
    for r in (r for r in report["rows"] if r["part"] == "grpo"):
        if "note" in r:
            lines.append(f"GRPO on `small`: {r['note']}")
        else:
            what = f"{r['prompts']} prompts x {r['group']} samples x {r['max_new_tokens']} tokens, {r['dtype']}"
            lines += ["| GRPO step, `small` | s/step (median) | rollout | train | weight copy |",
                      "| --- | ---: | ---: | ---: | ---: |",
                      f"| {what} | {r['step_s']:.2f} | {r['rollout_s']:.2f} | {r['train_s']:.2f} | {r['sync_s']:.2f} |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.cpu_dry_run:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available; run it on a GPU machine, or use --cpu-dry-run here")
    device = torch.device("cpu" if args.cpu_dry_run else "cuda")
    dtype = torch.float32 if args.cpu_dry_run else torch.bfloat16
    contexts = args.contexts or ([128, 256, 512] if args.cpu_dry_run else [8192, 32768, 131072])
    start = time.perf_counter()
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, dry run)",
                    "dtype": str(dtype).removeprefix("torch."), "torch": torch.__version__,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": []}
    if not args.skip_tests:
        report["tests"] = run_gpu_tests(args.tests_timeout_s)
    budget_s = args.budget_s if args.budget_s is not None else (float("inf") if args.cpu_dry_run else 450.0)
    clock = Clock(device, budget_s - (time.perf_counter() - start))
    report["rows"] += attention_rows(device, dtype, contexts, args.cpu_dry_run, clock, args.repeats, args.max_row_s)
    report["rows"] += rollout_rows(device, dtype, ["tiny", "small"], args.cpu_dry_run, clock, args.repeats)
    report["rows"].append(grpo_row(device, args.cpu_dry_run, clock))
    report["seconds"] = time.perf_counter() - start
    md = markdown(report)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(md)
    print("\n" + md)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return report


if __name__ == "__main__":
    main()
