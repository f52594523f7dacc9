"""Built-in rewards against hand-made right, wrong, partial and adversarial completions."""
from __future__ import annotations

import pytest

from rewards.builtin import env_verifier, format_reward, language_consistency, length_penalty, math_correct

T = "<think>working it out</think>"


def test_math_correct_cases():
    cases = [  # (completion, gold, expected)
        (T + r"The answer is \boxed{\frac{1}{2}}.", "0.5", 1.0),      # equivalent forms
        (T + r"\boxed{2}", "3", 0.0),                                   # wrong
        (T + "Adding gives seven.\nAnswer: 7", "7", 1.0),               # final-line answer
        (T + "It is 7.", "7", 0.0),                                     # no answer template
        (T + r"\boxed{7} or \boxed{8}", "7", 0.0),                      # hedging: distinct boxes
        (T + r"\boxed{7}, i.e. \boxed{7}", "7", 1.0),                   # repeated same box is fine
        (r"<think>clearly \boxed{7}</think>I am not sure.", "7", 0.0),  # hidden in the reasoning
        (r"<think>clearly \boxed{7}", "7", 0.0),                        # unfinished reasoning
        (r"<think>a</think>\boxed{7}<think>b</think>\boxed{7}", "7", 0.0),  # two think blocks
        (T + r"\boxed{x^2+2x+1}", "(x+1)^2", 1.0),                      # symbolic equality
        (T + r"\boxed{1,000}", "1000", 1.0),
        (T + r"\boxed{\text{banana}}", "7", 0.0),                       # unparsable answer
        (r"\boxed{7}", "7", 1.0),                                       # non-thinking reply
    ]
    got = math_correct(["q"] * len(cases), [c for c, _, _ in cases], answer=[g for _, g, _ in cases],
                       unused_column=[0] * len(cases), finish_reason=["stop"] * len(cases))
    assert got == [e for _, _, e in cases]


@pytest.mark.parametrize(("style", "expected"), [
    # completions: boxed | Answer line | #### line | free text | box and a later Answer line that disagree
    ("strict", [1.0, 1.0, 0.0, 0.0, 1.0]),
    ("boxed", [1.0, 0.0, 0.0, 0.0, 1.0]),
    ("answer_line", [0.0, 1.0, 0.0, 0.0, 0.0]),
    ("hash", [0.0, 0.0, 1.0, 0.0, 0.0]),
    ("last_number", [1.0, 1.0, 1.0, 1.0, 0.0]),
])
def test_math_correct_answer_styles(style, expected):
    completions = [r"So it is \boxed{12}.", "We add.\nAnswer: 12", "5 + 7 = 12\n#### 12",
                   "Ada has 5 + 7 = 12 apples left.", "\\boxed{12}\nAnswer: 13"]
    got = math_correct(["q"] * 5, completions, answer=["12"] * 5, extract=style)
    assert got == expected


def test_math_correct_scores_0_for_an_answer_that_leaves_the_arithmetic_to_the_verifier():
    # SmolLM2 learned within 16 GRPO steps to box the problem's expression ("\\boxed{14 - 13}" for
    # "What is 14 - 13?"), which math-verify evaluates to the right number.
    completions = [T + r"\boxed{14 - 13}", T + "Answer: 18 * 4", T + r"\boxed{3 \times 4}", T + r"\boxed{2^5}",
                   T + r"\boxed{1}", T + r"\boxed{\frac{1}{2}}", T + r"\boxed{-1}", T + r"\boxed{x^2+2x+1}"]
    gold = ["1", "72", "12", "32", "1", "0.5", "-1", "(x+1)^2"]
    assert math_correct(["q"] * 8, completions, answer=gold) == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    # calculations=True: math-verify's own judgement (every one of them equal)
    assert math_correct(["q"] * 8, completions, answer=gold, calculations=True) == [1.0] * 8
    # the lenient reading takes the last number: "14 - 13" reads 13
    assert math_correct(["q"], completions[:1], answer=["1"], extract="last_number") == [0.0]


def test_math_correct_rejects_an_unknown_style():
    with pytest.raises(ValueError, match="allowed strict, boxed, answer_line, hash, last_number"):
        math_correct(["q"], ["12"], answer=["12"], extract="loose")


def test_math_correct_think_in_prompt():
    prompts = ["<|assistant|><think>", "<|assistant|>"]
    # With the prompt holding <think>, "... \boxed{3}" without </think> is still reasoning.
    assert math_correct(prompts, [r"so \boxed{3}", r"\boxed{3}"], answer=["3", "3"]) == [0.0, 1.0]
    assert math_correct(prompts[:1], [r"so 3</think>\boxed{3}"], answer=["3"]) == [1.0]
    assert math_correct(prompts[:1], [r"\boxed{3}"], answer=["3"], think_in_prompt=False) == [1.0]


