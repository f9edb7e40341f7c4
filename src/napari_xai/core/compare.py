"""Side-by-side comparisons: one input under several methods, LRP configurations, targets and models.

A comparison is the product of three axes:

* **what**: LRP configurations (by name) and registry methods;
* **target**: class indices or names (``None`` = each model's predicted class);
* **model**: keys of already-loaded models.

Every cell is one :func:`~napari_xai.core.explain.explain` call on the same
input volume, so all maps live on the input grid and can be shown side by side
with one colour limit (:func:`common_limit`), or each with its own
(:func:`cell_limits`) when methods with different units meet. Cell labels name only the axes
that vary, e.g. ``lrp-0 · class 1`` when two configurations meet two targets
of one model. Headless (CLI ``compare``) and napari (the LRP designer's
Compare tab) share this code.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .errors import Cancelled, UserError

__all__ = ["Cell", "Item", "cell_limits", "common_limit", "label_items", "model_name", "plan", "run_comparison", "slug"]

#: Upper bound on the number of cells (each one is a full explanation; napari's grid gets crowded beyond this).
MAX_CELLS = 24


@dataclass(frozen=True)
class Item:
    """One comparison cell: what to run (``kind`` "config" or "method", and its name), for which target and model."""

    kind: str
    name: str
    target: int | str | None = None
    model: str = ""

    def target_text(self) -> str:
        return "predicted" if self.target is None else str(self.target)


@dataclass
class Cell:
    """A comparison result: its label, what was asked, and the relevance."""

    label: str
    item: Item
    relevance: Any  # napari_xai.core.explain.Relevance


def model_name(source: str, weights: str | None = None, taken: Sequence[str] = ()) -> str:
    """A short name for a model source: ``demo``, the class of ``file.py:Class`` (with the weights file's stem),
    or the bundle/file name; unique among ``taken`` (``#2``, ``#3``... appended)."""
    source = str(source)
    if source == "demo":
        base = "demo"
    elif ".py:" in source:
        base = source.rsplit(":", 1)[1]
    else:
        base = Path(source.rstrip("/\\")).name or source
    if weights:
        base += f" ({Path(str(weights)).name.split('.')[0]})"
    name, n = base, 2
    while name in taken:
        name, n = f"{base} #{n}", n + 1
    return name


GREEK = {"α": "alpha", "β": "beta", "γ": "gamma", "ε": "epsilon", "θ": "theta", "⁺": "plus", "⁻": "minus",
         "²": "2", "σ": "sigma", "μ": "mu", "|": "-"}


def slug(text: str) -> str:
    """A file-name-safe version of a cell label (Greek rule letters spelled out: γ | ε | 0 -> gamma-epsilon-0)."""
    import re

    for k, v in GREEK.items():
        text = text.replace(k, v)
    text = re.sub(r"[^A-Za-z0-9.+-]+", "_", text)
    return re.sub(r"_?-_?", "-", text).strip("_.-") or "cell"


def plan(whats: Sequence[tuple[str, str]], targets: Sequence[int | str | None] = (None,),
         models: Sequence[str] = ("",)) -> list[Item]:
    """The product of the three axes, in model-major, then target, then what order.

    ``whats`` are ``(kind, name)`` pairs with kind ``"config"`` or ``"method"``.
    Duplicate entries on an axis are dropped (first one kept).
    """
    whats = list(dict.fromkeys((str(k), str(n)) for k, n in whats))
    targets = list(dict.fromkeys(None if t in (None, "", "predicted") else t for t in targets)) or [None]
    models = list(dict.fromkeys(models)) or [""]
    bad = [k for k, _ in whats if k not in ("config", "method")]
    if bad:
        raise UserError(f"unknown comparison kind {bad[0]!r}; use 'config' or 'method'.")
    if not whats:
        raise UserError("choose at least one configuration or method to compare.")
    items = [Item(k, n, t, m) for m, t, (k, n) in itertools.product(models, targets, whats)]
    if len(items) > MAX_CELLS:
        raise UserError(
            f"{len(whats)} methods/configurations x {len(targets)} targets x {len(models)} models = {len(items)} "
            f"cells; at most {MAX_CELLS} fit a readable grid. Untick some."
        )
    return items


def label_items(items: Sequence[Item]) -> list[str]:
    """Short unique labels: only the axes that vary between items are named (what · target · model)."""
    vary_what = len({(i.kind, i.name) for i in items}) > 1
    vary_target = len({i.target for i in items}) > 1
    vary_model = len({i.model for i in items}) > 1
    labels = []
    for i in items:
        parts = []
        if vary_what or not (vary_target or vary_model):
            parts.append(i.name)
        if vary_target:
            parts.append(i.target_text())
        if vary_model:
            parts.append(i.model)
        labels.append(" · ".join(parts))
    return labels


def cell_limits(arrays: Sequence[np.ndarray], percentile: float = 99.99) -> list[float]:
    """Each signed map's own colour limit: the ``percentile`` of its non-zero |r| (1.0 for an all-zero map)."""
    lims = []
    for a in arrays:
        v = np.abs(np.asarray(a, dtype=np.float64))
        v = v[v > 0]
        lims.append(float(np.percentile(v, percentile)) if v.size else 1.0)
    return lims


def common_limit(arrays: Sequence[np.ndarray], percentile: float = 99.99) -> float:
    """One colour limit for several signed maps: the largest ``percentile`` of the non-zero |r| among them."""
    lims = [lim for lim, a in zip(cell_limits(arrays, percentile), arrays) if np.any(np.asarray(a) != 0)]
    return max(lims) if lims else 1.0


def _named_classes(model: Any) -> list[str]:
    spec = getattr(model, "spec", None)
    return [str(c) for c in (getattr(spec, "class_names", None) or [])]


def model_target(target: int | str | None, model: Any, reference: Sequence[str], key: str = "") -> tuple[Any, str]:
    """The target to ask ``model`` for, and a note when a class name had to become a position.

    A name the model knows (case-insensitive) stays a name, so each model
    explains its own class of that name; a name it does not know but
    ``reference`` does becomes that position. Indices, ``None`` and unknown
    names pass unchanged (``explain`` reports the latter).
    """
    if not isinstance(target, str) or target.strip().lstrip("-").isdigit() or target.strip().lower() in ("", "predicted"):
        return target, ""
    own = [c.lower() for c in _named_classes(model)]
    ref = [c.lower() for c in reference]
    want = target.strip().lower()
    if want in own or want not in ref:
        return target, ""
    k = ref.index(want)
    return k, (f"model {key or 'model'!r} names no class {target!r}; it explains its output {k}, the position of "
               f"{target!r} in the reference classes ({', '.join(reference)}).")


def run_comparison(
    volume,
    items: Sequence[Item],
    models: Mapping[str, Any],
    configs: Mapping[str, Any] | None = None,
    *,
    classes: Sequence[str] | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **explain_kwargs,
) -> list[Cell]:
    """Explain ``volume`` once per item.

    Parameters
    ----------
    volume : Volume
    items : sequence of Item
        From :func:`plan`.
    models : mapping
        Model key -> :class:`~napari_xai.core.models.LoadedModel`.
    configs : mapping, optional
        Configuration name -> :class:`~napari_xai.core.lrp.LrpConfig` for ``config`` items.
    classes : sequence of str, optional
        The reference class names (default: those of the first model that names
        its classes). A target given by name is each model's own class of that
        name; a model that does not name it explains the output at the name's
        position in ``classes``, with a warning in that cell.
    progress, should_stop
        As for :func:`explain`; progress covers the whole comparison.
    **explain_kwargs
        Passed to every :func:`explain` call (``segmentation``, ``mask``,
        ``point``, ``normalization``, ...).

    A failing cell raises :class:`UserError` naming the cell; nothing is returned then.
    """
    from .explain import explain

    configs = dict(configs or {})
    missing = sorted({i.model for i in items if i.model not in models})
    if missing:
        raise UserError(f"model {missing[0]!r} is not loaded; add it to the comparison first.")
    unknown = sorted({i.name for i in items if i.kind == "config" and i.name not in configs})
    if unknown:
        raise UserError(f"no LRP configuration named {unknown[0]!r}; choose one of: {', '.join(configs) or 'none'}.")
    labels = label_items(items)
    stop = should_stop or (lambda: False)
    reference = list(classes) if classes else next((_named_classes(m) for m in models.values() if _named_classes(m)), [])
    cells: list[Cell] = []
    for k, (item, label) in enumerate(zip(items, labels)):
        if stop():
            raise Cancelled("cancelled by the user")
        n = len(items)

        def sub(f: float, m: str, k=k, label=label) -> None:
            if progress is not None:
                progress((k + min(max(f, 0.0), 1.0)) / n, f"{k + 1}/{n} {label}: {m}")

        if item.kind == "config":
            method, params = "lrp", {"config": configs[item.name], "boundaries": False}
        else:
            method, params = item.name, {}
        target, note = model_target(item.target, models[item.model], reference, item.model)
        try:
            rel = explain(volume, models[item.model], method, params=params, target=target,
                          progress=sub, should_stop=stop, **explain_kwargs)
        except UserError as exc:
            raise UserError(f"comparison cell '{label}': {exc}") from None
        if note:
            rel.warnings.append(note)
            rel.provenance["warnings"].append(note)
        cells.append(Cell(label, item, rel))
    # labels name the explained classes (e.g. 'sick', not '1', as the first model that explains it calls it);
    # 'predicted' stays as asked
    display: dict = {}
    for c in cells:
        if c.item.target is not None:
            display.setdefault(c.item.target, c.relevance.target_name)
    if len(set(display.values())) == len(display):
        shown = [Item(c.item.kind, c.item.name, display.get(c.item.target), c.item.model) for c in cells]
        for c, label in zip(cells, label_items(shown)):
            c.label = label
    if progress is not None:
        progress(1.0, f"compared {len(cells)} cells")
    return cells
