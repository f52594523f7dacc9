"""The cold start's check that its demonstrations fit a rollout (``rl.coldstart.overlong_replies``)."""
from __future__ import annotations

from rl.coldstart import overlong_replies, overlong_warning


def _example(prompt_len: int, reply_len: int) -> tuple[list[int], list[int]]:
    """(ids, mask) of a demonstration: ``prompt_len`` unmasked tokens, then ``reply_len`` learned ones."""
    return [7] * (prompt_len + reply_len), [0] * prompt_len + [1] * reply_len


def test_overlong_replies_counts_replies_longer_than_the_budget_and_ignores_the_prompt() -> None:
    examples = [_example(50, 36), _example(60, 22), _example(5, 33), _example(70, 32)]
    # Replies of 36, 22, 33, 32 tokens against a budget of 32: 36 and 33 are cut; prompts do not count.
    assert overlong_replies(examples, max_new_tokens=32) == (2, 36)
    assert overlong_replies(examples, max_new_tokens=36) == (0, 36)
    assert overlong_replies([], max_new_tokens=8) == (0, 0)


def test_overlong_warning_names_the_setting_and_the_length_that_fits() -> None:
    examples = [_example(50, 36), _example(60, 22)]
    assert overlong_warning(examples, max_new_tokens=40) is None
    text = overlong_warning(examples, max_new_tokens=32)
    assert text is not None and "\n" not in text
    assert "1 of 2 cold-start replies" in text and "rollout.max_new_tokens=32" in text
    assert "rollout.max_new_tokens=36" in text  # the fix
