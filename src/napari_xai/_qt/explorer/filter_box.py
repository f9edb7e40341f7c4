"""The "smooth · scale · filter" group: σ, scaling, fraction-pass/clamp filter and sign."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout
from superqt import QLabeledDoubleRangeSlider

from ...core import postprocess as pp


def spin(lo: float, hi: float, decimals: int, value: float, step: float = 1.0, suffix: str = "") -> QDoubleSpinBox:
    """A spin box that reports a value only when typing ends (no keyboard tracking)."""
    box = QDoubleSpinBox(minimum=lo, maximum=hi, decimals=decimals, singleStep=step, suffix=suffix)
    box.setValue(value)
    box.setKeyboardTracking(False)
    return box


def combo(items, current: str, tip: str = "") -> QComboBox:
    box = QComboBox()
    box.addItems([str(i) for i in items])
    box.setCurrentText(str(current))
    if tip:
        box.setToolTip(tip)
    return box


class FilterBox(QGroupBox):
    """Controls of the stages before the threshold (changing them recomputes the filtered map)."""

    changed = Signal()  # any control: schedule an update
    moved = Signal()  # a spin box value (leading-edge update)
    FIELDS = ("sigma_spin", "scale_combo", "percentile_spin", "scale_value_spin", "clip_check", "filter_combo",
              "alpha_slider", "sign_combo")

    def __init__(self, defaults: pp.PostParams, parent=None):
        super().__init__("smooth · scale · filter", parent)
        d = defaults
        form = QFormLayout(self)
        self.sigma_spin = spin(0.0, 50.0, 2, d.sigma_mm, 0.5, " mm")
        self.sigma_spin.setToolTip("Gaussian smoothing sigma in mm (0 = none); voxel sizes come from the affine")
        form.addRow("smoothing σ", self.sigma_spin)
        self.scale_combo = combo(pp.SCALES, d.scale,
                                 "none | ÷ max|r| | ÷ a percentile of |r| | ÷ a fixed value (compare subjects)")
        self.percentile_spin = spin(0.01, 100.0, 3, d.percentile, 0.01)
        self.scale_value_spin = spin(1e-12, 1e12, 6, d.scale_value)
        self.clip_check = QCheckBox("clip to [-1, 1]")
        self.clip_check.setChecked(d.clip)
        # one or two controls per row: the dock stays narrow (it shares a laptop screen with the canvas)
        form.addRow("scale", self.scale_combo)
        row = QHBoxLayout()
        for w in (self.percentile_spin, self.scale_value_spin, self.clip_check):
            row.addWidget(w)
        form.addRow("", row)
        self.filter_combo = combo(pp.FILTERS, d.filter, "fraction-pass / fraction-clamp on r / max|r| (range α1..α2)")
        self.alpha_slider = QLabeledDoubleRangeSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(0.0, 1.0)
        self.alpha_slider.setDecimals(2)
        self.alpha_slider.setValue(tuple(d.alpha))
        self.alpha_slider.setToolTip("filter range [α1, α2] as fractions of max|r|")
        self.alpha_slider.setEdgeLabelMode(self.alpha_slider.EdgeLabelMode.LabelIsValue)
        self.alpha_slider.setHandleLabelPosition(self.alpha_slider.LabelPosition.NoLabel)
        form.addRow("filter", self.filter_combo)
        form.addRow("α range", self.alpha_slider)
        self.sign_combo = combo(pp.SIGNS, d.sign)
        form.addRow("sign", self.sign_combo)

        for w in (self.sigma_spin, self.percentile_spin, self.scale_value_spin):
            w.valueChanged.connect(self.moved)
        for w in (self.scale_combo, self.filter_combo, self.sign_combo):
            w.currentTextChanged.connect(self.changed)
        self.clip_check.toggled.connect(self.changed)
        self.alpha_slider.valueChanged.connect(self.changed)
        self.scale_combo.currentTextChanged.connect(self.sync)
        self.filter_combo.currentTextChanged.connect(self.sync)
        self.sync()

    def values(self) -> dict:
        """This group's part of :class:`~napari_xai.core.postprocess.PostParams`."""
        return dict(
            sigma_mm=self.sigma_spin.value(),
            scale=self.scale_combo.currentText(),
            percentile=self.percentile_spin.value(),
            scale_value=self.scale_value_spin.value(),
            clip=self.clip_check.isChecked(),
            filter=self.filter_combo.currentText(),
            alpha=tuple(float(a) for a in self.alpha_slider.value()),
            sign=self.sign_combo.currentText(),
        )

    def set_values(self, p: pp.PostParams) -> None:
        """Set every control silently (the caller schedules one update)."""
        widgets = [getattr(self, f) for f in self.FIELDS]
        for w in widgets:
            w.blockSignals(True)
        try:
            self.sigma_spin.setValue(p.sigma_mm)
            self.scale_combo.setCurrentText(p.scale)
            self.percentile_spin.setValue(p.percentile)
            self.scale_value_spin.setValue(p.scale_value)
            self.clip_check.setChecked(p.clip)
            self.filter_combo.setCurrentText(p.filter)
            self.alpha_slider.setValue(tuple(p.alpha))
            self.sign_combo.setCurrentText(p.sign)
        finally:
            for w in widgets:
                w.blockSignals(False)
        self.sync()

    def sync(self, *_) -> None:
        """Show the scale's own field and enable α only with a filter."""
        mode = self.scale_combo.currentText()
        self.percentile_spin.setVisible(mode == "percentile")
        self.scale_value_spin.setVisible(mode == "fixed")
        self.alpha_slider.setEnabled(self.filter_combo.currentText() != "none")
