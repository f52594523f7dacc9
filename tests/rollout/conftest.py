"""Shared fixtures of the rollout tests: the embedded tokenizer and a tiny sparse DSA policy.

The policy has index_topk = 8, so DSA selection is active from the 9th token on, and a larger
init scale (0.1) than the preset, so its next-token distributions are peaked enough that top-p
kept sets vary in size.
"""
from __future__ import annotations

import pytest
import torch

from rl.policy import DSAConfig, DSAForCausalLM
from rl.policy.tokenizer import load_tokenizer


def tiny_config(tok, **overrides) -> DSAConfig:
    return DSAConfig.from_preset("tiny", **{"vocab_size": len(tok), "index_topk": 8, "initializer_range": 0.1,
                                            "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id,
                                            **overrides})


def tiny_model(tok, seed: int = 0) -> DSAForCausalLM:
    torch.manual_seed(seed)
    return DSAForCausalLM(tiny_config(tok)).eval()


def ragged_prompts(vocab: int, lengths=(5, 14, 3, 21), seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(10, vocab, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every rollout test module runs on one intra-op thread (``one_thread`` in tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok)


@pytest.fixture(scope="session")
def make_model(tok):
    """`make_model(seed)`: a fresh tiny policy (tests import no helpers: --import-mode=importlib)."""
    return lambda seed=0: tiny_model(tok, seed)


@pytest.fixture(scope="session")
def prompts(tok):
    """Four ragged prompts (5, 14, 3, 21 tokens)."""
    return ragged_prompts(len(tok))
