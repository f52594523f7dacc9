"""rl.registry: register, look up, reject duplicates and unknown names."""
from __future__ import annotations

import pytest

from rl.registry import Registry


def test_register_get_names_contains() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("b")(2)
    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.get("b") == 2
    assert reg.names() == ("a", "b")
    assert "a" in reg and "c" not in reg


def test_duplicate_raises_and_keeps_first() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.register("a")(2)
    assert reg.get("a") == 1


def test_unknown_name_lists_known() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("x")(1)
    with pytest.raises(KeyError, match="unknown thing 'y'; registered: x"):
        reg.get("y")
