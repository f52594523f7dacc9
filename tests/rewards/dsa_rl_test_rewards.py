"""Misbehaving rewards for tests/rewards/test_runner.py (importable by worker processes by path)."""
from __future__ import annotations

import asyncio
import os
import time


def length(prompts, completions, **fields):
    return [float(len(c)) for c in completions]


def raise_on_bad(prompts, completions, **fields):
    if "bad" in completions:
        raise ValueError("cannot score 'bad'")
    return [1.0] * len(completions)


def nan_on_bad(prompts, completions, **fields):
    return [float("nan") if c == "bad" else None if c == "none" else 1.0 for c in completions]


def extra_value(prompts, completions, **fields):
    return [1.0] * (len(completions) + 1)


def scalar(prompts, completions, **fields):
    return 1.0


def sleep_forever(prompts, completions, **fields):
    time.sleep(10**6)


def hang_on_bad(prompts, completions, **fields):
    if "bad" in completions:
        time.sleep(10**6)
    return [1.0] * len(completions)


def die(prompts, completions, **fields):
    os._exit(3)


def pid(prompts, completions, **fields):
    return [float(os.getpid())] * len(completions)


async def async_len(prompts, completions, **fields):
    await asyncio.sleep(0.01)
    return [float(len(c)) for c in completions]


async def async_hang(prompts, completions, **fields):
    await asyncio.sleep(10**6)
