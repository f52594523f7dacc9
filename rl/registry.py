"""A tiny name -> object registry shared by the learner's pure-function tables.

Losses, KL estimators, loss aggregations and advantage estimators are looked up by the name that
the config holds (``algorithm.policy_loss``, ``algorithm.kl_estimator``, ...), so the trainer never
branches on a name. Registering a name twice raises (a silent override would make which function
runs depend on import order); an unknown name raises with the list of known ones, so a config
validator can also call :meth:`Registry.names` to reject a typo at start-up.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (e.g. ``Registry[KLEstimator]("KL estimator")``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("name")`` stores the object under ``name`` and returns it."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered; pick another name")
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        """The object registered as ``name``; KeyError naming the known ones otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
