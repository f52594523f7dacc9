"""rl.sources: prompts through the model's chat template, with the data's system prompt and template."""
from __future__ import annotations

import pytest

from rl.config import ConfigError, DataConfig, validate
from rl.policy.tokenizer import load_tokenizer
from rl.sources import _rows, prompt_messages


def test_prompt_messages_template_system_and_chat_prompts():
    assert prompt_messages("2+3?") == [{"role": "user", "content": "2+3?"}]
    msgs = prompt_messages("2+3?", "You are exact.", "{prompt}\nPut the final answer in \\boxed{}.")
    assert msgs == [{"role": "system", "content": "You are exact."},
                    {"role": "user", "content": "2+3?\nPut the final answer in \\boxed{}."}]
    chat = [{"role": "user", "content": "hi"}]
    assert prompt_messages(chat, "ignored", "{prompt}!") is chat  # chat prompts are used as given


def test_rows_apply_the_template_through_the_chat_template(tmp_path):
    tok = load_tokenizer(cache_dir=tmp_path)
    cfg = DataConfig(prompt_template="Q: {prompt} (answer with a number)")
    [row] = _rows([{"prompt": "2+3?", "answer": "5"}], tok, cfg)
    text = tok.decode(row["prompt_ids"])
    assert "Q: 2+3? (answer with a number)" in text and row["answer"] == "5"
    plain = _rows([{"prompt": "2+3?", "answer": "5"}], tok, DataConfig())[0]["prompt_ids"]
    assert tok.decode(plain) == tok.apply_chat_template([{"role": "user", "content": "2+3?"}], tokenize=False,
                                                        add_generation_prompt=True)


def test_a_template_without_the_prompt_is_refused():
    with pytest.raises(ConfigError, match=r"prompt_template='Solve it.' is invalid: it must contain '\{prompt\}'"):
        validate(DataConfig(prompt_template="Solve it."), "data.")
