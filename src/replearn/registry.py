"""Name -> factory registries; the key is the name a user types on the command line."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Generic, TypeVar

from replearn.errors import ReplearnError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories, e.g. ``METHODS.register("simclr")(SimCLR)``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            if isinstance(obj, type):
                obj.registered_name = name  # type: ignore[attr-defined]
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(sorted(self._items))}"
            raise ReplearnError(f"unknown {self.kind} {name!r}", hint)
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
