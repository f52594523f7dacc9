"""Agent GRPO on this machine, in one process: what a step over tool environments costs.

A reference for the loop's agent path (``+experiment=agent``), without Ray: synthesized
environments (``envs.data.load_tasks``), a short cold start on the reference demonstrations
(``rollout.scripted.cold_start_examples``), then GRPO steps: ``rollout.agent.run_agent`` on a
``RolloutEngine`` (G episodes per task), the verifier's reward (``rewards.builtin.env_verifier``
on ``info["env_reward"]``), group advantages, ``rl.trainer.Trainer.train_step``, weights copied
back to the engine. Prints per-phase times, tokens, turns, tool calls/errors, and the held-out
success rate (greedy) before and after.

It measures cost; at these step counts the tiny random-init policy does not learn the tasks.

Run: python -m benchmarks.agent_grpo [--family lookup] [--sft-steps 5] [--steps 3]
"""
from __future__ import annotations

import argparse
import os
import random
import time
from dataclasses import dataclass, field

import torch

from envs.data import load_tasks
from rewards.builtin import env_verifier
from rl.advantages import get_advantage
from rl.config import AlgorithmConfig, DeepSpeedConfig
from rl.policy import DSAConfig, DSAForCausalLM
from rl.policy.tokenizer import load_tokenizer
from rollout.agent import AgentConfig, run_agent
from rollout.engine import EngineConfig, RolloutEngine
from rollout.sampling import SamplingParams
from rollout.scripted import cold_start_examples


@dataclass
class _Env:  # the EnvConfig fields load_tasks reads
    name: str
    num_envs: int
    path: str | None = None
    levels: list[int] = field(default_factory=lambda: [1])
    test_fraction: float = 0.2


def _sft(model, examples, steps: int, batch: int, pad: int, lr: float) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = random.Random(0)
    loss = float("nan")
    model.train()
    for _ in range(steps):
        sel = rng.sample(examples, min(batch, len(examples)))
        L = max(len(i) for i, _ in sel)
        ids = torch.full((len(sel), L), pad)
        att = torch.zeros(len(sel), L, dtype=torch.long)
        lab = torch.full((len(sel), L), -100)
        for b, (i, m) in enumerate(sel):
            t = torch.tensor(i)
            ids[b, : len(i)], att[b, : len(i)] = t, 1
            lab[b, : len(i)] = torch.where(torch.tensor(m) > 0, t, -100)
        out = model(input_ids=ids, attention_mask=att, labels=lab, attention_mode="dense", use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        loss = float(out.loss.detach())
    model.eval()
    return loss


def _success(engine, tasks, cfg) -> float:
    trajs = run_agent(engine, tasks, SamplingParams(greedy=True, max_new_tokens=48), cfg)
    return sum(t.info["env_reward"] for t in trajs) / len(trajs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="lookup")
    ap.add_argument("--num-envs", type=int, default=60)
    ap.add_argument("--sft-steps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    a = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    tok = load_tokenizer()
    train, test = load_tasks(_Env(a.family, a.num_envs))
    acfg = AgentConfig(max_turns=a.max_turns, tool_schema="compact")
    mcfg = DSAConfig.from_preset("tiny", vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = DSAForCausalLM(mcfg)
    rows = []
    t0 = time.perf_counter()
    examples = cold_start_examples(train, tok, acfg, stop_early=0.0, reasoning=True)
    t1 = time.perf_counter()
    sft_loss = _sft(model, examples, a.sft_steps, 8, tok.pad_token_id, 2e-3)
    t2 = time.perf_counter()
    mean_len = sum(len(i) for i, _ in examples) / len(examples)
    rows.append(("cold start", f"{len(examples)} demos in {t1 - t0:.1f} s; {a.sft_steps} SFT steps in "
                 + f"{t2 - t1:.1f} s; loss {sft_loss:.3f}; demo tokens {mean_len:.0f}"))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def factory():
        m = DSAForCausalLM(mcfg)
        m.load_state_dict(state)
        return m

    from rl.trainer import Trainer

    algo = AlgorithmConfig(group_size=a.group, lr=1e-4, warmup_steps=0, mini_batch_size=a.prompts * a.group,
                           micro_batch_size=a.group)
    trainer = Trainer(factory, algo, DeepSpeedConfig(zero_stage=0), temperature=1.0,
                      norm_constant=float(a.max_turns * a.max_new_tokens), pad_id=tok.pad_token_id)
    engine = RolloutEngine(factory().eval(), tok, EngineConfig(record_routes=True))
    t0 = time.perf_counter()
    before = _success(engine, test, acfg)
    rows.append(("held-out success before", f"{before:.1%} of {len(test)} ({time.perf_counter() - t0:.1f} s)"))
    params = SamplingParams(temperature=1.0, max_new_tokens=a.max_new_tokens)
    advantage = get_advantage("grpo")
    rng = random.Random(0)
    for step in range(a.steps):
        tasks = rng.sample(train, a.prompts)
        t0 = time.perf_counter()
        trajs = run_agent(engine, [t for t in tasks for _ in range(a.group)], params, acfg, seed=step,
                          prompt_indices=[i for i in range(a.prompts) for _ in range(a.group)],
                          sample_indices=[s for _ in range(a.prompts) for s in range(a.group)])
        t1 = time.perf_counter()
        rewards = torch.tensor(env_verifier([""] * len(trajs), [t.completion for t in trajs],
                                            env_reward=[t.info["env_reward"] for t in trajs]))
        adv = advantage(rewards, torch.arange(a.prompts).repeat_interleave(a.group), scale_by_std=False)
        m = trainer.train_step(trajs, adv)
        t2 = time.perf_counter()
        engine.model.load_state_dict(trainer.export_state_dict())
        engine.weight_version = step + 1
        n = len(trajs)
        rows.append((f"GRPO step {step + 1}", (
            f"rollout {t1 - t0:.1f} s, train {t2 - t1:.1f} s; reward {float(rewards.mean()):.2f}; "
            f"tokens/episode {sum(len(t.tokens) for t in trajs) / n:.0f} "
            f"(sampled {sum(t.num_sampled for t in trajs) / n:.0f}); turns {sum(t.num_turns for t in trajs) / n:.1f}; "
            f"tool calls {sum(t.num_tool_calls for t in trajs) / n:.1f} (errors "
            f"{sum(t.num_tool_errors for t in trajs) / n:.1f}); ratio {m['ratio_mean']:.4f}, "
            f"logp mismatch {m['logp_mismatch_max']:.1e}")))
    rows.append(("held-out success after", f"{_success(engine, test, acfg):.1%}"))
    print(f"\n## Agent GRPO, {a.family}, tiny policy, B={a.prompts} x G={a.group}, compact tools\n")
    print("| phase | result |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