def test_format_reward_cases():
    cases = [
        (T + r"\boxed{1}", 1.0),
        (T + "Answer: 1", 1.0),
        (T + "one", 0.0),                                  # no math answer
        ("<think>  </think>" + r"\boxed{1}", 0.0),          # empty reasoning
        (T + "   ", 0.0),                                  # empty answer
        (r"\boxed{1}", 0.0),                                # no reasoning block
        ("<think>r" + r"\boxed{1}", 0.0),                   # unclosed
        (T + r"\boxed{1} \boxed{2}", 0.0),                  # ambiguous answer
        ("intro " + T + r"\boxed{1}", 0.0),                 # text before <think>
    ]
    assert format_reward(["q"] * len(cases), [c for c, _ in cases], answer=["1"] * len(cases)) == \
        [e for _, e in cases]
    assert format_reward(["q", "q"], [T + "one", "one"], answer_style="any") == [1.0, 0.0]
    with pytest.raises(ValueError, match="answer_style"):
        format_reward(["q"], ["x"], answer_style="boxed")


def test_length_penalty_hand_computed():
    # target 10, slope 0.5: L=10 -> 0; L=14 -> -0.5*4/10 = -0.2; L=40 -> -0.5*30/10 = -1.5 capped at -1.
    got = length_penalty(["q"] * 4, ["x" * 3, "x" * 10, "x" * 14, "x" * 40], target=10, slope=0.5)
    assert got == pytest.approx([0.0, 0.0, -0.2, -1.0])
    assert length_penalty(["q"], ["x" * 40], target=10, slope=0.5, max_penalty=2.0) == [-1.5]
    # Token counts from a trajectory field instead of characters: 300 tokens, target 200, slope 1 -> -0.5.
    assert length_penalty(["q", "q"], ["a", "b"], target=200, slope=1.0, length_field="num_tokens",
                          num_tokens=[100, 300]) == pytest.approx([0.0, -0.5])
    with pytest.raises(KeyError, match="num_tokens"):
        length_penalty(["q"], ["a"], length_field="num_tokens")
    with pytest.raises(ValueError, match="target"):
        length_penalty(["q"], ["a"], target=0)


def test_language_consistency_cases():
    prompts = ["What is two plus two?", "二加二等于几？", "Сколько будет два плюс два?", "ما هو اثنان زائد اثنان؟",
               "What is 2+2?", "1+1=?", "What?"]
    completions = [
        T + "It is four.",                 # latin -> latin: 1
        T + "答案是四",                     # cjk -> cjk: 1
        T + "Four.",                        # cyrillic prompt, latin answer: 0
        T + "أربعة",                        # arabic -> arabic: 1
        T + r"\boxed{4}",                   # no letters in the answer: nothing inconsistent -> 1
        T + "four",                         # prompt without letters -> 1
        T + "ab四四",                       # 2 of 4 letters latin -> 0.5 (partial)
    ]
    assert language_consistency(prompts, completions) == pytest.approx([1, 1, 0, 1, 1, 1, 0.5])
    # Broken template: no answer part -> 0 with scope="answer".
    assert language_consistency(["Why?"], ["<think>unfinished"]) == [0.0]
    # scope: reasoning in Chinese, answer in English, for an English prompt.
    c = ["<think>我们计算</think>It is four"]
    assert language_consistency(["What?"], c, scope="reasoning") == [0.0]
    assert language_consistency(["What?"], c, scope="answer") == [1.0]
    assert language_consistency(["What?"], c, scope="all") == pytest.approx([8 / 12])
    # Chat-message prompts: the last user message decides.
    chat = [{"role": "system", "content": "You are helpful"}, {"role": "user", "content": "Привет"}]
    assert language_consistency([chat], [T + "Привет"]) == [1.0]


def test_env_verifier_forwards_the_environment_verdict():
    assert env_verifier(["p"] * 3, ["a"] * 3, env_reward=[1, 0, 0.25], num_turns=[1, 2, 3]) == [1.0, 0.0, 0.25]
    with pytest.raises(KeyError, match="env_reward"):
        env_verifier(["p"], ["a"], num_turns=[1])
    with pytest.raises(ValueError, match="sample 1"):
        env_verifier(["p", "p"], ["a", "b"], env_reward=[1.0, None])
