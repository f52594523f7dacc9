"""Reading completions: reasoning vs answer, the math answer, code blocks, writing scripts.

Pure string functions shared by the built-in rewards. The template they read is our chat
template's: reasoning inside ``<think>...</think>``, the final answer after it (DeepSeek-V3.2's
thinking mode). The exact rules, which the rewards' tests pin down:

* **Answer part** (:func:`split_answer`): with ``think_in_prompt`` false the completion must be
  ``[ws]<think>REASONING</think>ANSWER`` with exactly one ``<think>`` and one ``</think>``; with it
  true (the prompt already ends with ``<think>``) the completion is ``REASONING</think>ANSWER`` with
  one ``</think>`` and no ``<think>``. A completion with no think tag at all is all answer (a
  non-thinking reply). Anything else (an unclosed or repeated think block, text before
  ``<think>``) has **no** answer part, so nothing written inside the reasoning ever counts.
* **Math answer** (:func:`extract_math_answer`, on the answer part only): every ``\\boxed{...}``
  / ``\\fbox{...}`` (balanced braces) is collected; if they all hold the same text (spaces
  ignored) that text is the answer, and if they differ there is **no** answer (hedging with several
  distinct boxed answers scores 0). Without a boxed answer, the last non-empty line must read
  ``Answer: X`` (case-insensitive, optional ``Final``, optional markdown bold, ASCII or full-width
  colon, one trailing period dropped); earlier ``Answer:`` lines must agree with it.
* **Code** (:func:`extract_code`): the last fenced block (```` ```python ```` or a bare fence) in
  the answer part.
* **Script** (:func:`script_histogram`): letters are counted by Unicode block into ``latin``,
  ``cyrillic``, ``greek``, ``arabic``, ``hebrew``, ``devanagari``, ``thai``, ``hangul`` and ``cjk``
  (Han, kana, CJK punctuation excluded); LaTeX math, commands and code are removed first, since
  ``\\frac`` is not English.
"""
from __future__ import annotations

