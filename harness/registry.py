"""One registry type for every pluggable part (encoders, projectors, LLM prompt styles, packs, ...).

A new component is one class plus one registration line::

    PROJECTORS = Registry("projector")

    @PROJECTORS.register("linear")
    class LinearProjector(nn.Module): ...

Registering a name twice is an error (a silent overwrite would make a run depend on import
order), and an unknown name is an error that lists the valid names and suggests the closest.
"""
from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: object, choices, *, cutoff: float = 0.6) -> str:
    """`` (did you mean 'x'?)`` naming the choice closest to ``name``, or ``''``: the one hint every
    "unknown name" error of the harness gives (config keys, study and search keys, registries)."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f" (did you mean {close[0]!r}?)" if close else ""


class RegistryError(KeyError):
    """An unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """A name -> object table with helpful errors.

    ``base``: every entry must be this class or a subclass of it (for tables of classes), or an
    instance of it (for tables of values); anything else is refused when it is added."""

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind, self.base = kind, base
        self._items: dict[str, T] = {}

    def _check(self, name: str, obj: T) -> None:
        if self.base is None:
            return
        ok = issubclass(obj, self.base) if isinstance(obj, type) else isinstance(obj, self.base)
        if not ok:
            raise TypeError(f"{self.kind} {name!r}: expected a {self.base.__name__} (or a subclass), got {obj!r}")

    def add(self, name: str, obj: T) -> T:
        self._check(name, obj)
        if name in self._items:
            raise RegistryError(f"{self.kind} {name!r} is already registered (by {self._items[name]!r})")
        self._items[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(obj: T) -> T:
            return self.add(name, obj)

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise RegistryError(self.unknown_message(name)) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def unknown_message(self, name: str) -> str:
        valid = ", ".join(sorted(self._items)) or "(none registered)"
        hint = did_you_mean(name, self._items, cutoff=0.5)
        return f"unknown {self.kind} {name!r}{hint}. Valid {self.kind} names: {valid}"

    @contextlib.contextmanager
    def replaced(self, name: str, obj: T) -> Iterator[T]:
        """Swap the entry ``name`` for ``obj`` inside a ``with`` block (tests, one-off experiments);
        the original is back afterwards, whatever happens."""
        self._check(name, obj)
        old = self.get(name)
        self._items[name] = obj
        try:
            yield obj
        finally:
            self._items[name] = old

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)
