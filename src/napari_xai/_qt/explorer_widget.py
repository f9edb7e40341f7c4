"""Relevance explorer dock widget: filters, threshold and cluster-size sliders with live layers.

Thin by design: every number comes from :class:`napari_xai.core.explorer.Explorer`.
The widget only

* reads its controls into a :class:`~napari_xai.core.postprocess.PostParams`,
* asks the explorer for a result -- on the GUI thread when only the cluster-size
  step must run (a few ms), otherwise in one napari ``thread_worker`` --,
* puts the result into two layers ("filtered relevance", "clusters") that it
  updates in place, and into plots, a table and labels;
* with an atlas loaded in the atlas widget (:mod:`napari_xai._qt.atlas_widget`),
  adds the region at each cluster's peak and the regions it overlaps
  (:func:`napari_xai.core.atlas.cluster_region_columns`) to the table, and the
  region under the cursor to the readout.

Layers are touched only on the GUI thread (in the worker's ``returned``
callback). Slider events are throttled: the first step of a drag starts at once,
at most one computation runs, and when
it ends the widget computes the *latest* control state once, so dragging never
queues stale work.
"""

from __future__ import annotations

import logging
import math
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QTableView,
    QVBoxLayout,
    QWidget,
)
from superqt import QLabeledDoubleRangeSlider, QLabeledDoubleSlider

from .._layers import CLUSTERS_STYLE, FILTERED_STYLE
from ..core import atlas as at
from ..core import postprocess as pp
from ..core.geometry import voxel_volume_mm3
from ..core.errors import UserError
from ..core.explorer import Explorer, source_provenance
from ._layout import compact, scroll_body
from ..core.geometry import layer_affine  # the one layer -> affine
from .atlas_widget import atlas_grid_for_viewer, atlas_widget_for_viewer

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger(__name__)

FILTERED_NAME = "filtered relevance"
NO_RELEVANCE_HINT = ("No relevance map yet: run Plugins › napari-xai › Explain, or open a relevance NIfTI with its "
                     ".xai.json sidecar (tick 'any image' for a map without one).")
CROP_MARGIN = 6  # voxels around the clusters' box in a new crop, so small changes keep the box (and the affine)
CROP_SLACK = 8  # a crop is kept while at most this many times the volume it needs
CROP_KEY = "xai_crop"  # metadata of a cropped explorer layer: {"offset": ijk, "shape": full shape, "affine": full}
CLUSTERS_NAME = "clusters"
THROTTLE_MS = 30
SIZE_SLIDER_STEPS = 1000
SYNC_STAGES = {"size"}  # stages cheap enough for the GUI thread
REGIONS_DELAY_MS = 120  # atlas columns are filled in once the sliders rest (≈ 40 ms at 2 mm, 0.3 s at 1 mm)
BG = "#262930"
FG = "#d6d6d6"


# ---------------------------------------------------------------------------
# helpers (no layer access)
# ---------------------------------------------------------------------------


def relevance_colormap():
    """Diverging colormap that is transparent at zero (centre of symmetric limits).

    Negative relevance is blue-cyan, positive red-yellow; alpha grows with |r|,
    so a 3D view shows the clusters instead of an opaque box.
    """
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=[
            [0.2, 0.9, 1.0, 1.0],
            [0.0, 0.35, 1.0, 0.75],
            [0.0, 0.2, 0.9, 0.0],
            [0.9, 0.15, 0.0, 0.0],
            [1.0, 0.35, 0.0, 0.75],
            [1.0, 1.0, 0.2, 1.0],
        ],
        controls=[0.0, 0.3, 0.499, 0.501, 0.7, 1.0],
        name="xai signed (transparent zero)",
    )


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


def axis_names(affine: np.ndarray) -> list[str]:
    """Axis labels such as 'i (L→R)' from the affine's orientation."""
    try:
        import nibabel as nib

        codes = nib.orientations.aff2axcodes(affine)
    except Exception:  # pragma: no cover - degenerate affine
        return ["axis 0", "axis 1", "axis 2"]
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    return [f"axis {i} ({opposite.get(c, '?')}→{c})" for i, c in enumerate(codes)]


# ---------------------------------------------------------------------------
# the cluster table model (reads the result's arrays lazily)
# ---------------------------------------------------------------------------

COLUMNS = [
    ("id", lambda t, i: int(t.id[i]), "{}"),
    ("sign", lambda t, i: pp.SIGN_NAMES[int(t.sign[i])], "{}"),
    ("voxels", lambda t, i: int(t.voxels[i]), "{}"),
    ("mm³", lambda t, i: float(t.mm3[i]), "{:.1f}"),
    ("sum", lambda t, i: float(t.sum[i]), "{:.4g}"),
    ("mean", lambda t, i: float(t.mean[i]), "{:.4g}"),
    ("peak", lambda t, i: float(t.peak[i]), "{:.4g}"),
    ("peak x", lambda t, i: float(t.peak_mm[i, 0]), "{:.1f}"),
    ("peak y", lambda t, i: float(t.peak_mm[i, 1]), "{:.1f}"),
    ("peak z", lambda t, i: float(t.peak_mm[i, 2]), "{:.1f}"),
    ("centroid x", lambda t, i: float(t.centroid_mm[i, 0]), "{:.1f}"),
    ("centroid y", lambda t, i: float(t.centroid_mm[i, 1]), "{:.1f}"),
    ("centroid z", lambda t, i: float(t.centroid_mm[i, 2]), "{:.1f}"),
]
# atlas columns (text, empty without an atlas): (header, key of ``atlas.cluster_region_columns``)
REGION_COLUMNS = [("peak region", "peak_region"), ("regions", "regions")]