import re
from typing import Any

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: a string, or chat messages (the last user message's content)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        chosen = users[-1] if users else (prompt[-1] if prompt else {})
        content = chosen.get("content", "") if isinstance(chosen, dict) else str(chosen)
        return content if isinstance(content, str) else str(content)
    return str(prompt)


def think_in_prompt(prompt: Any) -> bool:
    """True when a string prompt ends with an opened ``<think>`` (the template opened it)."""
    return isinstance(prompt, str) and prompt.rstrip().endswith(THINK_OPEN)


def split_answer(completion: str, think_in_prompt: bool = False) -> tuple[str | None, str | None]:
    """``(reasoning, answer)`` of a completion; ``answer`` is None when the template is broken.

    >>> split_answer("<think>2+2 is 4</think>The answer is 4.")
    ('2+2 is 4', 'The answer is 4.')
    >>> split_answer("<think>\\\\boxed{4} maybe")      # unclosed reasoning: no answer at all
    (None, None)
    >>> split_answer("plain reply")                    # no think block: all answer
    (None, 'plain reply')
    >>> split_answer("so 4</think>4", think_in_prompt=True)
    ('so 4', '4')
    """
    n_open, n_close = completion.count(THINK_OPEN), completion.count(THINK_CLOSE)
    if think_in_prompt:
        if n_open == 0 and n_close == 1:
            reasoning, answer = completion.split(THINK_CLOSE, 1)
            return reasoning, answer
        return None, None
    if n_open == 0 and n_close == 0:
        return None, completion
    body = completion.lstrip()
    if n_open == 1 and n_close == 1 and body.startswith(THINK_OPEN) and body.index(THINK_CLOSE) > 0:
        reasoning, answer = body[len(THINK_OPEN):].split(THINK_CLOSE, 1)
        return reasoning, answer
    return None, None


def find_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, in order.

    >>> find_boxed(r"so \\boxed{\\frac{1}{2}} or \\fbox{3} and \\boxed{unclosed")
    ['\\\\frac{1}{2}', '3']
    """
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end():i - 1].strip())
    return out


_ANSWER_LINE = re.compile(r"^\s*(?:\*\*)?\s*(?:final\s+)?answer\s*(?:\*\*)?\s*[:\uff1a]\s*(?:\*\*)?\s*(.*?)\s*$",
                          re.IGNORECASE)


def _answer_line_value(line: str) -> str | None:
    m = _ANSWER_LINE.match(line)
    if not m:
        return None
    value = m.group(1).strip()
    value = value.removesuffix("**").strip()
    if value.endswith(".") and not value.endswith(".."):
        value = value[:-1].strip()
    return value or None


ANSWER_STYLES = ("strict", "boxed", "answer_line", "hash", "last_number")
"""How a math answer is read from an answer part (:func:`extract_answer`)."""
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")
_NUMBER_LITERAL = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_CALCULATION = re.compile(r"\d\s*(?:[-+*^\u00d7\u00f7]|\\times|\\cdot|\\div)\s*[-+(]?\s*\d")


def is_number_literal(text: str) -> bool:
    """Whether ``text`` is one plainly written number (sign, digits, thousands commas, decimals).

    >>> [is_number_literal(x) for x in ("-12", "1,250", " 3.5 ", "1/2", "12 apples")]
    [True, True, True, False, False]
    """
    return _NUMBER_LITERAL.fullmatch(text.strip()) is not None


def leaves_a_calculation(answer: str) -> bool:
    """Whether an extracted answer still holds a calculation to do: two numbers joined by an
    arithmetic operator (``14 - 13``, ``18 * 4``, ``3 \\times 4``, ``2^5``). math-verify evaluates
    those, so a policy rewarded through it can leave the arithmetic to the verifier. Fractions
    (``1/2``, ``\\frac{1}{2}``) and signed numbers are answers, not calculations.

    >>> [leaves_a_calculation(x) for x in ("14 - 13", "18 * 4", "3 \\\\times 4", "2^5", "-12", "1/2", "x - 1")]
    [True, True, True, True, False, False, False]
    """
    return _CALCULATION.search(answer) is not None


def extract_answer(answer: str, style: str = "strict") -> str | None:
    """The final answer of an answer part under one reading ``style``, or None:

    * ``strict`` (default, V3.2's rule): :func:`extract_math_answer` (a unique boxed answer, else a
      final ``Answer: X`` line);
    * ``boxed``: a unique boxed answer only;
    * ``answer_line``: the final ``Answer: X`` line only (earlier ones must agree);
    * ``hash``: the last line ``#### X`` (GSM8K's convention);
    * ``last_number``: the last number written anywhere in the answer part (lenient: how a
      pretrained model's free text is usually graded; thousands separators dropped).

    >>> [extract_answer("So 3 + 4 = 7 apples.", s) for s in ("strict", "last_number")]
    [None, '7']
    >>> extract_answer("We add.\\n#### 1,250", "hash"), extract_answer("\\\\boxed{5}\\nAnswer: 6", "answer_line")
    ('1250', '6')
    """
    if style not in ANSWER_STYLES:
        raise ValueError(f"answer style {style!r}: allowed {', '.join(ANSWER_STYLES)}")
    if style == "strict":
        return extract_math_answer(answer)
    if style == "boxed":
        return extract_math_answer(answer) if find_boxed(answer) else None
    if style == "answer_line":
        return extract_math_answer("\n".join(line for line in answer.splitlines() if not find_boxed(line)))
    if style == "hash":
        lines = [line.strip() for line in answer.splitlines() if line.strip()]
        if not lines or not lines[-1].startswith("####"):
            return None
        return lines[-1][4:].strip().replace(",", "").rstrip(".") or None
    numbers = _NUMBER.findall(answer)
    return numbers[-1].replace(",", "") if numbers else None


def extract_math_answer(answer: str) -> str | None:
    """The final answer written in an answer part, or None (see the module docstring for rules).

    >>> extract_math_answer(r"Thus \\boxed{42}.")
    '42'
    >>> extract_math_answer(r"\\boxed{4} or maybe \\boxed{5}") is None
    True
    >>> extract_math_answer("We add them.\\nAnswer: 7.")
    '7'
    """
    boxed = find_boxed(answer)
    if boxed:
        distinct = {re.sub(r"\s+", "", b) for b in boxed}
        return boxed[-1] if len(distinct) == 1 and boxed[-1] else None
    lines = [line for line in answer.splitlines() if line.strip()]
    if not lines:
        return None
    final = _answer_line_value(lines[-1])
    if final is None:
        return None
    others = {_answer_line_value(line) for line in lines[:-1]} - {None}
    if any(re.sub(r"\s+", "", o) != re.sub(r"\s+", "", final) for o in others if o is not None):
        return None
    return final


def extract_code(answer: str) -> str | None:
    """The body of the last fenced code block (```` ```python ````, ```` ```py ```` or bare)."""
    blocks = re.findall(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", answer, flags=re.DOTALL | re.IGNORECASE)
    return blocks[-1] if blocks else None


_SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "latin"), (0x0061, 0x007A, "latin"), (0x00C0, 0x024F, "latin"),
    (0x1E00, 0x1EFF, "latin"), (0x0370, 0x03FF, "greek"), (0x1F00, 0x1FFF, "greek"),
    (0x0400, 0x052F, "cyrillic"), (0x0590, 0x05FF, "hebrew"), (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"), (0x08A0, 0x08FF, "arabic"), (0x0900, 0x097F, "devanagari"),
    (0x0E00, 0x0E7F, "thai"), (0x1100, 0x11FF, "hangul"), (0x3130, 0x318F, "hangul"),
    (0xAC00, 0xD7AF, "hangul"), (0x3040, 0x309F, "cjk"), (0x30A0, 0x30FF, "cjk"),
    (0x3400, 0x4DBF, "cjk"), (0x4E00, 0x9FFF, "cjk"), (0xF900, 0xFAFF, "cjk"),
    (0x20000, 0x2FA1F, "cjk"),
)


def _script_of(ch: str) -> str | None:
    cp = ord(ch)
    for lo, hi, name in _SCRIPT_RANGES:
        if lo <= cp <= hi:
            return name if ch.isalpha() else None
    return None


_NOT_PROSE = re.compile(
    r"```.*?```"                   # code blocks
    r"|`[^`]*`"                   # inline code
    r"|\$\$.*?\$\$|\$[^$]*\$"     # $$...$$ and $...$ math
    r"|\\\[.*?\\\]|\\\(.*?\\\)"   # \[...\] and \(...\) math
    r"|\\[a-zA-Z]+",              # remaining LaTeX commands
    re.DOTALL)


def script_histogram(text: str) -> dict[str, int]:
    """Letters per script in the prose of ``text`` (math, LaTeX and code removed).

    >>> script_histogram(r"Il vaut $\\frac{1}{2}$, 答案")
    {'latin': 6, 'cjk': 2}
    """
    counts: dict[str, int] = {}
    for ch in _NOT_PROSE.sub(" ", text):
        script = _script_of(ch)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    return counts


def dominant_script(text: str) -> str | None:
    """The script with the most letters in ``text`` (None when it has no letters)."""
    counts = script_histogram(text)
    return max(counts, key=lambda s: counts[s]) if counts else None
