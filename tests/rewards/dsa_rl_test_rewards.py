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


class _BadFloat:
    def __float__(self):
        raise RuntimeError("no float for you")


def _explode(*args):
    raise RuntimeError("cannot be rebuilt")


class _NoUnpickle(float):
    """Pickles fine, fails to unpickle (in the process that reads it)."""

    def __reduce__(self):
        return (_explode, (1,))


def odd_values(prompts, completions, **fields):
    """One odd value per sample, chosen by the completion's text."""
    import numpy as np
    table = {"huge": 10 ** 400, "np0d": np.float64(0.5), "badfloat": _BadFloat(), "lambda": (lambda: 1),
             "nounpickle": _NoUnpickle(1.0), "ok": 1.0}
    return [table[c] for c in completions]


def numpy_scalar(prompts, completions, **fields):
    import numpy as np
    return np.array(1.0)  # a 0-d array: has __len__, len() raises


def hog_memory(prompts, completions, **fields):
    x = bytearray(2 << 30)  # 2 GB
    return [float(len(x) > 0)] * len(completions)


def slow_one(prompts, completions, **fields):
    time.sleep(1.0)
    return [1.0] * len(completions)