class ClusterTableModel(QAbstractTableModel):
    """Qt model over a :class:`~napari_xai.core.postprocess.ClusterTable`; sorts by raw values."""

    SORT_ROLE = Qt.ItemDataRole.UserRole

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table = pp.empty_table()
        self.regions: dict[str, list[str]] | None = None

    def set_table(self, table: pp.ClusterTable, regions: dict[str, list[str]] | None = None) -> None:
        self.beginResetModel()
        self.table = table
        self.regions = regions
        self.endResetModel()

    def set_regions(self, regions: dict[str, list[str]] | None) -> None:
        """Fill the atlas columns (lists in table order), or empty them (None)."""
        self.regions = regions
        if len(self.table):
            first = self.index(0, len(COLUMNS))
            last = self.index(len(self.table) - 1, len(COLUMNS) + len(REGION_COLUMNS) - 1)
            self.dataChanged.emit(first, last)

    def region_text(self, row: int, key: str) -> str:
        col = (self.regions or {}).get(key)
        return col[row] if col is not None and row < len(col) else ""

    def rowCount(self, parent=QModelIndex()):  # noqa: N802 (Qt API)
        return 0 if parent.isValid() else len(self.table)

    def columnCount(self, parent=QModelIndex()):  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS) + len(REGION_COLUMNS)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        if index.column() >= len(COLUMNS):
            text = self.region_text(index.row(), REGION_COLUMNS[index.column() - len(COLUMNS)][1])
            if role in (Qt.ItemDataRole.DisplayRole, self.SORT_ROLE, Qt.ItemDataRole.ToolTipRole):
                return text
            return None
        _, get, fmt = COLUMNS[index.column()]
        value = get(self.table, index.row())
        if role == Qt.ItemDataRole.DisplayRole:
            return fmt.format(value)
        if role == self.SORT_ROLE:
            return value
        if role == Qt.ItemDataRole.TextAlignmentRole and index.column() != 1:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            if section >= len(COLUMNS):
                return REGION_COLUMNS[section - len(COLUMNS)][0]
            name = COLUMNS[section][0]
            return name + (" (mm)" if name.startswith(("peak ", "centroid")) else "")
        return None


# ---------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------


def _canvas(width: float, height: float, rows: int = 1):
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90, facecolor=BG)
    axes = [fig.add_subplot(rows, 1, r + 1) for r in range(rows)]
    fig.subplots_adjust(left=0.16, right=0.98, bottom=0.22 if rows == 1 else 0.06, top=0.86 if rows == 1 else 0.93,
                        hspace=0.35)
    for ax in axes:
        _style(ax)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    canvas.setFixedHeight(int(height * 90))
    return canvas, axes


def _style(ax) -> None:
    ax.set_facecolor(BG)
    ax.tick_params(colors=FG, labelsize=7)
    for side in ax.spines.values():
        side.set_color("#6a6a6a")
    ax.title.set_color(FG)
    ax.xaxis.label.set_color(FG)
    ax.yaxis.label.set_color(FG)


# ---------------------------------------------------------------------------
# the widget
# ---------------------------------------------------------------------------


