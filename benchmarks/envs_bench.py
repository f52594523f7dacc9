"""Agent environments on this machine: synthesis throughput and the multi-turn loop's overhead.

Part 1: ``envs.synth.pipeline.synthesize`` of N environments (build, compose level by level,
validate every level): wall time, environments/s, by family. Target: 2,000 in under a minute.
Part 2: the loop (``rollout.agent.run_agent``) with the scripted reference policy (no model), per
family: episodes/s, mean turns, trajectory tokens (prompt + turns), and the share of tokens the
policy sampled. The code family's ``python`` tool runs in the sandbox (skipped without one).

Run: python -m benchmarks.envs_bench [--n 2000] [--episodes 40]
"""
from __future__ import annotations

import argparse
import time
from collections import Counter

from envs.synth.pipeline import NUM_ENVS, synthesize
from rewards.sandbox import sandbox_support
from rl.policy.tokenizer import load_tokenizer
from rollout.agent import AgentConfig, run_agent
from rollout.sampling import SamplingParams
from rollout.scripted import ScriptedEngine, reference_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=NUM_ENVS)
    ap.add_argument("--episodes", type=int, default=40, help="episodes per family in part 2")
    a = ap.parse_args()

    t0 = time.perf_counter()
    tasks, _ = synthesize(a.n, seed=0)
    wall = time.perf_counter() - t0
    fams = Counter(t.family for t in tasks)
    print(f"\n## Synthesis: {a.n} environments, every level validated\n")
    print("| environments | wall s | envs/s | per family |")
    print("|---:|---:|---:|---|")
    print(f"| {len(tasks)} | {wall:.1f} | {len(tasks) / wall:,.0f} | "
          f"{', '.join(f'{f} {c}' for f, c in sorted(fams.items()))} |")

    tok = load_tokenizer()
    print("\n## Multi-turn loop, scripted reference policy (no model)\n")
    print("| family | episodes | success | episodes/s | turns | tokens / episode | sampled share |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for fam in sorted(fams):
        if fam == "code" and not sandbox_support()[0]:
            print(f"| {fam} | skipped: no sandbox | | | | | |")
            continue
        sel = [t for t in tasks if t.family == fam][: a.episodes]
        t0 = time.perf_counter()
        trajs = run_agent(ScriptedEngine(tok, reference_policy(sel)), sel, SamplingParams(max_new_tokens=4096),
                          AgentConfig(max_turns=16))
        s = time.perf_counter() - t0
        n = len(trajs)
        toks = sum(len(t.tokens) for t in trajs)
        print(f"| {fam} | {n} | {sum(t.info['env_reward'] for t in trajs) / n:.0%} | {n / s:,.1f} | "
              f"{sum(t.num_turns for t in trajs) / n:.1f} | {toks / n:,.0f} | "
              f"{sum(t.num_sampled for t in trajs) / toks:.0%} |")


if __name__ == "__main__":
    main()
