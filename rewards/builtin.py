"""Built-in rule-based rewards (DeepSeek-V3.2 style): math, format, length, language, environment.

Every function follows the reward contract ``fn(prompts, completions, **fields) -> list[float]``,
scores a whole batch, and ignores fields it does not use (so any dataset column or trajectory
field may be passed). The completion template and answer-extraction rules are in
:mod:`rewards.text`. The code-execution reward lives in :mod:`rewards.code`.

=========================  =====================================================================
name                       value per sample
=========================  =====================================================================
``math_correct``           1.0 when the answer part's final answer equals field ``answer``
                           (checked by math-verify), else 0.0
``format``                 1.0 when the completion is ``<think>reasoning</think>answer`` with a
                           non-empty reasoning and an answer in the expected style, else 0.0
``length_penalty``         ``-min(max_penalty, slope * max(0, L - target) / target)``
``language_consistency``   fraction of the scored text's letters written in the prompt's script
``env_verifier``           field ``env_reward`` as a float (the environment's own verdict)
=========================  =====================================================================

Departures from the paper: V3.2 names rule-based outcome, length and language-consistency rewards
for reasoning and agent tasks without giving formulas; the formulas above are ours. The length
penalty is linear past a target (no reward for being short), the language reward follows
DeepSeek-R1's "proportion of target-language words" but counts letters by script, not words.
"""
from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import Any

from rewards.registry import register_reward
from rewards.text import (
    THINK_CLOSE,
    THINK_OPEN,
    dominant_script,
    extract_answer,
    extract_math_answer,
    is_number_literal,
    leaves_a_calculation,
    prompt_text,
    script_histogram,
    split_answer,
    think_in_prompt,
)

_MATH_VERIFY_TIMEOUT_S = 5


def _think_flags(prompts: Sequence[Any], think_in_prompt_: bool | None) -> list[bool]:
    """Per sample: does the completion start inside an already-opened ``<think>``?"""
    if think_in_prompt_ is not None:
        return [think_in_prompt_] * len(prompts)
    return [think_in_prompt(p) for p in prompts]


def _as_math(text: str) -> str:
    """Wrap bare text in ``$...$`` so math-verify reads it as LaTeX (it already may be)."""
    return text if "$" in text or "\\(" in text or "\\[" in text else f"${text}$"


