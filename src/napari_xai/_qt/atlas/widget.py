"""The Atlas dock: composes the atlas form, the cursor readout, the outline layers and the region table.

Thin adapter over :mod:`napari_xai.core.atlas`:

* an atlas (the ten built-in MNI atlases, or a user label NIfTI + labels file)
  is resampled onto the grid of a *volume* layer through world coordinates;
* moving the mouse shows the region and the MNI coordinate in this widget and
  in napari's status bar, in 2D (the voxel under the cursor) and in 3D (the
  first labelled voxel along the viewing ray);
* outlines are Labels layers holding boundary volumes (:mod:`.outlines`);
* the region table (relevance per region) is sortable; clicking a row outlines
  that region and centres the view on it (:mod:`.region_table`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from ..._layers import full_shape
from ...core import atlas as at
from ...core.errors import UserError
from ...core.geometry import layer_affine  # the one layer -> affine
from .._events import connect_all, disconnect_all
from .._forms import button, label, row
from .._layout import compact, scroll_body
from .cursor_box import CursorBox
from .loader import AtlasLoader
from .outlines import OutlineBox, OutlineLayers
from .region_table import COLUMNS, RegionTableBox, region_table_of, save_region_table
from .source_box import AtlasSourceBox, volume_layers
from .status import StatusBarText
from .viewers import centre_on, cursor_voxel, displayed_data_axes, register


def _notify(kind: str, texts) -> None:
    try:
        from napari.utils import notifications

        for text in texts:
            getattr(notifications, f"show_{kind}")(text)
    except Exception:  # pragma: no cover - notification manager missing
        pass


class AtlasWidget(QWidget):
    """Dock widget: atlas choice, live lookup, outline layers and a sortable region table.

    Signals
    -------
    atlas_changed(AtlasOnGrid)
        Emitted when an atlas has been loaded onto the volume grid (None when it is dropped), e.g. for the
        explorer to refresh its cluster-region columns.
    """

    atlas_changed = Signal(object)

    TABLE_COLUMNS = COLUMNS
    OUTLINE_INTERVAL_MS = 40

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = v = napari_viewer
        self.grid: at.AtlasOnGrid | None = None
        self.table: at.RegionTable | None = None
        self._reload_pending = False
        self._selected_values: list[int] = []
        self._pending_outline: int | None = None
        register(v, self)
        self.outlines = OutlineLayers(v, self._refresh_layer_choices)
        self.status_bar = StatusBarText(v)
        self.loader = AtlasLoader(self)
        self.loader.loaded.connect(self._on_loaded)
        self.loader.failed.connect(self._on_failed)
        self._build_ui()
        self._refresh_layer_choices()
        self._connections = connect_all([
            (v.layers.events.inserted, self._refresh_layer_choices),
            (v.layers.events.removed, self._refresh_layer_choices),
            (v.cursor.events.position, self._on_cursor),
            (v.dims.events.ndisplay, self._on_display_change),
            (v.dims.events.order, self._on_display_change),
        ])
        self._outline_timer = self._timer(self.OUTLINE_INTERVAL_MS, self._apply_pending_outline)
        self._table_timer = self._timer(250, self.update_table)

    def _timer(self, ms: int, slot) -> QTimer:
        t = QTimer(self)
        t.setSingleShot(True)
        t.setInterval(ms)
        t.timeout.connect(slot)
        return t

    def _build_ui(self) -> None:
        lay = QVBoxLayout(scroll_body(self))  # the form scrolls: the dock fits a laptop screen
        self.source = AtlasSourceBox()
        self.source.threshold_changed.connect(self._on_threshold)
        self.source.relevance_changed.connect(self._schedule_table)
        self.source.clusters_changed.connect(self._on_clusters_choice)
        lay.addWidget(self.source)
        self.load_button = button("Load atlas", self.load)
        self.message = label("")
        lay.addLayout(row(self.load_button, (self.message, 1)))
        self.space_warning = label("", style="color: #e0a030;")
        self.space_warning.setVisible(False)
        lay.addWidget(self.space_warning)
        self.cursor = CursorBox()
        lay.addWidget(self.cursor)
        self.outline_box = OutlineBox(self._update_outline_layers)
        lay.addWidget(self.outline_box)
        self.regions = RegionTableBox()
        self.regions.selection_changed.connect(self._on_table_selection)
        self.regions.region_clicked.connect(self.centre_on_region)
        self.regions.save_requested.connect(self._save_table_dialog)
        lay.addWidget(self.regions, 1)
        compact(self)
        # the controls under their names of one-class days (tests, scripts and docs use them)
        s, c, o, r = self.source, self.cursor, self.outline_box, self.regions
        self.atlas_combo, self.threshold, self.custom_image, self.custom_labels = (
            s.atlas_combo, s.threshold, s.custom_image, s.custom_labels)
        self.volume_combo, self.relevance_combo, self.clusters_combo = s.volume_combo, s.relevance_combo, s.clusters_combo
        self.region_label, self.coord_label, self.prob_button, self.prob_list = (
            c.region_label, c.coord_label, c.prob_button, c.prob_list)
        self.cursor_check, self.selected_check, self.all_check = o.cursor_check, o.selected_check, o.all_check
        self.table_widget, self.filter_edit, self.table_summary = r.table_widget, r.filter_edit, r.summary

    @property
    def last_lookup(self) -> at.Lookup | None:
        return self.cursor.last_lookup

    @property
    def status_text(self) -> str:
        return self.status_bar.text

    # ------------------------------------------------------------------ choices
    def _refresh_layer_choices(self, event=None) -> None:
        vols = self.source.refresh(self.viewer, self.outlines.mine())
        if not vols and self.grid is not None:
            self._forget_atlas()  # every volume was deleted: the atlas has no grid to sit on

    def _forget_atlas(self) -> None:
        """Drop the atlas grid, lookup and table; outline layers still in the viewer go once the event ends."""
        self.grid = self.table = None
        self._pending_outline = None
        self._outline_timer.stop()
        self._table_timer.stop()
        self.status_bar.set("")
        self.cursor.clear()
        self.regions.fill(None, "")
        self.message.setText("no volume layer: add one and load the atlas again")
        self.outlines.forget()
        self.atlas_changed.emit(None)

    def _layer_by_name(self, name: str):
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_threshold(self, value: float) -> None:
        if self.grid is None or not self.grid.atlas.is_probabilistic:
            return
        if self._busy:
            self._reload_pending = True  # reload with the newest value when the running load ends
        else:
            self.load()

    def _on_clusters_choice(self) -> None:
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
        self.source.set_atlas(name)

    # ------------------------------------------------------------------ loading
    def _request(self):
        source, lab = self.source.atlas_source()
        layer = self._layer_by_name(self.volume_combo.currentText())
        if layer is None:
            raise UserError("add a 3D volume layer first: the atlas is resampled onto its grid.")
        shape = full_shape(layer)  # a layer shown cropped in 3D (xai_crop) is placed on its full grid
        return source, lab, shape, layer_affine(layer), self.source.threshold_fraction

    def load(self, *, sync: bool = False) -> None:
        """Load the chosen atlas onto the volume grid (in a worker thread unless ``sync``)."""
        try:
            source, lab, shape, affine, thr = self._request()
        except UserError as exc:
            self._show_error(str(exc))
            return
        self.load_button.setEnabled(False)
        self.message.setText("loading atlas…")
        self.loader.load(source, lab, shape, affine, thr, displayed_data_axes(self.viewer, affine), sync=sync)

    @property
    def _busy(self) -> bool:
        return self.loader.busy

    def _on_failed(self, text: str) -> None:
        self.load_button.setEnabled(True)
        self._show_error(text)

    def _show_error(self, text: str) -> None:
        self.message.setText(f"<span style='color:#e05050'>{text}</span>")
        _notify("error", [text])

    def _on_loaded(self, grid) -> None:
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
        _notify("warning", ([warn] if warn else []) + list(grid.atlas.warnings))
        self._selected_values = [v for v in self._selected_values if v in grid.atlas.regions]
        self._update_outline_layers()
        self.update_table()
        self.cursor.probabilistic = bool(grid.atlas.is_probabilistic)
        self.cursor.show_probabilities(self.prob_button.isChecked())
        self.atlas_changed.emit(grid)

    # ------------------------------------------------------------------ outline layers
    def _displayed_data_axes(self, affine: np.ndarray | None = None) -> tuple[int, ...]:
        """Data axes of the volume grid shown on screen (all three in 3D)."""
        aff = self.grid.affine if affine is None and self.grid is not None else affine
        return displayed_data_axes(self.viewer, aff)

    def _update_outline_layers(self, *args) -> None:
        """Create, update or remove the three outline layers to match the check boxes."""
        if self.grid is None:
            return
        lk = self.last_lookup
        self.outlines.update(self.grid, self.grid.plane_outlines(self._displayed_data_axes()), self.outline_box,
                             self._selected_values, int(lk.value) if lk is not None else 0)

    def _apply_pending_outline(self) -> None:
        if self.grid is not None and self._pending_outline is not None \
                and self._pending_outline != self.outlines.cursor_value:
            self._set_cursor_outline(self._pending_outline)

    def _set_cursor_outline(self, value: int, create: bool = False) -> None:
        """Show the outline of region ``value`` in the cursor layer: a small crop, fast to update."""
        assert self.grid is not None
        self.outlines.set_cursor(self.grid, value, self._displayed_data_axes(), create=create)

    def _on_display_change(self, event=None) -> None:
        if self.grid is None:
            return
        if not volume_layers(self.viewer, self.outlines.mine()):
            self._forget_atlas()  # e.g. all layers deleted: napari changes the dims before it says so
            return
        self._update_outline_layers()
        if event is not None and getattr(event, "type", "") == "ndisplay":
            self.outlines.restyle()

    # ------------------------------------------------------------------ cursor lookup
    def _on_cursor(self, event=None) -> None:
        if self.grid is None:
            return
        ijk = cursor_voxel(self.viewer, self.grid)
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
        self.cursor.show_lookup(lk)
        self.status_bar.set(at.format_lookup(lk, self.grid.atlas.name if self.grid is not None else ""))
        if self.cursor_check.isChecked() and lk.value != self.outlines.cursor_value:
            # the name follows the mouse at once; the outline layer is throttled (at most one
            # update per OUTLINE_INTERVAL_MS, latest region wins), so fast moves never queue work
            self._pending_outline = int(lk.value)
            if not self._outline_timer.isActive():
                self._outline_timer.start()

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
            self.regions.fill(None, "choose a relevance layer to sum relevance per region")
            return
        try:
            self.table = region_table_of(self.grid, rel_layer,
                                         self._layer_by_name(self.clusters_combo.currentText()))
        except UserError as exc:
            self._show_error(str(exc))
            return
        self.regions.fill(self.table)

    def _on_table_selection(self, values: list) -> None:
        self._selected_values = list(values)
        self._update_outline_layers()

    def _on_row_clicked(self, r: int, column: int) -> None:
        value = self.regions.row_value(r)
        if value is not None:
            self.centre_on_region(value)

    def select_regions(self, values) -> None:
        """Outline these regions (values) in the 'selected' layer."""
        self._selected_values = [int(v) for v in values]
        self._update_outline_layers()

    def centre_on_region(self, value: int) -> np.ndarray | None:
        """Move the slices and the camera to a voxel inside the region (near its centroid)."""
        world = self.grid.region_center_world(value) if self.grid is not None else None
        if world is not None:
            centre_on(self.viewer, world)
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
        if self.table is None or self.grid is None:
            raise UserError("no region table yet: load an atlas and choose a relevance layer.")
        p = save_region_table(path, self.table, self.grid, self._layer_by_name(self.relevance_combo.currentText()),
                              self.source.clusters_name())
        self.message.setText(f"wrote {p.name}")
        return p

    # ------------------------------------------------------------------ cleanup
    def closeEvent(self, event):  # noqa: N802
        self.status_bar.disconnect()
        disconnect_all(self._connections)
        super().closeEvent(event)
