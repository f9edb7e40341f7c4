"""The "threshold · clusters" group: the threshold slider, connectivity and the cluster-size slider.

The cluster-size slider is logarithmic (0..:data:`SIZE_SLIDER_STEPS` → 0..the largest cluster) and drives the
exact spin box beside it; the unit (voxels or mm³) converts the value in place.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QFormLayout, QGroupBox, QHBoxLayout, QLabel, QSlider
from superqt import QLabeledDoubleSlider

from ...core import postprocess as pp
from ...core.geometry import voxel_volume_mm3
from .filter_box import combo, spin

SIZE_SLIDER_STEPS = 1000


class ClusterBox(QGroupBox):
    """Controls of the threshold and cluster-size stages."""

    changed = Signal()  # schedule an update
    moved = Signal()  # a slider or spin box moved (leading-edge update)
    FIELDS = ("threshold_slider", "connectivity_combo", "size_slider", "min_size_spin", "size_unit_combo")

    def __init__(self, defaults: pp.PostParams, parent=None):
        super().__init__("threshold · clusters", parent)
        d = defaults
        self._affine = np.eye(4)
        self._largest = None  # voxels of the largest cluster at the threshold (the slider's top)
        form = QFormLayout(self)
        self.threshold_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setDecimals(4)
        self.threshold_slider.setRange(0.0, 1.0)
        self.threshold_slider.setValue(d.threshold)
        self.threshold_slider.setToolTip("keep voxels with |r| > threshold (units of the scaled map)")
        form.addRow("threshold |r| >", self.threshold_slider)
        self.connectivity_combo = combo(pp.CONNECTIVITIES, d.connectivity,
                                        "6: faces, 18: faces+edges, 26: faces+edges+corners")
        form.addRow("connectivity", self.connectivity_combo)
        self.size_slider = QSlider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(0, SIZE_SLIDER_STEPS)
        self.size_slider.setToolTip("minimum cluster size (logarithmic slider)")
        self.min_size_spin = spin(0.0, 1e9, 1, d.min_size)
        self.min_size_spin.setMinimumWidth(90)  # its 1e9 maximum would ask for ~160 px
        self.size_unit_combo = combo(["voxels", "mm3"], d.size_unit)
        form.addRow("min cluster size", self.size_slider)
        row = QHBoxLayout()
        row.addWidget(self.min_size_spin)
        row.addWidget(self.size_unit_combo)
        form.addRow("", row)
        self.size_readout = QLabel("")
        self.size_readout.setWordWrap(True)
        form.addRow("", self.size_readout)

        self.threshold_slider.valueChanged.connect(self.moved)
        self.min_size_spin.valueChanged.connect(self.moved)
        self.min_size_spin.valueChanged.connect(self.sync_size_slider)
        self.size_slider.valueChanged.connect(self._on_size_slider)
        self.connectivity_combo.currentTextChanged.connect(self.changed)
        self.size_unit_combo.currentTextChanged.connect(self._on_unit_changed)

    # -- parameters ---------------------------------------------------------------------
    def values(self) -> dict:
        return dict(
            threshold=float(self.threshold_slider.value()),
            min_size=self.min_size_spin.value(),
            size_unit=self.size_unit_combo.currentText(),
            connectivity=int(self.connectivity_combo.currentText()),
        )

    def set_values(self, p: pp.PostParams) -> None:
        """Set every control silently (the caller schedules one update)."""
        widgets = [getattr(self, f) for f in self.FIELDS]
        for w in widgets:
            w.blockSignals(True)
        try:
            if p.threshold > self.threshold_slider.maximum():
                self.threshold_slider.setMaximum(p.threshold)
            self.threshold_slider.setValue(p.threshold)
            self.size_unit_combo.setCurrentText(p.size_unit)
            self.min_size_spin.setValue(p.min_size)
            self.connectivity_combo.setCurrentText(str(p.connectivity))
        finally:
            for w in widgets:
                w.blockSignals(False)
        self.sync_size_slider()

    def set_affine(self, affine: np.ndarray) -> None:
        self._affine = affine

    def follow_result(self, res: pp.PostResult) -> None:
        """Slider ranges follow the data (silently): threshold up to max|r|, sizes up to the largest cluster."""
        top = max(res.max_abs, 1e-12)
        # enough decimals for maps in any unit (raw gradients can be ~1e-6)
        self.threshold_slider.setDecimals(int(min(12, max(4, 3 - math.floor(math.log10(top))))))
        self.threshold_slider.blockSignals(True)
        wanted = float(self.threshold_slider.value())  # the user may have dragged on while this was computed
        self.threshold_slider.setRange(0.0, max(top, res.params.threshold))
        self.threshold_slider.setValue(min(wanted, max(top, res.params.threshold)))
        self.threshold_slider.blockSignals(False)
        self._largest = float(res.sizes_all[0]) if res.sizes_all.size else None
        self.sync_size_slider()

    def forget_result(self) -> None:
        self._largest = None

    # -- the logarithmic size slider <-> the exact spin box ----------------------------
    def _size_max(self) -> float:
        if self._largest is None:
            top = 1000.0
        else:
            top = self._largest
            if self.size_unit_combo.currentText() == "mm3":
                top *= voxel_volume_mm3(self._affine)
        return max(top, self.min_size_spin.value(), 1.0)

    def _on_size_slider(self, pos: int) -> None:
        top = self._size_max()
        value = math.expm1(pos / SIZE_SLIDER_STEPS * math.log1p(top))
        value = round(value) if self.size_unit_combo.currentText() == "voxels" else round(value, 1)
        self.min_size_spin.blockSignals(True)
        self.min_size_spin.setValue(value)
        self.min_size_spin.blockSignals(False)
        self.update_size_readout()
        self.moved.emit()

    def sync_size_slider(self, *_) -> None:
        top = self._size_max()
        pos = int(round(math.log1p(self.min_size_spin.value()) / math.log1p(top) * SIZE_SLIDER_STEPS))
        self.size_slider.blockSignals(True)
        self.size_slider.setValue(min(pos, SIZE_SLIDER_STEPS))
        self.size_slider.blockSignals(False)
        self.update_size_readout()

    def _on_unit_changed(self, unit: str) -> None:
        vv = voxel_volume_mm3(self._affine)
        value = self.min_size_spin.value()
        new = value * vv if unit == "mm3" else value / vv
        self.min_size_spin.blockSignals(True)
        self.min_size_spin.setValue(round(new, 1))
        self.min_size_spin.blockSignals(False)
        self.sync_size_slider()
        self.changed.emit()

    def update_size_readout(self) -> None:
        vv = voxel_volume_mm3(self._affine)
        v = self.min_size_spin.value()
        vox = v if self.size_unit_combo.currentText() == "voxels" else v / vv
        self.size_readout.setText(f"≥ {vox:.1f} voxels = {vox * vv:.1f} mm³")
        self.size_readout.setToolTip(f"one voxel is {vv:.4g} mm³")
