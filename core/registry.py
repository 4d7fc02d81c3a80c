"""Things an app declares once, by name, at import time (subscribers, audiences)."""

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Declarations by name; declaring a name twice is a bug, raised at start-up."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is declared twice")
        self._items[name] = item
        return item

    def get(self, name: str) -> T | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())
