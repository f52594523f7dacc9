"""Answer-part, boxed, final-line, code-block and script rules of rewards.text."""
from __future__ import annotations

import pytest

from rewards.text import (
    dominant_script,
    extract_code,
    extract_math_answer,
    find_boxed,
    prompt_text,
    script_histogram,
    split_answer,
    think_in_prompt,
)


@pytest.mark.parametrize("completion, flag, expected", [
    ("<think>r</think>a", False, ("r", "a")),
    ("  \n<think>r</think>a", False, ("r", "a")),            # leading whitespace is fine
    ("plain answer", False, (None, "plain answer")),          # no think block: all answer
    ("<think>r", False, (None, None)),                        # unclosed: no answer
    ("r</think>a", False, (None, None)),                      # close without open
    ("pre<think>r</think>a", False, (None, None)),            # text before <think>
    ("<think>r</think>a<think>s</think>b", False, (None, None)),  # two blocks
    ("<think>r</think>a</think>b", False, (None, None)),
    ("r</think>a", True, ("r", "a")),                         # the prompt opened <think>
    ("<think>r</think>a", True, (None, None)),                # ...so a second <think> is wrong
    ("just text", True, (None, None)),                        # ...and no </think> = still thinking
])
def test_split_answer(completion, flag, expected):
    assert split_answer(completion, flag) == expected


def test_find_boxed_balanced_braces():
    assert find_boxed(r"\boxed{\frac{a}{b}} x \fbox{ 2 } \boxed {3} \boxed{4") == [r"\frac{a}{b}", "2", "3"]


@pytest.mark.parametrize("answer, expected", [
    (r"So \boxed{5}.", "5"),
    (r"\boxed{5} and again \boxed{ 5 }", "5"),                # repeats of one answer are fine
    (r"\boxed{4} or \boxed{5}", None),                        # hedging: several distinct answers
    (r"\boxed{}", None),
    ("We get it.\nAnswer: 12", "12"),
    ("answer: x+1.", "x+1"),                                  # case, trailing period
    ("**Answer:** 3", "3"),
    ("Final answer: 3", "3"),
    ("答案\nAnswer：3", "3"),                                  # full-width colon
    ("Answer: 3\nAnswer: 4", None),                           # disagreeing answer lines
    ("Answer: 3\nso that is it", None),                       # answer line must be the last line
    ("The answer is 3", None),                                # no template at all
    (r"Answer: 2 but \boxed{3}", "3"),                        # boxed takes priority
    ("", None),
])
def test_extract_math_answer(answer, expected):
    assert extract_math_answer(answer) == expected


def test_extract_code_takes_the_last_fenced_block():
    text = "```python\nx = 1\n```\ntext\n```\ny = 2\n```"
    assert extract_code(text) == "y = 2\n"
    assert extract_code("```py\nz = 3\n```") == "z = 3\n"
    assert extract_code("no code here") is None


def test_scripts():
    assert script_histogram("Hello мир") == {"latin": 5, "cyrillic": 3}
    assert script_histogram(r"$\alpha + \beta$ \frac{1}{2} `code` ```python\nprint()\n```") == {}
    assert dominant_script("こんにちは世界 ok") == "cjk"
    assert dominant_script("مرحبا hi") == "arabic"
    assert dominant_script("안녕하세요") == "hangul"
    assert dominant_script("1 + 2 = 3") is None


def test_prompt_text_and_think_in_prompt():
    chat = [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
            {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]
    assert prompt_text(chat) == "q2"
    assert prompt_text("s") == "s"
    assert think_in_prompt("<|user|>q<|assistant|><think>\n")
    assert not think_in_prompt("<|user|>q<|assistant|>")
    assert not think_in_prompt(chat)
