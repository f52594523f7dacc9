"""The embedded tokenizer: build, save/load through AutoTokenizer, chat template round-trips."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rl.policy.tokenizer import EOS, build_tokenizer, load_tokenizer


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory):
    return load_tokenizer(cache_dir=tmp_path_factory.mktemp("tok"))


CHAT = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "What is 12 + 30?"},
    {"role": "assistant", "reasoning_content": "12 + 30 = 42.", "content": "\\boxed{42}"},
    {"role": "user", "content": "Find a hotel in Paris under 100 euros, ünïcödé 你好."},
    {"role": "assistant", "reasoning_content": "Search first.", "tool_calls": [
        {"type": "function", "function": {"name": "get_hotels", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": '[{"name": "H1", "price": 90}]'},
    {"role": "assistant", "reasoning_content": "H1 fits.", "content": "H1"},
]
TOOLS = [{"type": "function", "function": {"name": "get_hotels", "description": "Hotels of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_render_format_and_thinking_rule(tok) -> None:
    text = tok.apply_chat_template(CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    assert text.startswith('<|bos|><|tools|>[{"type": "function"')
    assert "<|system|>You are a careful assistant.<|end|>" in text
    # Reasoning before the last user message is dropped; its answer stays.
    assert "12 + 30 = 42." not in text and "<|assistant|>\\boxed{42}<|end|>" in text
    # Reasoning after the last user message stays across tool results; tool calls stay.
    assert ('<|assistant|><think>Search first.</think><tool_call>{"name": "get_hotels", '
            '"arguments": {"city": "Paris"}}</tool_call><|end|>') in text
    assert '<|tool|>[{"name": "H1", "price": 90}]<|end|>' in text
    assert text.endswith("<|assistant|><think>H1 fits.</think>H1<|end|><|assistant|>")


def test_string_arguments_are_rendered_verbatim(tok) -> None:
    msgs = [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}]
    assert '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>' in tok.apply_chat_template(
        msgs, tokenize=False)


@pytest.mark.parametrize("text", [
    None, "What is 123 + 45?", "  leading spaces\nand\ttabs  ", "ünïcödé 你好 🙂 \\boxed{-7}",
])
def test_round_trip(tok, text: str | None) -> None:
    text = text or tok.apply_chat_template(CHAT, tools=TOOLS, tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_markers_are_single_tokens_and_digits_split(tok) -> None:
    for marker in ("<|bos|>", "<|user|>", "<|assistant|>", "<|tool|>", EOS, "<think>", "</think>",
                   "<tool_call>", "</tool_call>"):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1, marker
    pieces = tok.convert_ids_to_tokens(tok("1234", add_special_tokens=False)["input_ids"])
    assert pieces == ["1", "2", "3", "4"]
    assert tok.eos_token == EOS and tok.pad_token_id is not None and tok.padding_side == "left"
    # Reasoning markers survive skip_special_tokens (rewards read them); role markers do not.
    ids = tok("<|assistant|><think>a</think>b<|end|>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>a</think>b"


def test_save_and_load_through_autotokenizer(tok, tmp_path: Path) -> None:
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.get_vocab() == tok.get_vocab()
    assert again.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)


def test_build_is_deterministic(tok) -> None:
    assert build_tokenizer().get_vocab() == tok.get_vocab()
