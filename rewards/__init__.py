"""Reward functions: contract, registry, plugin discovery, built-ins, sandboxed code execution.

A reward is a plain callable ``fn(prompts, completions, **fields) -> list[float]`` (or ``async
def``) that scores a batch; ``fields`` are dataset columns (``answer``, ``tests``, ...) and
trajectory info (``finish_reason``, ``num_turns``, ``env_reward``, ...). A reward may carry an
optional ``fn.warmup()`` that the runner calls once before the first step (slow imports, models).

Modules: :mod:`rewards.registry` (built-in names, entry points ``dsa_rl.rewards``, dotted paths),
:mod:`rewards.builtin` and :mod:`rewards.code` (the built-ins), :mod:`rewards.text` (answer
extraction rules), :mod:`rewards.sandbox` (isolated execution), :mod:`rewards.runner` (timeouts,
errors, parallel workers: what the training loop calls).
"""
from rewards.registry import get_reward, load_reward, register_reward
from rewards.runner import RewardError, RewardErrorRecord, RewardResult, RewardRunner, RewardTerm

__all__ = ["RewardError", "RewardErrorRecord", "RewardResult", "RewardRunner", "RewardTerm", "get_reward",
           "load_reward", "register_reward"]
