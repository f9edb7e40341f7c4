"""Heavy libraries (torch, Captum, Zennit, MONAI) loaded on first use, so the method registry and the command
line's parser import in milliseconds (``napari-xai methods``, ``--help``; docs/performance.md, "Start-up").

* :func:`lazy_import` returns a stand-in for a module: the real module is imported the first time one of its
  attributes is read (``torch.zeros``), not when the name is bound (``torch = lazy_import("torch")``).
* :class:`TypeGroup` is a stand-in for a tuple of types (``isinstance(m, ACTIVATIONS)``) built on first use.

Code that runs at import time (a class deriving from ``nn.Module``, a default argument, a decorator) still needs
the real library; keep such code inside functions in the modules the registry imports.
"""

from __future__ import annotations

import importlib
import types
from typing import Any, Callable, Iterator


class LazyModule(types.ModuleType):
    """A module imported on first attribute access (``sys.modules`` only sees it then)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_lazy_target"] = None

    def _load(self) -> types.ModuleType:
        target = self.__dict__["_lazy_target"]
        if target is None:
            target = importlib.import_module(self.__name__)
            self.__dict__["_lazy_target"] = target
        return target

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") and attr.endswith("__") and attr not in ("__version__", "__file__", "__path__"):
            raise AttributeError(attr)
        return getattr(self._load(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_lazy_target"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


def lazy_import(name: str) -> Any:
    """``torch = lazy_import("torch")``: the module ``name``, imported when first used."""
    return LazyModule(name)


class TypeGroup:
    """A tuple of types built on first use: ``isinstance(x, group)``, ``issubclass``, iteration, ``len`` and ``+``
    behave as with the tuple ``factory()`` returns."""

    def __init__(self, factory: Callable[[], tuple[type, ...]]):
        self._factory = factory
        self._types: tuple[type, ...] | None = None

    @property
    def types(self) -> tuple[type, ...]:
        if self._types is None:
            self._types = tuple(self._factory())
        return self._types

    def __instancecheck__(self, obj: Any) -> bool:
        return isinstance(obj, self.types)

    def __subclasscheck__(self, cls: type) -> bool:
        return issubclass(cls, self.types)

    def __iter__(self) -> Iterator[type]:
        return iter(self.types)

    def __len__(self) -> int:
        return len(self.types)

    def __contains__(self, cls: object) -> bool:
        return cls in self.types

    def __add__(self, other) -> TypeGroup:
        return TypeGroup(lambda: self.types + tuple(other))

    def __radd__(self, other) -> TypeGroup:
        return TypeGroup(lambda: tuple(other) + self.types)

    def __repr__(self) -> str:
        if self._types is None:
            return "TypeGroup(<not built yet>)"
        return f"TypeGroup({', '.join(t.__name__ for t in self._types)})"


#: The torch modules every method module uses, bound once: ``from ..lazy import F, nn, torch``.
torch = lazy_import("torch")
nn = lazy_import("torch.nn")
F = lazy_import("torch.nn.functional")
