"""The relevance-layer picker: which map the explorer explores."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ...core.errors import UserError

NO_RELEVANCE_HINT = ("No relevance map yet: run Plugins › napari-xai › Explain, or open a relevance NIfTI with its "
                     ".xai.json sidecar (tick 'any image' for a map without one).")
WARN_STYLE = "color: #f0c060;"


def layer_relevance(layer) -> np.ndarray:
    """The signed relevance of a layer (the full map kept by napari-xai's split +/− layers)."""
    md = getattr(layer, "metadata", None) or {}
    data = md.get("xai_relevance")
    if data is None:
        data = layer.data
    arr = np.asarray(data)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserError(f"layer '{layer.name}' is {arr.ndim}D; the explorer needs a 3D relevance volume.")
    return arr


def candidate_layers(viewer, exclude: list, any_image: bool, skip_name: str) -> list:
    """Relevance layers (one per map: the (+)/(−) pair share one), or every 3D image with ``any_image``."""
    from napari.layers import Image

    from ..._layers import is_relevance_layer

    out, seen = [], set()
    for ly in viewer.layers:
        if not isinstance(ly, Image) or ly.name == skip_name or any(ly == m for m in exclude) \
                or ly.ndim not in (3, 4) or getattr(ly, "rgb", False):
            continue
        if not is_relevance_layer(ly):
            if any_image:
                out.append(ly)
            continue
        signed = (ly.metadata or {}).get("xai_relevance")
        key = id(signed) if signed is not None else id(ly)
        if key not in seen:
            seen.add(key)
            out.append(ly)
    return out


class SourcePicker(QWidget):
    """A combo box of relevance layers, an 'any image' box and a hint shown while there is none."""

    chosen = Signal(str)  # a layer name picked by the user
    any_image_toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("relevance"))
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("the relevance layer to explore (the newest one is chosen when it appears)")
        self.layer_combo.currentTextChanged.connect(self.chosen)
        row.addWidget(self.layer_combo, 1)
        self.any_image_check = QCheckBox("any image")
        self.any_image_check.setToolTip("also offer image layers without a relevance record "
                                        "(e.g. a map made by another tool)")
        self.any_image_check.toggled.connect(self.any_image_toggled)
        row.addWidget(self.any_image_check)
        root.addLayout(row)
        self.hint_label = QLabel(NO_RELEVANCE_HINT)
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet(WARN_STYLE)
        root.addWidget(self.hint_label)

    def set_names(self, names: list[str]) -> None:
        """Refill the list without emitting :attr:`chosen`; keeps the current name if still there."""
        current = self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        self.hint_label.setVisible(not names)

    def show_name(self, name: str) -> None:
        """Show ``name`` as chosen without emitting :attr:`chosen`."""
        if self.layer_combo.currentText() != name:
            self.layer_combo.blockSignals(True)
            self.layer_combo.setCurrentText(name)
            self.layer_combo.blockSignals(False)
