"""The lightning indexer on real weights: SmolLM2-135M-Instruct -> DSA -> dense warm-up -> sparse stage.

    python benchmarks/indexer_smollm.py [--warmup-steps 60] [--sparse-steps 30] [--out DIR] [--summarize]

Runs the two commands of the README's indexer section (``python -m rl.indexer_train``) in
subprocesses, exactly as a user would, on ``model.path=gguf:smollm2`` (converted once, cached) with
``indexer.text=math_chat`` (synthesized word problems with worked solutions in SmolLM2's own chat
template: not the built-in corpus), then reads their ``indexer_report.json`` files and prints:

- per stage: optimizer steps and training seconds (the stage's budget clock), the random-selection baseline, the indexer's top-k recall of the true attention
  top-k (mean / min / max over the 30 layers, before and after), the attention mass the selection
  captures (mean, and the ceiling: the true top-k's), and the sparse-minus-dense LM loss gap;
- recall and mass of a few layers; the full per-layer tables are in each run's JSON report.

``--summarize`` only re-reads the reports of an earlier ``--out`` directory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS_SHOWN = (0, 1, 2, 7, 15, 22, 29)


def stage_command(exp: str, path: str, out: Path, a: argparse.Namespace, steps: int) -> list[str]:
    """The README's command for stage ``exp`` (``dsa_warmup`` or ``dsa_sparse``)."""
    return [sys.executable, "-m", "rl.indexer_train", f"+experiment={exp}", f"model.path={path}",
            f"model.index_topk={a.topk}", "indexer.text=math_chat", f"indexer.seq_len={a.seq_len}",
            f"indexer.num_sequences={a.num_sequences}", f"indexer.eval_sequences={a.eval_sequences}",
            f"indexer.batch_size={a.batch_size}", f"budget.max_steps={steps}", "device=cpu",
            f"hydra.run.dir={out}"]


def summarize(reports: dict[str, dict], seconds: dict[str, float]) -> str:
    """Summary table over layers, plus the chosen layers, of both stages."""
    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    def stats(xs: list[float]) -> str:
        return f"{mean(xs):.3f} / {min(xs):.3f} / {max(xs):.3f}"

    lines = [("| stage | steps | train s | random | recall before (mean/min/max) | recall after (mean/min/max) "
              "| mass before | mass after | mass of true top-k | LM gap before | LM gap after | dense LM after |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for stage, r in reports.items():
        b, a = r["before"], r["after"]
        spent = r["budget"]
        lines.append(f"| {stage} | {spent['budget/steps']} | {spent['budget/seconds']:.0f} | {a['random']:.3f} "
                     f"| {stats(b['recall'])} "
                     f"| {stats(a['recall'])} | {mean(b['mass']):.3f} | {mean(a['mass']):.3f} "
                     f"| {mean(a['mass_best']):.3f} | {b['lm_gap']:.3f} | {a['lm_gap']:.3f} | {a['lm_dense']:.3f} |")
    lines += ["", "| layer | " + " | ".join(f"{s} recall before -> after" for s in reports) + " |",
              "|---|" + "---|" * len(reports)]
    for layer in LAYERS_SHOWN:
        cells = []
        for r in reports.values():
            if layer < len(r["after"]["recall"]):
                cells.append(f"{r['before']['recall'][layer]:.3f} -> {r['after']['recall'][layer]:.3f}")
        if cells:
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    if seconds:
        lines += ["", "wall time per stage (conversion, measurements, training): "
                  + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warmup-steps", type=int, default=60)
    ap.add_argument("--sparse-steps", type=int, default=30)
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--num-sequences", type=int, default=400)
    ap.add_argument("--eval-sequences", type=int, default=16)
    ap.add_argument("--out", default="outputs/indexer_smollm", help="working directory")
    ap.add_argument("--summarize", action="store_true", help="only read the reports of an earlier --out")
    a = ap.parse_args()
    out = Path(a.out)
    dirs = {"warmup": out / "warmup", "sparse": out / "sparse"}
    seconds: dict[str, float] = {}
    if a.summarize:
        seconds = json.loads((out / "seconds.json").read_text()) if (out / "seconds.json").exists() else {}
    else:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        for stage, exp, path, steps in (("warmup", "dsa_warmup", "gguf:smollm2", a.warmup_steps),
                                        ("sparse", "dsa_sparse", str(dirs["warmup"] / "model"), a.sparse_steps)):
            cmd = stage_command(exp, path, dirs[stage], a, steps)
            print("$", " ".join(cmd[1:]), flush=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, env=env, check=True)
            seconds[stage] = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        (out / "seconds.json").write_text(json.dumps(seconds))
    reports = {s: json.loads((d / "indexer_report.json").read_text()) for s, d in dirs.items()
               if (d / "indexer_report.json").exists()}
    k = next(iter(reports.values()))["index_topk"]
    print(f"\nSmolLM2-135M-Instruct, index_topk {k}, seq_len {a.seq_len}, text math_chat "
          f"(held-out packed sequences); full per-layer tables: {out}/*/indexer_report.json")
    print(summarize(reports, seconds))


if __name__ == "__main__":
    main()
