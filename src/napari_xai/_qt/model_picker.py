"""The model picker shared by the docks: source kind, path, class, weights, constructor kwargs and the trust opt-in.

One list of model sources (:data:`SOURCES`), one text for the trust checkbox that names the risk, and one
reading of the fields into ``(source, extra)`` for :func:`napari_xai.core.models.load_model`. The Explain and
Cohort docks (magicgui) lay out these widgets in their own forms; the LRP designer (Qt) docks :meth:`ModelPicker.form`.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, LineEdit

from ..core.errors import UserError

SOURCES = {
    "demo model": "demo",
    "MONAI bundle folder": "bundle",
    "Python file + weights": "python",
    "TorchScript file": "torchscript",
}
TRUST_TEXT = "trust model code (TorchScript, full unpickling and bundle expressions RUN code from the files)"
TRUST_TIP = ("full unpickling and MONAI bundle expressions RUN code from the model files; tick only for "
             "files you trust")


def file_text(widget: FileEdit) -> str:
    """The path in a FileEdit, or "" when it is empty (magicgui shows an empty path as ".")."""
    value = str(widget.value) if widget.value else ""
    return "" if value == "." else value


class ModelPicker:
    """The model-source widgets of one dock; ``with_kwargs`` adds the constructor-kwargs field (Python sources)."""

    def __init__(self, with_kwargs: bool = False):
        self.source = ComboBox(label="model", choices=list(SOURCES), value="demo model")
        self.path = FileEdit(label="model path", mode="r", tooltip="bundle folder, .py file or TorchScript file")
        self.class_name = LineEdit(label="class", value="", tooltip="class name inside the .py file, e.g. MyNet")
        self.weights = FileEdit(label="weights", mode="r", filter="*.pt *.pth *.ckpt *.bin",
                                tooltip="state_dict checkpoint")
        self.kwargs = (LineEdit(label="kwargs (JSON)", value="{}",
                                tooltip='constructor keyword arguments, e.g. {"in_channels": 1}') if with_kwargs else None)
        self.trust = CheckBox(text=TRUST_TEXT, value=False, tooltip=TRUST_TIP)

    @property
    def kind(self) -> str:
        return SOURCES[self.source.value]

    @property
    def widgets(self) -> list:
        """The fields in form order (source, path, class, weights, kwargs if any, trust)."""
        return [w for w in (self.source, self.path, self.class_name, self.weights, self.kwargs, self.trust)
                if w is not None]

    def form(self) -> Container:
        """The fields as one labelled magicgui form (its ``.native`` goes into a Qt layout), kept up to date."""
        box = Container(labels=True, widgets=self.widgets)
        box.margins = (0, 0, 0, 0)
        head, _, risk = TRUST_TEXT.partition(" (")  # the same words on three lines: the form fits a dock
        self.trust.text = f"{head}\n({textwrap.fill(risk, 39)}"
        self.source.changed.connect(self.update_visibility)
        self.update_visibility()
        return box

    def update_visibility(self, *_) -> None:
        """Show the fields the chosen source needs (a bundle is a folder; class and weights only for a .py file);
        the built-in demo model has nothing to trust."""
        kind = self.kind
        self.trust.enabled = kind != "demo"
        self.path.visible = kind != "demo"
        self.path.mode = "d" if kind == "bundle" else "r"
        for w in (self.class_name, self.weights, self.kwargs):
            if w is not None:
                w.visible = kind == "python"

    def model_source(self) -> tuple[str, dict]:
        """``(source, extra)`` for ``load_model``; one clear line if a field the source needs is empty."""
        kind = self.kind
        if kind == "demo":
            return "demo", {}
        path = file_text(self.path)
        if not path:
            raise UserError(f"choose a {self.source.value} in 'model path'.")
        if kind == "python":
            cls = self.class_name.value.strip()
            if not cls:
                raise UserError("enter the model class name (e.g. MyNet) for the .py file.")
            extra = {"weights": file_text(self.weights) or None}
            if self.kwargs is not None:
                extra["model_kwargs"] = self.kwargs.value or "{}"
            return f"{path}:{cls}", extra
        return path, {}

    def load_args(self) -> tuple[str, dict]:
        """:meth:`model_source` with the trust opt-in in ``extra`` when ticked (unticked, nothing changes)."""
        source, extra = self.model_source()
        if self.trust.value and source != "demo":
            extra["trust"] = True
        return source, extra


def cached_model(cache: dict, source: str, extra: dict, *, device: str | None = None,
                 trust: bool = False) -> tuple[tuple, Any]:
    """``(key, model)``: the model a dock keeps in ``cache`` for this source, options, device and trust, else a
    fresh load (any thread). The dock stores ``{key: model}`` itself once a run succeeded."""
    from ..core.models import load_model

    key = (source, json.dumps(extra, sort_keys=True), device, bool(trust))
    model = cache.get(key)
    if model is None:
        model = load_model(source, device=device, trust=trust, **extra)
    return key, model
