"""Helpers shared by the synthesized families: names, answer normalisation, the submit tool."""
from __future__ import annotations

import random
import re
from typing import Any

from envs.base import ToolSpec, params

_ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
_CODAS = ("", "n", "r", "l", "s", "m", "th", "nd")


def word(rng: random.Random, syllables: int = 2) -> str:
    """A pronounceable made-up word, capitalised (e.g. ``Dravel``)."""
    w = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(syllables)) + rng.choice(_CODAS)
    return w.capitalize()


def unique_words(rng: random.Random, n: int, syllables: int = 2, taken: set[str] | None = None) -> list[str]:
    """``n`` distinct made-up words not in ``taken`` (which is updated)."""
    taken = taken if taken is not None else set()
    out = []
    while len(out) < n:
        w = word(rng, syllables)
        if w not in taken:
            taken.add(w)
            out.append(w)
    return out


def norm(x: Any) -> str:
    """Canonical answer text: lower case, single spaces, no surrounding punctuation; numbers as
    their shortest decimal form (``"12.50"`` -> ``"12.5"``, ``"7.0"`` -> ``"7"``)."""
    s = re.sub(r"\s+", " ", str(x)).strip().strip(".,;:!\"'`$ ").lower()
    try:
        v = float(s.replace(",", ""))
        return repr(int(v)) if v == int(v) else repr(round(v, 6))
    except (ValueError, OverflowError):
        return s


def answers_match(expected: Any, got: Any, tol: float = 1e-6) -> bool:
    """Normalised equality; numeric answers within ``tol`` (absolute)."""
    a, b = norm(expected), norm(got)
    if a == b and a != "":
        return True
    try:
        return abs(float(a) - float(b)) <= tol
    except ValueError:
        return False


SUBMIT_ANSWER = ToolSpec("submit_result", "Submit your final answer; this ends the task.",
                         params(["answer"], answer=("string", "the final answer")))
"""The submit tool of the single-answer families (lookup, code, search)."""


def answer_of(submission: dict[str, Any]) -> Any:
    """The answer inside a submission (``{"answer": ...}``), or ''."""
    return submission.get("answer", "") if isinstance(submission, dict) else ""
