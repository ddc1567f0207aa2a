"""A name -> object registry, one per kind of pluggable thing (adapters, optimizers, encoders ...).

Names are written in one place, the ``@REGISTRY.register("name")`` decorator. Registering a name twice
is an error (timm silently overwrites; we do not). Asking for an unknown name is an error listing the
known ones. With ``name_attr`` the decorator also sets the name on the registered object (the
adapter registry sets ``cls.method``). A registry may be given ``loader``: a function that imports the
modules whose decorators fill it, called on first lookup so that importing the registry itself does no work.

Not covered: entry-point plugins from other installed packages.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from adaptome.core.errors import AdaptomeError

T = TypeVar("T")


class RegistryError(AdaptomeError, KeyError):
    """Unknown or duplicate name. ``str()`` gives the plain message (``AdaptomeError.__str__``)."""


class Registry(Generic[T]):
    """Maps names to registered objects of one kind."""

    def __init__(self, kind: str, loader: Callable[[], None] | None = None, name_attr: str | None = None):
        self.kind = kind
        #: when set, ``register`` writes the name onto the registered object under this attribute, so a
        #: name is written once (in the decorator) and the object still knows it (``cfg.method``)
        self.name_attr = name_attr
        self._items: dict[str, T] = {}
        self._loader = loader
        self._loaded = loader is None

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            assert self._loader is not None
            self._loader()

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REG.register("lora") class LoraConfig: ...``."""
        if not name or name != name.strip():
            raise RegistryError(f"{self.kind}: invalid name {name!r}")

        def deco(obj: T) -> T:
            if name in self._items:
                raise RegistryError(
                    f"{self.kind} {name!r} is already registered (by {self._items[name]!r}); "
                    "pick another name"
                )
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        self._ensure_loaded()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise RegistryError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._ensure_loaded()
        return len(self._items)
