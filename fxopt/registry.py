"""``Registry[T]``: entries of one kind by key, the one table every fxopt registry is made of.

Passes, op kinds (their channel rules, rewriters and costs), importance criteria and targets are each kept in a
``Registry``; a registry with more to do (a pass registry checks what it is given, the op registry keeps several
tables) holds ``Registry`` objects rather than re-implementing one. Unknown keys raise the registry's error class
with the registered names, and ``scoped()`` gives tests a private copy that is dropped at the end of the block.

Example:
    >>> SHAPES = Registry[Callable[[], Shape]]("shape")
    >>> SHAPES.register("square", Square)
    >>> with SHAPES.scoped():
    ...     SHAPES.register("circle", Circle)   # gone after the block
    >>> SHAPES.get("triangle")  # FxoptError: unknown shape 'triangle'; registered shapes: square
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, ItemsView, Iterator, KeysView, ValuesView
from typing import Any, Generic, Self, TypeVar, overload

from fxopt.errors import FxoptError

T = TypeVar("T")
D = TypeVar("D")
_MISSING = object()


class Registry(Generic[T]):
    """Entries of one kind by key (a name, or an op object), with ``register``, ``get``, ``names`` and ``scoped``.

    Args:
        kind: what an entry is, for error messages (``"pass"``, ``"criterion"``, ``"target"``).
        error: the error class raised for unknown keys (an ``FxoptError``).
        plural: the plural of ``kind`` (default: ``kind + "s"``).
    """

    def __init__(self, kind: str, error: type[FxoptError] = FxoptError, plural: str | None = None) -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self.error = error
        self.entries: dict[Any, T] = {}

    def register(self, key: Any, value: T) -> T:
        """Make ``value`` available as ``key`` (replacing an earlier entry) and return it."""
        self.entries[key] = value
        return value

    def decorator(self, *keys: Any) -> Callable[[T], T]:
        """A decorator that registers what it decorates under each of ``keys`` and returns it unchanged."""

        def add(value: T) -> T:
            for key in keys:
                self.register(key, value)
            return value

        return add

    @overload
    def get(self, key: Any) -> T: ...

    @overload
    def get(self, key: Any, default: D) -> T | D: ...

    def get(self, key: Any, default: object = _MISSING) -> object:
        """The entry for ``key``; ``default`` when it is given and there is none.

        Raises:
            FxoptError: (the registry's error class) for an unknown key without a default, listing the known ones.
        """
        if key in self.entries:
            return self.entries[key]
        if default is not _MISSING:
            return default
        raise self.unknown(key)

    def unknown(self, key: object) -> FxoptError:
        """The error for an unknown ``key``: it names the registered keys."""
        known = ", ".join(self.names()) or "(none)"
        return self.error(f"unknown {self.kind} {key!r}; registered {self.plural}: {known}")

    def names(self) -> list[str]:
        """The registered keys as text, sorted."""
        return sorted(map(str, self.entries))

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Context in which registrations (and removals) are private; the entries are restored at exit."""
        saved = dict(self.entries)
        try:
            yield self
        finally:
            self.entries = saved

    def pop(self, key: Any, default: T | None = None) -> T | None:
        """Remove ``key`` (tests do this inside ``scoped()``) and return its entry, or ``default``."""
        return self.entries.pop(key, default)

    def __getitem__(self, key: Any) -> T:
        return self.get(key)

    def __setitem__(self, key: Any, value: T) -> None:
        self.entries[key] = value

    def __delitem__(self, key: Any) -> None:
        del self.entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[Any]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> KeysView[Any]:
        """The registered keys, in registration order."""
        return self.entries.keys()

    def values(self) -> ValuesView[T]:
        """The registered entries, in registration order."""
        return self.entries.values()

    def items(self) -> ItemsView[Any, T]:
        """``(key, entry)`` pairs, in registration order."""
        return self.entries.items()

    def __repr__(self) -> str:
        return f"Registry[{self.kind}]({', '.join(self.names())})"


class FactoryRegistry(Generic[T]):
    """A registry whose ``register`` and ``get`` take more than a plain ``Registry`` does (criterion instances,
    ready targets), kept over one ``Registry`` of factories: the names and ``scoped()`` are that registry's.

    Args:
        factories: the underlying registry.
    """

    def __init__(self, factories: Registry[T]) -> None:
        self.factories = factories

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return self.factories.names()

    @contextlib.contextmanager
    def scoped(self) -> Iterator[Self]:
        """Context in which registrations are private; they are dropped at exit."""
        with self.factories.scoped():
            yield self
