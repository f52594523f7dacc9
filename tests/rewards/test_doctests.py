"""The examples in the rewards modules' docstrings run and hold."""
from __future__ import annotations

import doctest
import importlib

import pytest

from rewards.sandbox import sandbox_support

MODULES = ["rewards.registry", "rewards.text", "rewards.builtin", "rewards.runner", "rewards.sandbox", "rewards.code"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name == "rewards.code" and not sandbox_support()[0]:
        pytest.skip(sandbox_support()[1])
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and (result.attempted > 0 or name == "rewards.sandbox")
