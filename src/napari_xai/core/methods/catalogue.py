"""Every registered attribution method, in listing order: get_method and all_methods.

Importing a family module registers its entries; this module imports them all,
so the registry itself imports nothing above it.
"""

from __future__ import annotations

from . import gradient, deeplift, cam, occlusion  # noqa: E401, F401, I001  (register the entries)
from .. import lrp  # noqa: E402, F401, I001
from . import regions, attention  # noqa: F401, I001
from . import crp  # noqa: F401, I001
from ..errors import UserError  # noqa: I001
from .registry import REGISTRY, Method  # noqa: I001


#: Listing order of the families (`napari-xai methods`, the widget's method list); within a family, registration order.
FAMILIES = ("gradient", "cam", "perturbation", "lrp", "concepts", "attention")


def get_method(name: str) -> Method:
    """The method called ``name`` (case-insensitive, ``_`` or ``-``); a one-line UserError if none."""
    key = name.strip().lower().replace("_", "-")
    if key not in REGISTRY:
        raise UserError(f"unknown method {name!r}; run 'napari-xai methods' to list them ({', '.join(REGISTRY)}).")
    return REGISTRY[key]


def all_methods() -> list[Method]:
    """Every method, family by family (:data:`FAMILIES`), each family in registration order."""
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(REGISTRY.values(), key=lambda m: rank.get(m.family, len(FAMILIES)))