def math_equal(gold: Any, predicted: str) -> bool:
    """True when ``predicted`` is mathematically equal to ``gold`` according to math-verify.

    math-verify's own timeouts use SIGALRM, which only works on a process's main thread; off it
    we switch them off and rely on the reward runner's timeout instead.

    >>> math_equal("1/2", r"\\frac{1}{2}"), math_equal(3, "3.0"), math_equal("3", "4")
    (True, True, False)
    """
    import math_verify

    on_main = threading.current_thread() is threading.main_thread()
    timeout = _MATH_VERIFY_TIMEOUT_S if on_main else None
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # it warns on every timeout=None call
    gold_parsed = math_verify.parse(_as_math(str(gold)), parsing_timeout=timeout)
    pred_parsed = math_verify.parse(_as_math(predicted), parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(math_verify.verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


@register_reward("math_correct")
def math_correct(prompts: Sequence[Any], completions: Sequence[str], answer: Sequence[Any],
                 think_in_prompt: bool | None = None, extract: str = "strict", calculations: bool = False,
                 **fields: Any) -> list[float]:
    """1.0 when the completion's final answer equals the reference ``answer``, else 0.0.

    Only the answer part counts (text after ``</think>``). By default (``extract="strict"``) the
    answer is the (unique) boxed expression, or the final ``Answer: X`` line; several distinct boxed
    answers score 0. Other readings (``rewards.text.extract_answer``): ``boxed``, ``answer_line``,
    ``hash`` (``#### X``), ``last_number`` (lenient). Equality is math-verify's in every case.

    When the reference is a plain number, an answer that still holds a calculation
    (``\\boxed{14 - 13}`` for 1: ``rewards.text.leaves_a_calculation``) scores 0: math-verify would
    evaluate it, and a policy learns to copy the problem's expression into the box and leave the
    arithmetic to the verifier (SmolLM2 did, within 16 GRPO steps). ``calculations=True`` accepts them.

    Args:
        answer: (B,) reference answers (LaTeX or plain strings, or numbers), a dataset column.
        think_in_prompt: the prompt already opened ``<think>``; None detects it per prompt
            (a string prompt ending with ``<think>``).
        extract: the answer reading, one of ``rewards.text.ANSWER_STYLES``.

    >>> math_correct(["1+1?"] * 3, ["<think>1+1=2</think>\\\\boxed{2}",
    ...                              "<think>it is \\\\boxed{2}</think>\\\\boxed{3}",
    ...                              "<think>hmm</think>It is two.\\nAnswer: 2"], answer=["2"] * 3)
    [1.0, 0.0, 1.0]
    """
    scores = []
    for flag, completion, gold in zip(_think_flags(prompts, think_in_prompt), completions, answer, strict=True):
        _, answer_part = split_answer(completion, flag)
        predicted = extract_answer(answer_part, extract) if answer_part is not None else None
        if predicted is not None and not calculations and is_number_literal(str(gold)) \
                and leaves_a_calculation(predicted):
            predicted = None  # the arithmetic is left undone (see above)
        scores.append(1.0 if predicted is not None and math_equal(gold, predicted) else 0.0)
    return scores


def _warmup_math() -> None:
    """Import math-verify (and sympy) ahead of the first step: ~1 s the first time."""
    math_equal("1", "1")


math_correct.warmup = _warmup_math  # type: ignore[attr-defined]


@register_reward("format")
def format_reward(prompts: Sequence[Any], completions: Sequence[str], answer_style: str = "math",
                  think_in_prompt: bool | None = None, **fields: Any) -> list[float]:
    """1.0 when the completion follows the template, else 0.0.

    The template: ``<think>`` (or the prompt's opened one), non-empty reasoning, ``</think>``,
    then a non-empty answer part without think tags. ``answer_style="math"`` also requires one
    final answer in the answer part (a unique boxed expression or a final ``Answer: X`` line);
    ``"any"`` accepts any non-empty answer text.

    >>> format_reward([""] * 4, ["<think>add</think>\\\\boxed{2}", "<think></think>\\\\boxed{2}",
    ...                          "\\\\boxed{2}", "<think>add</think>two"])
    [1.0, 0.0, 0.0, 0.0]
    """
    if answer_style not in ("math", "any"):
        raise ValueError(f"format: answer_style must be 'math' or 'any', got {answer_style!r}")
    scores = []
    for flag, completion in zip(_think_flags(prompts, think_in_prompt), completions, strict=True):
        reasoning, answer_part = split_answer(completion, flag)
        ok = reasoning is not None and answer_part is not None and bool(reasoning.strip()) \
            and bool(answer_part.strip())
        if ok and answer_style == "math":
            ok = extract_math_answer(answer_part) is not None  # type: ignore[arg-type]
        scores.append(1.0 if ok else 0.0)
    return scores


@register_reward("length_penalty")
def length_penalty(prompts: Sequence[Any], completions: Sequence[str], target: int = 1024,
                   slope: float = 1.0, max_penalty: float = 1.0, length_field: str | None = None,
                   **fields: Any) -> list[float]:
    """``-min(max_penalty, slope * max(0, L - target) / target)`` per sample (0 up to the target).

    Args:
        target: length allowed without penalty (characters, or ``length_field``'s unit).
        slope: penalty per ``target`` units of excess length (slope 1: twice the target costs 1).
        max_penalty: the penalty's cap (a positive number).
        length_field: name of a field holding each sample's length (e.g. ``num_tokens`` from the
            trajectory); None measures ``len(completion)`` in characters.

    >>> length_penalty([""] * 3, ["x" * 5, "x" * 15, "x" * 100], target=10, slope=0.5)
    [0.0, -0.25, -1.0]
    """
    if target <= 0 or slope < 0 or max_penalty < 0:
        raise ValueError(f"length_penalty: need target > 0, slope >= 0, max_penalty >= 0 "
                         f"(got target={target}, slope={slope}, max_penalty={max_penalty})")
    if length_field is not None:
        if length_field not in fields:
            raise KeyError(f"length_penalty: length_field {length_field!r} is not among the fields "
                           f"passed ({', '.join(sorted(fields)) or 'none'})")
        lengths = [float(n) for n in fields[length_field]]
    else:
        lengths = [float(len(c)) for c in completions]
    if len(lengths) != len(completions):
        raise ValueError(f"length_penalty: {len(lengths)} lengths for {len(completions)} completions")
    return [-min(max_penalty, slope * max(0.0, n - target) / target) + 0.0 for n in lengths]


@register_reward("language_consistency")
def language_consistency(prompts: Sequence[Any], completions: Sequence[str], scope: str = "answer",
                         think_in_prompt: bool | None = None, **fields: Any) -> list[float]:
    """Fraction of letters in the completion written in the prompt's dominant script.

    Scripts are told apart by Unicode block (:func:`rewards.text.script_histogram`), after math,
    LaTeX commands and code are removed. A prompt without letters, or a scored text without
    letters (e.g. only ``\\boxed{42}``), scores 1.0: nothing is inconsistent. A completion whose
    template is broken has no answer part and scores 0.0 with ``scope="answer"``.

    Args:
        scope: ``"answer"`` (text after ``</think>``), ``"reasoning"`` or ``"all"``.

    >>> language_consistency(["Combien font 2+2 ?", "2+2 等于多少？"],
    ...                      ["<think>deux et deux</think>Quatre.", "<think>二加二</think>Four"])
    [1.0, 0.0]
    """
    if scope not in ("answer", "reasoning", "all"):
        raise ValueError(f"language_consistency: scope must be 'answer', 'reasoning' or 'all', got {scope!r}")
    scores = []
    for flag, prompt, completion in zip(_think_flags(prompts, think_in_prompt), prompts, completions,
                                        strict=True):
        target = dominant_script(prompt_text(prompt))
        if scope == "all":
            text: str | None = completion.replace(THINK_OPEN, " ").replace(THINK_CLOSE, " ")
        else:
            reasoning, answer_part = split_answer(completion, flag)
            text = answer_part if scope == "answer" else reasoning
        if text is None:
            scores.append(0.0)
            continue
        counts = script_histogram(text)
        total = sum(counts.values())
        scores.append(1.0 if target is None or total == 0 else counts.get(target, 0) / total)
    return scores


ENV_REWARD_FIELD = "env_reward"
"""Field holding each trajectory's environment verdict (set by the rollout from ``env.verify``)."""


@register_reward("env_verifier")
def env_verifier(prompts: Sequence[Any], completions: Sequence[str], **fields: Any) -> list[float]:
    """The environment's own verdict per sample: field ``env_reward`` (B,) as floats.

    The tool environment checks the final state (tests pass, the answer matches, ...) when the
    episode ends and the rollout records it in ``env_reward``; this reward only forwards it, so
    what counts as success is defined in one place, the environment. A missing value (None) or a
    missing field raises, which the runner reports with the offending sample.

    >>> env_verifier(["p", "p"], ["a", "b"], env_reward=[1, 0.5], num_turns=[3, 4])
    [1.0, 0.5]
    """
    if ENV_REWARD_FIELD not in fields:
        raise KeyError(f"env_verifier needs the field {ENV_REWARD_FIELD!r} (the environment's verify "
                       f"result per trajectory); fields passed: {', '.join(sorted(fields)) or 'none'}")
    values = fields[ENV_REWARD_FIELD]
    out = []
    for i, v in enumerate(values):
        if v is None:
            raise ValueError(f"env_verifier: sample {i} has no environment verdict ({ENV_REWARD_FIELD}=None)")
        value = float(v)
        if not math.isfinite(value):
            raise ValueError(f"env_verifier: sample {i} has a non-finite verdict {value}")
        out.append(value)
    return out