class ExplorerWidget(QWidget):
    """Dock widget: post-process a relevance layer into live "filtered relevance" and "clusters" layers."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._explorer: Explorer | None = None
        self._source_layer = None
        self._affine = np.eye(4)
        self._result: pp.PostResult | None = None
        self._worker = None
        self._layers: dict[str, Any] = {}
        self._crop_boxes: dict[str, tuple] = {}  # kind -> (crop box, full shape) of the cropped layers
        self._error: str = ""
        self._attempted: pp.PostParams | None = None
        self._slice_lines: list = []
        self._stale: set = set()
        self._filtered_key: tuple | None = None
        self._hist_key: tuple | None = None
        self._hist_line = self._hist_title = None
        self._slices_key = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(THROTTLE_MS)
        self._timer.timeout.connect(self._run)
        # atlas (see the "atlas" section): the viewer's atlas, and it resampled onto the result's grid
        self._atlas_base = None
        self._atlas_grid: at.AtlasOnGrid | None = None
        self._atlas_widget_ref = None
        self._atlas_message = ""
        self._region_cache: dict[int, tuple[str, str]] = {}  # cluster id -> (peak region, regions)
        self._region_cache_key: tuple | None = None  # (labelling's histogram, grid) the cache is for
        self._region_columns_sized = False
        self._regions_timer = QTimer(self)
        self._regions_timer.setSingleShot(True)
        self._regions_timer.setInterval(REGIONS_DELAY_MS)
        self._regions_timer.timeout.connect(self._compute_regions)
        self._build()
        self._connect_viewer()
        self.refresh_layers()

    # -- construction ------------------------------------------------------------
    def _build(self) -> None:
        d = pp.PostParams()
        root = QVBoxLayout(scroll_body(self))  # the form scrolls: the dock fits a laptop screen
        root.setContentsMargins(4, 4, 4, 4)

        src = QHBoxLayout()
        src.addWidget(QLabel("relevance"))
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("the relevance layer to explore (the newest one is chosen when it appears)")
        self.layer_combo.currentTextChanged.connect(self._on_layer_chosen)
        src.addWidget(self.layer_combo, 1)
        self.any_image_check = QCheckBox("any image")
        self.any_image_check.setToolTip("also offer image layers without a relevance record "
                                        "(e.g. a map made by another tool)")
        self.any_image_check.toggled.connect(self.refresh_layers)
        src.addWidget(self.any_image_check)
        root.addLayout(src)
        self.hint_label = QLabel(NO_RELEVANCE_HINT)
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet("color: #f0c060;")
        root.addWidget(self.hint_label)

        box = QGroupBox("smooth · scale · filter")
        form = QFormLayout(box)
        self.sigma_spin = QDoubleSpinBox(minimum=0.0, maximum=50.0, singleStep=0.5, decimals=2, suffix=" mm")
        self.sigma_spin.setValue(d.sigma_mm)
        self.sigma_spin.setKeyboardTracking(False)
        self.sigma_spin.setToolTip("Gaussian smoothing sigma in mm (0 = none); voxel sizes come from the affine")
        form.addRow("smoothing σ", self.sigma_spin)
        self.scale_combo = QComboBox()
        self.scale_combo.addItems(pp.SCALES)
        self.scale_combo.setCurrentText(d.scale)
        self.scale_combo.setToolTip("none | ÷ max|r| | ÷ a percentile of |r| | ÷ a fixed value (compare subjects)")
        self.percentile_spin = QDoubleSpinBox(minimum=0.01, maximum=100.0, decimals=3, singleStep=0.01)
        self.percentile_spin.setValue(d.percentile)
        self.percentile_spin.setKeyboardTracking(False)
        self.scale_value_spin = QDoubleSpinBox(minimum=1e-12, maximum=1e12, decimals=6)
        self.scale_value_spin.setValue(d.scale_value)
        self.scale_value_spin.setKeyboardTracking(False)
        self.clip_check = QCheckBox("clip to [-1, 1]")
        self.clip_check.setChecked(d.clip)
        # one or two controls per row: the dock stays narrow (it shares a laptop screen with the canvas)
        form.addRow("scale", self.scale_combo)
        row = QHBoxLayout()
        row.addWidget(self.percentile_spin)
        row.addWidget(self.scale_value_spin)
        row.addWidget(self.clip_check)
        form.addRow("", row)
        self.filter_combo = QComboBox()
        self.filter_combo.addItems(pp.FILTERS)
        self.filter_combo.setCurrentText(d.filter)
        self.filter_combo.setToolTip("fraction-pass / fraction-clamp on r / max|r| (range α1..α2)")
        self.alpha_slider = QLabeledDoubleRangeSlider(Qt.Orientation.Horizontal)
        self.alpha_slider.setRange(0.0, 1.0)
        self.alpha_slider.setDecimals(2)
        self.alpha_slider.setValue(tuple(d.alpha))
        self.alpha_slider.setToolTip("filter range [α1, α2] as fractions of max|r|")
        self.alpha_slider.setEdgeLabelMode(self.alpha_slider.EdgeLabelMode.LabelIsValue)
        self.alpha_slider.setHandleLabelPosition(self.alpha_slider.LabelPosition.NoLabel)
        form.addRow("filter", self.filter_combo)
        form.addRow("α range", self.alpha_slider)
        self.sign_combo = QComboBox()
        self.sign_combo.addItems(pp.SIGNS)
        self.sign_combo.setCurrentText(d.sign)
        form.addRow("sign", self.sign_combo)
        root.addWidget(box)

        box = QGroupBox("threshold · clusters")
        form = QFormLayout(box)
        self.threshold_slider = QLabeledDoubleSlider(Qt.Orientation.Horizontal)
        self.threshold_slider.setDecimals(4)
        self.threshold_slider.setRange(0.0, 1.0)
        self.threshold_slider.setValue(d.threshold)
        self.threshold_slider.setToolTip("keep voxels with |r| > threshold (units of the scaled map)")
        form.addRow("threshold |r| >", self.threshold_slider)
        self.connectivity_combo = QComboBox()
        self.connectivity_combo.addItems([str(c) for c in pp.CONNECTIVITIES])
        self.connectivity_combo.setCurrentText(str(d.connectivity))
        self.connectivity_combo.setToolTip("6: faces, 18: faces+edges, 26: faces+edges+corners")
        form.addRow("connectivity", self.connectivity_combo)
        self.size_slider = QSlider(Qt.Orientation.Horizontal)
        self.size_slider.setRange(0, SIZE_SLIDER_STEPS)
        self.size_slider.setToolTip("minimum cluster size (logarithmic slider)")
        self.min_size_spin = QDoubleSpinBox(minimum=0.0, maximum=1e9, decimals=1)
        self.min_size_spin.setValue(d.min_size)
        self.min_size_spin.setKeyboardTracking(False)
        self.min_size_spin.setMinimumWidth(90)  # its 1e9 maximum would ask for ~160 px
        self.size_unit_combo = QComboBox()
        self.size_unit_combo.addItems(["voxels", "mm3"])
        self.size_unit_combo.setCurrentText(d.size_unit)
        form.addRow("min cluster size", self.size_slider)
        row = QHBoxLayout()
        row.addWidget(self.min_size_spin)
        row.addWidget(self.size_unit_combo)
        form.addRow("", row)
        self.size_readout = QLabel("")
        self.size_readout.setWordWrap(True)
        form.addRow("", self.size_readout)
        root.addWidget(box)

        self.hist_canvas, (self.hist_ax,) = _canvas(4.2, 1.7)
        root.addWidget(self.hist_canvas)
        self.slice_canvas, self.slice_axes = _canvas(4.2, 3.3, rows=3)
        root.addWidget(self.slice_canvas)

        self.cursor_label = QLabel("cluster under cursor: –")
        self.cursor_label.setWordWrap(True)
        root.addWidget(self.cursor_label)

        self.table_model = ClusterTableModel(self)
        self.table_proxy = QSortFilterProxyModel(self)
        self.table_proxy.setSourceModel(self.table_model)
        self.table_proxy.setSortRole(ClusterTableModel.SORT_ROLE)
        self.table_view = QTableView()
        self.table_view.setModel(self.table_proxy)
        self.table_view.setSortingEnabled(True)
        self.table_view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.table_view.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.table_view.setSelectionMode(QTableView.SelectionMode.SingleSelection)
        self.table_view.verticalHeader().setVisible(False)
        self.table_view.setWordWrap(False)  # one line per cluster; long region lists are elided (tooltip: all)
        self.table_view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.table_view.horizontalHeader().setResizeContentsPrecision(50)  # look at 50 rows, not thousands
        for k in range(len(REGION_COLUMNS)):  # shown after "sign" (visual order only; the CSV appends them)
            self.table_view.horizontalHeader().moveSection(len(COLUMNS) + k, 2 + k)
        self._columns_sized = False
        self.table_view.setMinimumHeight(140)
        self.table_view.clicked.connect(self._on_row_clicked)
        root.addWidget(self.table_view, 1)

        opts = QVBoxLayout()
        self.mask_check = QCheckBox("relevance only in clusters")
        self.mask_check.setChecked(True)
        self.mask_check.setToolTip("show (and save) the filtered relevance only inside the kept clusters")
        self.highlight_check = QCheckBox("show only the selected cluster")
        opts.addWidget(self.mask_check)
        opts.addWidget(self.highlight_check)
        root.addLayout(opts)

        bottom = QHBoxLayout()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        bottom.addWidget(self.status_label, 1)
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("write clusters + filtered relevance (NIfTI) and the table (CSV), each with a JSON sidecar")
        self.save_button.clicked.connect(self._on_save_clicked)
        bottom.addWidget(self.save_button)
        root.addLayout(bottom)
        self.message_label = QLabel("")
        self.message_label.setWordWrap(True)
        self.message_label.setStyleSheet("color: #f0c060;")
        root.addWidget(self.message_label)

        # any control change -> throttled update
        for w in (self.sigma_spin, self.percentile_spin, self.scale_value_spin, self.min_size_spin):
            w.valueChanged.connect(self._on_control)
        for w in (self.scale_combo, self.filter_combo, self.sign_combo, self.connectivity_combo):
            w.currentTextChanged.connect(self._schedule)
        self.scale_combo.currentTextChanged.connect(self._sync_scale_widgets)
        self.filter_combo.currentTextChanged.connect(self._sync_filter_widgets)
        self.clip_check.toggled.connect(self._schedule)
        self.alpha_slider.valueChanged.connect(self._schedule)
        self.threshold_slider.valueChanged.connect(self._on_control)
        self.size_slider.valueChanged.connect(self._on_size_slider)
        self.min_size_spin.valueChanged.connect(self._sync_size_slider)
        self.size_unit_combo.currentTextChanged.connect(self._on_unit_changed)
        self.mask_check.toggled.connect(self._show_filtered)
        self.highlight_check.toggled.connect(self._on_highlight_toggled)
        self._sync_scale_widgets()
        self._sync_filter_widgets()
        compact(self)

    def _connect_viewer(self) -> None:
        v = self.viewer
        v.layers.events.inserted.connect(self.refresh_layers)
        v.layers.events.removed.connect(self.refresh_layers)
        v.dims.events.current_step.connect(self._update_slice_markers)
        v.cursor.events.position.connect(self._update_cursor_stats)
        self._follow_atlas_widget()

    def _disconnect_viewer(self) -> None:
        v = self.viewer
        for emitter, cb in (
            (v.layers.events.inserted, self.refresh_layers),
            (v.layers.events.removed, self.refresh_layers),
            (v.dims.events.current_step, self._update_slice_markers),
            (v.cursor.events.position, self._update_cursor_stats),
        ):
            try:
                emitter.disconnect(cb)
            except Exception:  # pragma: no cover - already gone
                pass
        w = self._atlas_widget_ref() if self._atlas_widget_ref is not None else None
        if w is not None:
            try:
                w.atlas_changed.disconnect(self._on_atlas_changed)
            except (TypeError, RuntimeError):  # pragma: no cover - already gone
                pass
        self._regions_timer.stop()

    def closeEvent(self, event):  # noqa: N802 (Qt API)
        self._disconnect_viewer()
        super().closeEvent(event)

    # -- source --------------------------------------------------------------------
    def _candidate_layers(self) -> list:
        """Relevance layers (one per map: the (+)/(−) pair share one), or every 3D image with "any image"."""
        from napari.layers import Image

        from .._layers import is_relevance_layer

        mine = [ly for ly in self._layers.values() if ly is not None]
        out, seen = [], set()
        for ly in self.viewer.layers:
            if not isinstance(ly, Image) or ly.name == FILTERED_NAME or any(ly == m for m in mine) \
                    or ly.ndim not in (3, 4) or getattr(ly, "rgb", False):
                continue
            if not is_relevance_layer(ly):
                if self.any_image_check.isChecked():
                    out.append(ly)
                continue
            signed = (ly.metadata or {}).get("xai_relevance")
            key = id(signed) if signed is not None else id(ly)
            if key not in seen:
                seen.add(key)
                out.append(ly)
        return out

    def refresh_layers(self, event=None) -> None:
        """Refill the relevance picker; a relevance layer just added becomes the one explored."""
        candidates = self._candidate_layers()
        names = [ly.name for ly in candidates]
        current = self.layer_combo.currentText()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        self.hint_label.setVisible(not names)
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        newest = next((ly for ly in candidates if added is not None and ly == added), None)
        if self._source_layer is not None and self._source_layer not in self.viewer.layers:
            self._drop_source()
        if newest is not None and not (self._source_layer is not None and newest == self._source_layer):
            self.layer_combo.setCurrentText(newest.name)
            self._on_layer_chosen(newest.name)
        elif names and (self._source_layer is None or self._source_layer.name not in names):
            self.layer_combo.setCurrentText(names[-1])  # the newest relevance map
            self._on_layer_chosen(self.layer_combo.currentText())
        if self._result is not None:
            self._sync_atlas()  # an atlas widget adds its outline layers when it loads an atlas

    def _drop_source(self) -> None:
        """The explored layer was deleted: forget it and its result (the output layers go their own way)."""
        self._explorer = None
        self._source_layer = None
        self._result = None
        self._attempted = None
        self._timer.stop()
        self.table_model.set_table(pp.empty_table(), None)
        self.status_label.setText("")
        self.message_label.setText("")
        self.cursor_label.setText("cluster under cursor: –")

    def _on_layer_chosen(self, name: str) -> None:
        if not name or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        if self._source_layer is not None and layer == self._source_layer:
            return
        try:
            self.set_source(layer)
        except UserError as exc:
            self._show_error(str(exc))

    def set_source(self, layer) -> None:
        """Explore ``layer`` (an Image layer with a 3D relevance map)."""
        import warnings

        from ..core.errors import XaiWarning

        data = layer_relevance(layer)
        affine = layer_affine(layer)
        md = layer.metadata or {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", XaiWarning)  # shown in the widget's messages instead
            self._explorer = Explorer(data, affine, provenance=source_provenance(md.get("provenance")), name=layer.name)
        self._source_layer = layer
        self._affine = affine
        self._result = None
        self._attempted = None
        self._axis_names = axis_names(affine)
        if self.layer_combo.currentText() != layer.name:
            self.layer_combo.blockSignals(True)
            self.layer_combo.setCurrentText(layer.name)
            self.layer_combo.blockSignals(False)
        self._schedule()

    # -- parameters ----------------------------------------------------------------
    def params(self) -> pp.PostParams:
        """The controls' current parameters (not validated)."""
        return pp.PostParams(
            sigma_mm=self.sigma_spin.value(),
            scale=self.scale_combo.currentText(),
            percentile=self.percentile_spin.value(),
            scale_value=self.scale_value_spin.value(),
            clip=self.clip_check.isChecked(),
            filter=self.filter_combo.currentText(),
            alpha=tuple(float(a) for a in self.alpha_slider.value()),
            sign=self.sign_combo.currentText(),
            threshold=float(self.threshold_slider.value()),
            min_size=self.min_size_spin.value(),
            size_unit=self.size_unit_combo.currentText(),
            connectivity=int(self.connectivity_combo.currentText()),
        )

    def set_params(self, params: pp.PostParams) -> None:
        """Set every control (e.g. from a sidecar) and update once."""
        p = params.validated()
        widgets = (self.sigma_spin, self.scale_combo, self.percentile_spin, self.scale_value_spin, self.clip_check,
                   self.filter_combo, self.alpha_slider, self.sign_combo, self.threshold_slider, self.min_size_spin,
                   self.size_unit_combo, self.connectivity_combo, self.size_slider)
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
            if p.threshold > self.threshold_slider.maximum():
                self.threshold_slider.setMaximum(p.threshold)
            self.threshold_slider.setValue(p.threshold)
            self.size_unit_combo.setCurrentText(p.size_unit)
            self.min_size_spin.setValue(p.min_size)
            self.connectivity_combo.setCurrentText(str(p.connectivity))
        finally:
            for w in widgets:
                w.blockSignals(False)
        self._sync_scale_widgets()
        self._sync_filter_widgets()
        self._sync_size_slider()
        self._schedule()

    def _sync_scale_widgets(self, *_):
        mode = self.scale_combo.currentText()
        self.percentile_spin.setVisible(mode == "percentile")
        self.scale_value_spin.setVisible(mode == "fixed")

    def _sync_filter_widgets(self, *_):
        self.alpha_slider.setEnabled(self.filter_combo.currentText() != "none")

    # -- the logarithmic size slider <-> the exact spin box ----------------------------
    def _size_max(self) -> float:
        if self._result is None or self._result.sizes_all.size == 0:
            top = 1000.0
        else:
            top = float(self._result.sizes_all[0])
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
        self._update_size_readout()
        self._on_control()

    def _sync_size_slider(self, *_):
        top = self._size_max()
        pos = int(round(math.log1p(self.min_size_spin.value()) / math.log1p(top) * SIZE_SLIDER_STEPS))
        self.size_slider.blockSignals(True)
        self.size_slider.setValue(min(pos, SIZE_SLIDER_STEPS))
        self.size_slider.blockSignals(False)
        self._update_size_readout()

    def _on_unit_changed(self, unit: str) -> None:
        vv = voxel_volume_mm3(self._affine)
        value = self.min_size_spin.value()
        new = value * vv if unit == "mm3" else value / vv
        self.min_size_spin.blockSignals(True)
        self.min_size_spin.setValue(round(new, 1))
        self.min_size_spin.blockSignals(False)
        self._sync_size_slider()
        self._schedule()

    def _update_size_readout(self) -> None:
        vv = voxel_volume_mm3(self._affine)
        v = self.min_size_spin.value()
        vox = v if self.size_unit_combo.currentText() == "voxels" else v / vv
        self.size_readout.setText(f"≥ {vox:.1f} voxels = {vox * vv:.1f} mm³")
        self.size_readout.setToolTip(f"one voxel is {vv:.4g} mm³")

    # -- scheduling (throttled, latest-state-only) -------------------------------------
    @property
    def busy(self) -> bool:
        """True while a computation runs in a worker thread."""
        return self._worker is not None

    @property
    def result(self) -> pp.PostResult | None:
        """The result shown in the layers."""
        return self._result

    def _on_control(self, *_args) -> None:
        """A slider or spin box moved: when idle, start at once (the leading edge: no throttle delay before the
        first step of a drag); what follows within :data:`THROTTLE_MS` is coalesced as in :meth:`_schedule`."""
        if self._timer.isActive() or self._worker is not None or self._explorer is None:
            self._schedule()
            return
        self._timer.start()
        self._run()

    def _schedule(self, *_args) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _run(self) -> None:
        ex = self._explorer
        if ex is None or self._worker is not None:
            return  # a running worker re-checks the controls when it ends
        try:
            params = self.params().validated()
            stages = ex.stages_needed(params)
        except UserError as exc:
            self._attempted = self.params()
            self._show_error(str(exc))
            return
        self._attempted = params
        if not stages and self._result is not None and self._result.params == params:
            return
        if set(stages) <= SYNC_STAGES:
            try:
                res = ex.update(params)
            except UserError as exc:
                self._show_error(str(exc))
                return
            self._apply(res)
            return
        self._start_worker(ex, params)

    def _start_worker(self, ex: Explorer, params: pp.PostParams) -> None:
        from napari.qt.threading import create_worker

        self.status_label.setText("computing…")
        worker = create_worker(ex.update, params, _start_thread=False)
        worker.returned.connect(lambda res, ex=ex: self._on_worker_result(ex, res))
        worker.errored.connect(self._on_worker_error)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker
        worker.start()

    def _on_worker_result(self, ex: Explorer, res: pp.PostResult) -> None:
        if ex is self._explorer:
            self._apply(res)

    def _on_worker_error(self, exc: BaseException) -> None:
        if isinstance(exc, UserError):
            self._show_error(str(exc))
        else:
            log.error("explorer update failed", exc_info=exc)
            self._show_error(f"internal error: {type(exc).__name__}: {exc}")

    def _on_worker_finished(self) -> None:
        self._worker = None
        if self.status_label.text() == "computing…":
            self.status_label.setText(self._result.summary() if self._result else "")
        if self._explorer is not None and self._attempted != self._wanted():
            self._schedule()  # the controls moved while the worker ran: compute their latest state once

    def _wanted(self):
        try:
            return self.params().validated()
        except UserError:
            return self.params()

    @property
    def idle(self) -> bool:
        """True when nothing is running or pending and the controls' state has been computed (or refused)."""
        return (
            self._explorer is None
            or (not self._timer.isActive() and self._worker is None and self._attempted == self._wanted()
                and not self._regions_timer.isActive())
        )

    def wait(self, timeout_ms: int = 30000) -> None:
        """Process Qt events until :attr:`idle` (for scripts and tests)."""
        from qtpy.QtCore import QCoreApplication, QElapsedTimer

        clock = QElapsedTimer()
        clock.start()
        while clock.elapsed() < timeout_ms:
            QCoreApplication.processEvents()
            if self.idle:
                return
        raise TimeoutError("the explorer did not finish in time")

    # -- applying a result (GUI thread only) ---------------------------------------
    def _show_error(self, text: str) -> None:
        self._error = text
        self.message_label.setText(text)
        self.status_label.setText("")

    def _apply(self, res: pp.PostResult) -> None:
        self._result = res
        self._error = ""
        self._show_filtered()
        self._set_layer("labels", CLUSTERS_NAME, res.labels, crop=True)
        # slider ranges follow the data (without triggering updates)
        top = max(res.max_abs, 1e-12)
        # enough decimals for maps in any unit (raw gradients can be ~1e-6)
        self.threshold_slider.setDecimals(int(min(12, max(4, 3 - math.floor(math.log10(top))))))
        self.threshold_slider.blockSignals(True)
        wanted = float(self.threshold_slider.value())  # the user may have dragged on while this result was computed
        self.threshold_slider.setRange(0.0, max(top, res.params.threshold))
        self.threshold_slider.setValue(min(wanted, max(top, res.params.threshold)))
        self.threshold_slider.blockSignals(False)
        self._sync_size_slider()
        self._follow_atlas_widget()
        self._atlas_base = atlas_grid_for_viewer(self.viewer)
        self.table_model.set_table(res.table, self._regions_for(res))
        if not self._columns_sized and len(res.table):
            self.table_view.resizeColumnsToContents()
            self._columns_sized = True
        self._size_region_columns()
        self._draw_histogram()
        self._draw_slices()
        self._update_cursor_stats()
        self.status_label.setText(res.summary())
        self._show_messages()

    def _show_messages(self) -> None:
        res = self._result
        msgs = list(res.messages) if res is not None else []
        if self._atlas_message:
            msgs.append(self._atlas_message)
        self.message_label.setText("\n".join(msgs))

    def _show_filtered(self, *_):
        res = self._result
        if res is None:
            return
        masked = self.mask_check.isChecked()
        key = (id(res.filtered), id(res.labels) if masked else None)
        layer = self._layers.get("image")
        if key == self._filtered_key and layer is not None and layer in self.viewer.layers:
            return  # unchanged (e.g. a size step with the whole map shown)
        # the largest |r| shown: the clusters' peaks when masked, else the whole map's
        self._display_max = (float(np.abs(res.table.peak).max()) if len(res.table) else 0.0) if masked else res.max_abs
        # masked: only the clusters' box, masked there (never a full-size copy on the GUI thread)
        self._set_layer("image", FILTERED_NAME, res.filtered, crop=masked, mask=res.labels if masked else None)
        self._filtered_key = key

    def _set_layer(self, kind: str, name: str, data: np.ndarray, crop: bool = False,
                   mask: np.ndarray | None = None) -> None:
        """Put ``data`` into the layer; ``crop``: only the box around the clusters (``CROP_KEY`` in the metadata).

        The clusters and the masked filtered relevance are zero outside the clusters, and a 3D view casts rays
        through a layer's whole box: cropped, a 3D frame at 1 mm costs ~0.1 s per layer instead of seconds
        (``benchmarks/bench_gui.py``). The layer's affine places the crop; the writer pads it back.
        ``mask``: labels; ``data`` is shown only where they are non-zero.
        """
        from ..core.geometry import crop_box, cropped_affine

        full_shape = data.shape
        affine = self._affine
        if crop:
            box = self._stable_box(kind, crop_box(full_shape, self._result.box if self._result is not None else None),
                                   full_shape)
            data = (np.where(mask[box] > 0, data[box], np.float32(0)) if mask is not None
                    else np.ascontiguousarray(data[box]))
            affine = cropped_affine(self._affine, box)
        v = self.viewer
        layer = self._layers.get(kind)
        if layer is not None and layer not in v.layers:
            layer = None
        if layer is None and name in v.layers:
            cand = v.layers[name]
            if type(cand).__name__.lower() == kind:
                layer = cand
        if kind == "image":
            m = self._display_max
            limits = (-m, m) if m > 0 else (-1.0, 1.0)
            if layer is None:
                layer = v.add_image(
                    data, name=name, affine=affine, colormap=relevance_colormap(), contrast_limits=limits,
                    **FILTERED_STYLE,
                    metadata={"affine": self._affine},
                )
            else:
                layer.data = data
                layer.contrast_limits = limits
        else:
            if layer is None:
                layer = v.add_labels(data, name=name, affine=affine, **CLUSTERS_STYLE,
                                     metadata={"affine": affine})
            else:
                layer.data = data
        if not np.allclose(np.asarray(layer.affine.affine_matrix)[-4:, -4:], affine):
            layer.affine = affine
        meta = {k: val for k, val in (layer.metadata or {}).items() if k != CROP_KEY}
        if crop:
            meta[CROP_KEY] = {"offset": [int(s.start) for s in box], "shape": [int(n) for n in full_shape],
                              "affine": self._affine}
        layer.metadata = {**meta, "affine": affine, "provenance": self._provenance_record(kind)}
        self._layers[kind] = layer

    def _stable_box(self, kind: str, want: tuple, shape: tuple) -> tuple:
        """The crop box of a layer: the last one while it holds ``want`` and is not much larger, else ``want``
        widened by :data:`CROP_MARGIN` voxels. A new box means a new layer affine, which costs napari as much as
        the data itself; this way most slider steps only replace the data."""
        def volume(box):
            return int(np.prod([b.stop - b.start for b in box]))

        cur = self._crop_boxes.get(kind)
        if cur is not None and cur[1] == shape and volume(cur[0]) <= CROP_SLACK * max(volume(want), 4096) \
                and all(c.start <= w.start and w.stop <= c.stop for c, w in zip(cur[0], want)):
            return cur[0]
        box = tuple(slice(max(0, w.start - CROP_MARGIN), min(int(n), w.stop + CROP_MARGIN)) for w, n in zip(want, shape))
        self._crop_boxes[kind] = (box, shape)
        return box

    def _provenance_record(self, kind: str) -> dict:
        res = self._result
        return {
            "kind": "clusters" if kind == "labels" else "filtered_relevance",
            "postprocess": res.params.to_dict() if res else None,
            "source_layer": self._source_layer.name if self._source_layer is not None else None,
            "provenance": self._explorer.provenance if self._explorer else None,
        }

    # -- atlas: region columns and the region under the cursor (GUI thread) -------------
    def _follow_atlas_widget(self) -> None:
        """Follow the atlas widget's ``atlas_changed`` (it may be docked after the explorer: called lazily)."""
        w = atlas_widget_for_viewer(self.viewer)
        if w is None or (self._atlas_widget_ref is not None and self._atlas_widget_ref() is w):
            return
        w.atlas_changed.connect(self._on_atlas_changed)
        self._atlas_widget_ref = weakref.ref(w)  # weak: a closed atlas widget must be able to go away

    def _on_atlas_changed(self, *_args) -> None:
        self._sync_atlas(force=True)

    def _sync_atlas(self, force: bool = False) -> bool:
        """Refresh the region columns if the viewer's atlas changed; True if it did (or ``force``)."""
        self._follow_atlas_widget()
        base = atlas_grid_for_viewer(self.viewer)
        if base is self._atlas_base and not force:
            return False
        self._atlas_base = base
        if self._result is not None:
            self.table_model.set_regions(self._regions_for(self._result))
            self._size_region_columns()
            self._show_messages()
            self._update_cursor_stats()  # the readout names the region even if the mouse has not moved
        return True

    def _regions_for(self, res: pp.PostResult) -> dict[str, list[str]] | None:
        """The atlas columns of ``res`` known now (cached per labelling); schedules the rest.

        Sets :attr:`_atlas_grid` (the atlas on the result's grid, None without
        an atlas). Cells of clusters not computed yet are empty until the
        debounced computation (:meth:`_compute_regions`) fills them in.
        """
        self._atlas_message = ""
        grid = None
        if self._atlas_base is not None:
            try:
                grid = atlas_grid_for_viewer(self.viewer, res.labels.shape, res.affine)
            except UserError as exc:
                self._atlas_message = str(exc)
        self._atlas_grid = grid
        if grid is None:
            self._regions_timer.stop()
            return None
        if self._region_cache_key is None or self._region_cache_key[0] is not res.histogram \
                or self._region_cache_key[1] is not grid:
            self._region_cache = {}
            self._region_cache_key = (res.histogram, grid)
        ids = [int(c) for c in res.table.id]
        known = [self._region_cache.get(c) for c in ids]
        if any(k is None for k in known):
            self._regions_timer.start()  # (re)start: computed once the sliders rest
        return {
            "peak_region": [k[0] if k else "" for k in known],
            "regions": [k[1] if k else "" for k in known],
        }

    def _compute_regions(self) -> None:
        res, grid = self._result, self._atlas_grid
        if res is None or grid is None:
            return
        try:
            cols = at.cluster_region_columns(res.table, res.labels, grid)
        except UserError as exc:
            self._atlas_message = str(exc)
            self._show_messages()
            return
        if self._region_cache_key is None or self._region_cache_key[0] is not res.histogram \
                or self._region_cache_key[1] is not grid:
            self._region_cache = {}
            self._region_cache_key = (res.histogram, grid)
        for cid, peak, regions in zip(res.table.id, cols["peak_region"], cols["regions"]):
            self._region_cache[int(cid)] = (peak, regions)
        self.table_model.set_regions(cols)
        self._size_region_columns()

    def _size_region_columns(self) -> None:
        if self._region_columns_sized or not any((self.table_model.regions or {}).get("peak_region", [])):
            return
        for c, cap in zip(range(len(COLUMNS), len(COLUMNS) + len(REGION_COLUMNS)), (170, 260)):
            self.table_view.resizeColumnToContents(c)  # long texts: the cell's tooltip has all of it
            self.table_view.setColumnWidth(c, min(self.table_view.columnWidth(c), cap))
        self._region_columns_sized = True

    @property
    def atlas_grid(self) -> "at.AtlasOnGrid | None":
        """The viewer's atlas resampled onto the explored map's grid (None without an atlas)."""
        return self._atlas_grid

    def region_columns(self) -> dict[str, list[str]] | None:
        """``peak_region`` and ``regions`` of every row of the current table (computed now if pending).

        None when no atlas is loaded in the viewer.
        """
        self._sync_atlas()
        if self._result is None or self._atlas_grid is None:
            return None
        cols = self._regions_for(self._result)
        if self._regions_timer.isActive():
            self._regions_timer.stop()
            self._compute_regions()
            cols = self.table_model.regions
        return cols

    def region_under_cursor(self) -> str | None:
        """The atlas region under the mouse ("" outside every region), None without an atlas.

        2D: the region at the cursor; 3D: the first labelled region along the view ray (as the Atlas widget).
        """
        from .atlas_widget import cursor_voxel

        grid = self._atlas_grid
        if grid is None:
            return None
        if self.viewer.dims.ndisplay == 3:
            ijk = cursor_voxel(self.viewer, grid)
            if ijk is None:
                return ""
            lk = grid.lookup_voxel(ijk)
        else:
            lk = grid.lookup(np.asarray(self.viewer.cursor.position, dtype=float)[-3:])
        if lk.name and lk.probability is not None:
            return f"{lk.name} {lk.probability * 100:.0f}%"
        return lk.name

    # -- plots ------------------------------------------------------------------------
    def _redraw(self, canvas) -> None:
        """Draw a plot now if it is on screen, else when the widget is shown (drawing costs ~0.1 s)."""
        if canvas.isVisible():
            canvas.draw_idle()
        else:
            self._stale.add(canvas)

    def showEvent(self, event):  # noqa: N802 (Qt API)
        super().showEvent(event)
        for canvas in list(self._stale):
            canvas.draw_idle()
        self._stale.clear()

    def _draw_histogram(self) -> None:
        """Bars when the labelling changed, else only the min-size line and the title (cheaper)."""
        ax = self.hist_ax
        res = self._result
        unit = self.size_unit_combo.currentText()
        key = (id(res.histogram) if res is not None else None, unit)
        if key != self._hist_key:
            ax.clear()
            _style(ax)
            self._hist_line = self._hist_title = None
            self._hist_key = key
            if res is None or res.sizes_all.size == 0:
                ax.text(0.5, 0.5, "no clusters at this threshold", color=FG, ha="center", va="center",
                        transform=ax.transAxes)
                self._redraw(self.hist_canvas)
                return
            h = res.histogram
            edges = h.edges_mm3 if unit == "mm3" else h.edges_voxels
            ax.stairs(h.counts, edges, fill=True, color="#8fb3ff")
            ax.set_xscale("log")
            if h.counts.max() > 20:
                ax.set_yscale("log")
                ax.set_ylim(0.8, h.counts.max() * 1.3)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xlabel("cluster size (" + ("mm³" if unit == "mm3" else "voxels") + ")", fontsize=7)
            ax.set_ylabel("clusters", fontsize=7)
            self._hist_line = ax.axvline(edges[0], color="#ff5a5a", lw=1.5, ls="--")
            self._hist_title = ax.set_title("", fontsize=8)
        if res is None or self._hist_line is None:
            return
        scale = voxel_volume_mm3(res.affine) if unit == "mm3" else 1.0
        ms = max(res.min_voxels * scale, float(res.histogram.edges_voxels[0] * scale))
        self._hist_line.set_xdata([ms, ms])
        self._hist_title.set_text(f"{res.n_clusters} of {res.n_clusters_before_size} clusters ≥ min size (red)")
        self._redraw(self.hist_canvas)

    def _draw_slices(self) -> None:
        """Per-slice sums; they depend only on the filtered map, so redrawn only when it changed."""
        res = self._result
        key = id(res.profiles) if res is not None else None
        if key == self._slices_key and self._slice_lines:
            self._update_slice_markers()
            return
        self._slices_key = key
        self._slice_lines = []
        names = getattr(self, "_axis_names", ["axis 0", "axis 1", "axis 2"])
        for ax_i, ax in enumerate(self.slice_axes):
            ax.clear()
            _style(ax)
            if res is None:
                continue
            pos, neg = res.profiles[ax_i]
            edges = np.arange(pos.size + 1) - 0.5
            ax.stairs(pos, edges, fill=True, color="#ff6a3d")
            ax.stairs(neg, edges, fill=True, color="#3d9bff")
            ax.axhline(0, color="#888888", lw=0.5)
            ax.set_xlim(-0.5, pos.size - 0.5)
            ax.set_ylabel(names[ax_i], fontsize=7)
            self._slice_lines.append(ax.axvline(0, color="#ffffff", lw=1.0))
        if self.slice_axes and res is not None:
            self.slice_axes[0].set_title("relevance per slice: positive (red), negative (blue); white = current slice",
                                         fontsize=7)
        self._update_slice_markers()

    def current_voxel(self) -> np.ndarray:
        """The dims point as voxel indices of the relevance grid."""
        point = np.asarray(self.viewer.dims.point, dtype=float)[-3:]
        if point.size < 3:
            point = np.r_[np.zeros(3 - point.size), point]
        return np.linalg.inv(self._affine) @ np.r_[point, 1.0]

    def _update_slice_markers(self, *_args) -> None:
        if not self._slice_lines:
            return
        ijk = self.current_voxel()[:3]
        for line, v in zip(self._slice_lines, ijk):
            line.set_xdata([v, v])
        self._redraw(self.slice_canvas)

    # -- cursor and table interaction ------------------------------------------------------
    def cluster_at(self, world_position) -> int:
        """Cluster id under a world position (0 = none); in 3D the first cluster along the view ray."""
        layer = self._layers.get("labels")
        if layer is None or layer not in self.viewer.layers:
            return 0
        try:
            if self.viewer.dims.ndisplay == 3:
                value = layer.get_value(world_position, view_direction=self._camera().view_direction,
                                        dims_displayed=list(self.viewer.dims.displayed), world=True)
            else:
                value = layer.get_value(world_position, world=True)
        except Exception:  # pragma: no cover - napari picking can fail on degenerate views
            return 0
        if isinstance(value, tuple):
            value = value[-1]
        return int(value) if value is not None else 0

    def _update_cursor_stats(self, *_args) -> None:
        res = self._result
        if res is None:
            return
        self._sync_atlas()
        cid = self.cluster_at(self.viewer.cursor.position)
        row = res.table.row(cid) if cid else None
        if row is None:
            text = "cluster under cursor: –"
        else:
            text = (
                f"cluster {row['id']} ({row['sign']}): {row['voxels']} voxels = {row['mm3']:.1f} mm³, "
                f"mean {row['mean']:.4g}, peak {row['peak']:.4g} at ({', '.join(f'{c:.1f}' for c in row['peak_mm'])}) mm"
            )
        region = self.region_under_cursor()
        if region is not None:
            text += f"\nregion ({self._atlas_grid.atlas.name}): {region or 'none'}"
        self.cursor_label.setText(text)

    def _on_row_clicked(self, index) -> None:
        src = self.table_proxy.mapToSource(index)
        if not src.isValid():
            return
        self.focus_cluster(int(self.table_model.table.id[src.row()]))

    def _camera(self):
        scene = getattr(self.viewer, "scene", None)  # napari >= 0.9
        return scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera

    def focus_cluster(self, cluster_id: int) -> None:
        """Centre dims and camera on the cluster's peak and highlight it."""
        res = self._result
        row = res.table.row(cluster_id) if res else None
        if row is None:
            return
        world = np.asarray(row["peak_mm"], dtype=float)
        nd = self.viewer.dims.ndim
        axes = list(range(nd - 3, nd))
        self.viewer.dims.set_point(axes, tuple(world))
        full = np.asarray(self.viewer.dims.point, dtype=float)
        full[-3:] = world
        displayed = list(self.viewer.dims.displayed)
        self._camera().center = tuple(full[d] for d in displayed)
        layer = self._layers.get("labels")
        if layer is not None and layer in self.viewer.layers:
            layer.selected_label = int(cluster_id)
            if not self.highlight_check.isChecked():
                self.highlight_check.setChecked(True)
            else:
                layer.show_selected_label = True

    def _on_highlight_toggled(self, on: bool) -> None:
        layer = self._layers.get("labels")
        if layer is not None and layer in self.viewer.layers:
            layer.show_selected_label = bool(on)

    # -- save ------------------------------------------------------------------------------
    def _on_save_clicked(self) -> None:
        if self._result is None:
            self._show_error("nothing to save yet: choose a relevance layer first.")
            return
        start = str(Path(self._source_file() or Path.home() / "relevance").with_suffix(""))
        path, _ = QFileDialog.getSaveFileName(self, "Save clusters (base name)", start.replace(".nii", ""))
        if path:
            try:
                written = self.save(path)
            except UserError as exc:
                self._show_error(str(exc))
                return
            self.status_label.setText("wrote " + ", ".join(p.name for p in written))

    def _source_file(self) -> str | None:
        md = (self._source_layer.metadata or {}) if self._source_layer is not None else {}
        src = md.get("source")
        return str(src) if src else None

    def save(self, base: str | Path, overwrite: bool = True) -> list[Path]:
        """Write ``BASE_clusters.nii.gz``, ``BASE_filtered.nii.gz`` and ``BASE_table.csv`` (+ sidecars).

        With an atlas loaded in the viewer the table gains ``peak_region`` and
        ``regions`` columns, and its sidecar names the atlas.
        """
        from ..core.cluster_outputs import atlas_record, save_outputs_with_regions
        from ..core import geometry
        from ..core.provenance import sha256_file

        res = self._result
        if res is None:
            raise UserError("nothing to save yet: choose a relevance layer first.")
        base = Path(base)
        name = base.name
        for suffix in (".nii.gz", ".nii", ".csv", ".json"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        base = base.with_name(name)
        md = (self._source_layer.metadata or {}) if self._source_layer is not None else {}
        src_file = self._source_file()
        source = {
            "layer": self._source_layer.name if self._source_layer is not None else None,
            "file": src_file,
            "shape": list(res.filtered.shape),
            "voxel_size_mm": geometry.voxel_sizes(res.affine).tolist(),
        }
        if src_file and Path(src_file).is_file():
            source["sha256"] = sha256_file(src_file)
        regions = self.region_columns()
        return save_outputs_with_regions(
            res,
            regions,
            atlas_record(self._atlas_grid) if regions is not None else None,
            labels_path=base.with_name(name + "_clusters.nii.gz"),
            filtered_path=base.with_name(name + "_filtered.nii.gz"),
            table_path=base.with_name(name + "_table.csv"),
            source=source,
            provenance=self._explorer.provenance if self._explorer else None,
            header=md.get("nifti_header"),
            mask_filtered=self.mask_check.isChecked(),
            overwrite=overwrite,
        )
