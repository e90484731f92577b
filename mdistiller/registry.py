"""A small name -> object registry used for models, distillers, datasets and trainers."""

import difflib
from typing import Dict, Iterable, Iterator, Optional, TypeVar

from mdistiller.errors import UnknownNameError

T = TypeVar("T")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` Did you mean A, B?`` naming the (at most three) known names closest to `name`, letter case
    aside; "" when none is close."""
    by_lower = {str(k).lower(): str(k) for k in known}
    close = [by_lower[c] for c in difflib.get_close_matches(name.lower(), list(by_lower), n=3)]
    return f" Did you mean {', '.join(close)}?" if close else ""


class Registry:
    """Maps names to objects; `register` works as a decorator or a plain call.

    Looking up an unknown name raises :class:`UnknownNameError` listing the known names and the
    closest matches.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, object] = {}

    def register(self, name: Optional[str] = None, obj: Optional[T] = None):
        """`@registry.register("NAME")` or `registry.register("NAME", obj)`."""

        def add(item: T) -> T:
            key = name if name is not None else getattr(item, "__name__")
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = item
            return item

        if obj is not None:
            return add(obj)
        return add

    def get(self, name: str, where: str = ""):
        """The object registered as `name`; `where` (e.g. " for dataset 'digits'") goes into the error."""
        if name not in self._items:
            raise UnknownNameError(
                f"Unknown {self.kind} '{name}'{where}.{did_you_mean(name, self._items)} "
                f"Known: {', '.join(sorted(self._items))}."
            )
        return self._items[name]

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return self._items.keys()

    def items(self):
        return self._items.items()

    def values(self):
        return self._items.values()


