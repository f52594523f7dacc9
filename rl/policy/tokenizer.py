"""The embedded tokenizer: a byte-level BPE built by the project, with a chat template.

Built with the ``tokenizers`` library on text the project synthesizes (math problems and worked
solutions, chat-formatted conversations with reasoning and tool calls), so nothing is downloaded.
Digits are split one per token (arithmetic is easier to learn that way). The result is a
``PreTrainedTokenizerFast``: ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip.
It is built once and cached under ``$DSA_RL_CACHE/tokenizer-v{VERSION}``.

Chat format (a simpler equivalent of DeepSeek-V3.2's; one token per marker)::

    <|bos|>[<|tools|>TOOLS_JSON<|end|>]
    <|system|>TEXT<|end|>
    <|user|>TEXT<|end|>
    <|assistant|>[<think>REASONING</think>]TEXT[<tool_call>{"name": N, "arguments": A}</tool_call>...]<|end|>
    <|tool|>RESULT<|end|>
    ... and, with add_generation_prompt, a final <|assistant|>

- ``<|end|>`` closes every turn and is the EOS token: generation of a turn stops on it.
- Assistant messages carry reasoning in ``reasoning_content`` and tool calls in ``tool_calls``
  (OpenAI form: ``{"type": "function", "function": {"name": ..., "arguments": {...} or "json"}}``).
- V3.2's thinking-context rule: reasoning of assistant turns *before the last user message* is not
  rendered; tool results never drop it; tool calls and results always stay.
- ``<think>``, ``</think>``, ``<tool_call>``, ``</tool_call>`` are single tokens but not "special",
  so ``decode(..., skip_special_tokens=True)`` keeps them (rewards and parsers read them).
"""
from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

from transformers import PreTrainedTokenizerFast

VERSION = 1
VOCAB_SIZE = 1024
BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|tools|>")
SPECIAL_TOKENS = (BOS, EOS, PAD) + ROLE_TOKENS
MARKUP_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>")

CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{- bos_token -}}"
    "{%- if tools -%}<|tools|>{{- tools | tojson -}}<|end|>{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'assistant' -%}<|assistant|>"
    "{%- if m.get('reasoning_content') and loop.index0 > ns.last_user -%}"
    "<think>{{- m['reasoning_content'] -}}</think>{%- endif -%}"
    "{%- if m.get('content') -%}{{- m['content'] -}}{%- endif -%}"
    "{%- for tc in m.get('tool_calls') or [] -%}"
    "{%- set f = tc['function'] if tc.get('function') else tc -%}"
    "<tool_call>{\"name\": {{ f['name'] | tojson }}, \"arguments\": "
    "{%- if f['arguments'] is string %} {{ f['arguments'] -}}{%- else %} {{ f['arguments'] | tojson -}}"
    "{%- endif -%}}</tool_call>"
    "{%- endfor -%}<|end|>"
    "{%- elif m['role'] in ['system', 'user', 'tool'] -%}"
    "<|{{ m['role'] }}|>{{- m['content'] -}}<|end|>"
    "{%- else -%}{{- raise_exception('unknown chat role: ' ~ m['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)

_FILLER = (
    "The answer is the number of items left after every step. Search the documents and open the "
    "best match. Call a tool with JSON arguments, read the result, then answer. Hotels, flights, "
    "trains and attractions have prices per night, per person and per day. The budget must not be "
    "exceeded. Error: unknown tool. Result: ok. def solve(x):\n    return x * 2\nprint(solve(21))\n"
)


def training_corpus(num_problems: int = 4000, seed: int = 0) -> list[str]:
    """Deterministic text the BPE is trained on: rendered math chats plus tool-use filler."""
    import json

    from rl.synth_math import iter_problems

    rng = random.Random(seed)
    corpus = [_FILLER] * 50
    for i, p in enumerate(iter_problems(seed, (1, 2, 3, 4))):
        if i >= num_problems:
            break
        call = {"name": rng.choice(["search", "open", "python", "get_hotels", "submit_result"]),
                "arguments": {"query": p.answer, "id": rng.randint(0, 99)}}
        corpus.append(f"{BOS}<|user|>{p.prompt}{EOS}<|assistant|><think>{p.solution}</think>"
                      f"\\boxed{{{p.answer}}}{EOS}")
        corpus.append(f"<tool_call>{json.dumps(call)}</tool_call>{EOS}<|tool|>{p.solution}{EOS}")
    return corpus


def build_tokenizer(vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on :func:`training_corpus` and wrap it for ``transformers``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS + MARKUP_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    # Re-declare the markup tokens as non-special (same ids): they survive skip_special_tokens.
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKUP_TOKENS])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS), clean_up_tokenization_spaces=False,
        model_max_length=4096, padding_side="left")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_dir(cache_dir: str | Path | None = None) -> Path:
    from rl.paths import default_cache_dir

    return Path(cache_dir or default_cache_dir()) / f"tokenizer-v{VERSION}"


def load_tokenizer(name_or_path: str | None = None,
                   cache_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The embedded tokenizer (built and cached on first use), or ``AutoTokenizer`` of a path/id."""
    from transformers import AutoTokenizer

    if name_or_path is not None:
        return AutoTokenizer.from_pretrained(name_or_path)
    path = tokenizer_dir(cache_dir)
    if not (path / "tokenizer.json").exists():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        build_tokenizer().save_pretrained(str(tmp))
        if path.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, path)
    return AutoTokenizer.from_pretrained(str(path))
