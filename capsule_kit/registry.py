"""One small registry class; one instance per kind of component.

Names are explicit (``@ROUTING.register("dynamic")``), duplicates raise, and an
unknown name raises with the list of known ones (and the nearest match).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from capsule_kit.errors import shorten

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown or duplicate name in a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


def nearest(name: str, choices: list[str]) -> str | None:
    """Return the closest string in ``choices`` to ``name`` (or None)."""
    hits = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return hits[0] if hits else None


class Registry(Generic[T]):
    """A name -> object table with aliases.

    Args:
        kind: What the registry holds (used in error messages), e.g. ``"routing"``.

    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` (and ``aliases``).

        Raises:
            RegistryError: if the name or an alias is already taken.

        """

        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._items or key in self._aliases:
                    raise RegistryError(f"{self.kind} '{key}' is already registered")
            self._items[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return deco

    def resolve(self, name: str) -> str:
        """Return the canonical name for ``name`` or an alias of it.

        Raises:
            RegistryError: for an unknown name, listing the known ones.

        """
        if name in self._items:
            return name
        if name in self._aliases:
            return self._aliases[name]
        hint = nearest(name, self.names() + list(self._aliases))
        near = f" (did you mean '{hint}'?)" if hint else ""
        raise RegistryError(f"unknown {self.kind} '{shorten(name, 80)}'{near}; known: {self.listing()}")

    def listing(self) -> str:
        """Known names with their aliases: ``"attention (or efficient), dynamic (or sabour)"``."""
        also: dict[str, list[str]] = {}
        for alias, target in sorted(self._aliases.items()):
            also.setdefault(target, []).append(alias)
        return ", ".join(f"{n} (or {', '.join(also[n])})" if n in also else n for n in self.names())

    def check(self, name: str) -> str:
        """:meth:`resolve` for recipe schemas: an unknown name raises ``ValueError``.

        Example: ``name: Annotated[str, AfterValidator(ROUTING.check)]`` in a pydantic model.
        """
        try:
            return self.resolve(name)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None

    def get(self, name: str) -> T:
        """Return the object registered as ``name``."""
        return self._items[self.resolve(name)]

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Call the registered constructor ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Sorted canonical names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._items or name in self._aliases)

    def __len__(self) -> int:
        return len(self._items)


ROUTING: Registry[Any] = Registry("routing")
MODELS: Registry[Any] = Registry("model")
TASKS: Registry[Any] = Registry("task")
