"""The Relevance explorer dock: composes the explorer's widgets and keeps them in step with one result.

Thin by design: every number comes from :class:`napari_xai.core.explorer.Explorer`. The dock reads its
controls into a :class:`~napari_xai.core.postprocess.PostParams`, lets :class:`.scheduler.UpdateScheduler`
compute the result, and hands the result to the layers, the guides, the table and the readouts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from ...core import postprocess as pp
from ...core.errors import UserError
from ...core.explorer import Explorer, source_provenance
from ...core.geometry import layer_affine  # the one layer -> affine
from .. import lod
from .._layout import compact, scroll_body
from . import export
from .cluster_box import ClusterBox
from .cursor import CursorReadout, camera, centre_on
from .filter_box import FilterBox
from .guides import Guides, axis_names
from .layers import FILTERED_NAME, LayerUpdater
from .regions import RegionColumns
from .scheduler import UpdateScheduler
from .source import WARN_STYLE, SourcePicker, candidate_layers, layer_relevance
from .table import ClusterTableView

if TYPE_CHECKING:  # pragma: no cover
    import napari


def label(text: str = "", style: str = "") -> QLabel:
    w = QLabel(text)
    w.setWordWrap(True)
    if style:
        w.setStyleSheet(style)
    return w


class ExplorerWidget(QWidget):
    """Dock widget: post-process a relevance layer into live "filtered relevance" and "clusters" layers."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._source_layer = None
        self._affine = np.eye(4)
        self._result: pp.PostResult | None = None
        self._error = ""
        self._axis_names = ["axis 0", "axis 1", "axis 2"]
        self.layer_updater = LayerUpdater(napari_viewer)
        lod.install(napari_viewer)  # relevance layers cropped to where they show in 3D
        self.scheduler = UpdateScheduler(self.params, lambda res: self._apply(res), self._show_error, self._status, self)
        self.regions = RegionColumns(napari_viewer, self)
        self._build()
        self._connect()
        self.refresh_layers()

    # -- construction ------------------------------------------------------------
    def _build(self) -> None:
        d = pp.PostParams()
        root = QVBoxLayout(scroll_body(self))  # the form scrolls: the dock fits a laptop screen
        root.setContentsMargins(4, 4, 4, 4)
        self.source = SourcePicker()
        self.filter_box = FilterBox(d)
        self.cluster_box = ClusterBox(d)
        self.guides = Guides()
        self.cursor_label = CursorReadout()
        self.table_view = ClusterTableView()
        self.mask_check = QCheckBox("relevance only in clusters")
        self.mask_check.setChecked(True)
        self.mask_check.setToolTip("show (and save) the filtered relevance only inside the kept clusters")
        self.highlight_check = QCheckBox("show only the selected cluster")
        self.status_label = label()
        self.save_button = QPushButton("Save…")
        self.save_button.setToolTip("write clusters + filtered relevance (NIfTI) and the table (CSV), "
                                    "each with a JSON sidecar")
        self.message_label = label(style=WARN_STYLE)
        for w in (self.source, self.filter_box, self.cluster_box, self.guides, self.cursor_label):
            root.addWidget(w)
        root.addWidget(self.table_view, 1)
        root.addWidget(self.mask_check)
        root.addWidget(self.highlight_check)
        bottom = QHBoxLayout()
        bottom.addWidget(self.status_label, 1)
        bottom.addWidget(self.save_button)
        root.addLayout(bottom)
        root.addWidget(self.message_label)
        # the children's controls, by their names (scripts and tests drive them)
        for child in (self.filter_box, self.cluster_box):
            for name in child.FIELDS:
                setattr(self, name, getattr(child, name))
        self.size_readout = self.cluster_box.size_readout
        self.layer_combo, self.any_image_check = self.source.layer_combo, self.source.any_image_check
        self.hint_label = self.source.hint_label
        self.table_model, self.table_proxy = self.table_view.table_model, self.table_view.table_proxy
        self.hist_canvas, self.hist_ax = self.guides.hist_canvas, self.guides.hist_ax
        self.slice_canvas, self.slice_axes = self.guides.slice_canvas, self.guides.slice_axes
        compact(self)

    def _connect(self) -> None:
        s = self.scheduler
        for box in (self.filter_box, self.cluster_box):
            box.changed.connect(s.schedule)
            box.moved.connect(s.on_control)
        self.source.chosen.connect(self._on_layer_chosen)
        self.source.any_image_toggled.connect(self.refresh_layers)
        self.table_view.clicked.connect(self._on_row_clicked)
        self.mask_check.toggled.connect(self._show_filtered)
        self.highlight_check.toggled.connect(lambda on: self.layer_updater.highlight(None, on))
        self.save_button.clicked.connect(self._on_save_clicked)
        self.regions.changed.connect(self.table_view.show_regions)
        self.regions.atlas_changed.connect(self._on_atlas_changed)
        v = self.viewer
        self._viewer_events = (
            (v.layers.events.inserted, self.refresh_layers),
            (v.layers.events.removed, self.refresh_layers),
            (v.dims.events.current_step, self._update_slice_markers),
            (v.cursor.events.position, self._update_cursor_stats),
        )
        for emitter, cb in self._viewer_events:
            emitter.connect(cb)
        self.regions.follow_atlas_widget()

    def closeEvent(self, event):  # noqa: N802 (Qt API)
        for emitter, cb in self._viewer_events:
            try:
                emitter.disconnect(cb)
            except Exception:  # pragma: no cover - already gone
                pass
        self.regions.disconnect_all()
        super().closeEvent(event)

    # -- source --------------------------------------------------------------------
    def refresh_layers(self, event=None) -> None:
        """Refill the relevance picker; a relevance layer just added becomes the one explored."""
        candidates = candidate_layers(self.viewer, self.layer_updater.own(), self.any_image_check.isChecked(),
                                      FILTERED_NAME)
        names = [ly.name for ly in candidates]
        self.source.set_names(names)
        added = getattr(event, "value", None) if getattr(event, "type", "") == "inserted" else None
        newest = next((ly for ly in candidates if added is not None and ly == added), None)
        if self._source_layer is not None and self._source_layer not in self.viewer.layers:
            self._drop_source()
        if newest is not None and not (self._source_layer is not None and newest == self._source_layer):
            self.source.show_name(newest.name)
            self._on_layer_chosen(newest.name)
        elif names and (self._source_layer is None or self._source_layer.name not in names):
            self.source.show_name(names[-1])  # the newest relevance map
            self._on_layer_chosen(names[-1])
        if self._result is not None:
            self.regions.sync(self._result)  # an atlas widget adds its outline layers when it loads an atlas

    def _drop_source(self) -> None:
        """The explored layer was deleted: forget it and its result (the output layers go their own way)."""
        self.scheduler.set_explorer(None)
        self._source_layer = None
        self._result = None
        self.cluster_box.forget_result()
        self.regions.forget()
        self.table_view.show_table(pp.empty_table(), None)
        self.status_label.setText("")
        self.message_label.setText("")
        self.cursor_label.clear()

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

        from ...core.errors import XaiWarning

        data = layer_relevance(layer)
        affine = layer_affine(layer)
        md = layer.metadata or {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", XaiWarning)  # shown in the widget's messages instead
            ex = Explorer(data, affine, provenance=source_provenance(md.get("provenance")), name=layer.name)
        self.scheduler.set_explorer(ex)
        self._source_layer = layer
        self._affine = affine
        self._result = None
        self.cluster_box.forget_result()
        self.cluster_box.set_affine(affine)
        self.layer_updater.affine, self.layer_updater.provenance = affine, ex.provenance
        self.layer_updater.source_name = layer.name
        self._axis_names = axis_names(affine)
        self.source.show_name(layer.name)
        self.scheduler.schedule()

    @property
    def _explorer(self) -> Explorer | None:
        return self.scheduler.explorer

    # -- parameters ----------------------------------------------------------------
    def params(self) -> pp.PostParams:
        """The controls' current parameters (not validated)."""
        return pp.PostParams(**self.filter_box.values(), **self.cluster_box.values())

    def set_params(self, params: pp.PostParams) -> None:
        """Set every control (e.g. from a sidecar) and update once."""
        p = params.validated()
        self.filter_box.set_values(p)
        self.cluster_box.set_values(p)
        self.scheduler.schedule()

    # -- state ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while a computation runs in a worker thread."""
        return self.scheduler.worker is not None

    @property
    def result(self) -> pp.PostResult | None:
        """The result shown in the layers."""
        return self._result

    @property
    def idle(self) -> bool:
        """True when nothing is running or pending (guides included) and the controls' state has been computed
        (or refused)."""
        return self.scheduler.idle and (self._explorer is None or not (self.regions.timer.isActive()
                                                                       or self.guides.pending))

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
    def _status(self, text: str | None):
        if text is None:
            return self.status_label.text()
        self.status_label.setText(text)

    def _show_error(self, text: str) -> None:
        self._error = text
        self.message_label.setText(text)
        self.status_label.setText("")

    def _apply(self, res: pp.PostResult) -> None:
        self._result = res
        self._error = ""
        self.layer_updater.show(res, self.mask_check.isChecked())
        self.cluster_box.follow_result(res)
        self.regions.refresh_base()
        self.table_view.show_table(res.table, self.regions.columns_for(res))
        self.guides.show_result(res, self.size_unit_combo.currentText(), self._axis_names)
        self._update_slice_markers()
        self._update_cursor_stats()
        self.status_label.setText(res.summary())
        self._show_messages()

    def _show_filtered(self, *_) -> None:
        if self._result is not None:
            self.layer_updater.show_filtered(self._result, self.mask_check.isChecked())

    def _show_messages(self) -> None:
        msgs = list(self._result.messages) if self._result is not None else []
        if self.regions.message:
            msgs.append(self.regions.message)
        self.message_label.setText("\n".join(msgs))

    def _on_atlas_changed(self) -> None:
        self._show_messages()
        self._update_cursor_stats()  # the readout names the region even if the mouse has not moved

    # -- atlas -------------------------------------------------------------------------
    @property
    def atlas_grid(self):
        """The viewer's atlas resampled onto the explored map's grid (None without an atlas)."""
        return self.regions.grid

    def region_columns(self) -> dict[str, list[str]] | None:
        """``peak_region`` and ``regions`` of every row of the current table (None without an atlas)."""
        return self.regions.columns_now(self._result)

    def region_under_cursor(self) -> str | None:
        """The atlas region under the mouse ("" outside every region), None without an atlas."""
        return self.regions.under_cursor()

    # -- cursor, slices and table interaction ------------------------------------------
    def current_voxel(self) -> np.ndarray:
        """The dims point as voxel indices of the relevance grid."""
        point = np.asarray(self.viewer.dims.point, dtype=float)[-3:]
        if point.size < 3:
            point = np.r_[np.zeros(3 - point.size), point]
        return np.linalg.inv(self._affine) @ np.r_[point, 1.0]

    def _update_slice_markers(self, *_args) -> None:
        self.guides.set_marker(self.current_voxel()[:3])

    def cluster_at(self, world_position) -> int:
        """Cluster id under a world position (0 = none); in 3D the first cluster along the view ray."""
        return self.layer_updater.cluster_at(world_position, camera(self.viewer))

    def _update_cursor_stats(self, *_args) -> None:
        if self._result is None:
            return
        self.regions.sync(self._result)
        region = self.regions.under_cursor()
        self.cursor_label.show_at(self._result, self.cluster_at(self.viewer.cursor.position),
                                  self.regions.grid.atlas.name if region is not None else None, region)

    def _on_row_clicked(self, index) -> None:
        cid = self.table_view.cluster_id(index)
        if cid is not None:
            self.focus_cluster(cid)

    def focus_cluster(self, cluster_id: int) -> None:
        """Centre dims and camera on the cluster's peak and highlight it."""
        res = self._result
        row = res.table.row(cluster_id) if res else None
        if row is None:
            return
        centre_on(self.viewer, row["peak_mm"])
        if self.layer_updater.layer("labels") is not None:
            self.layer_updater.highlight(cluster_id, True)
            self.highlight_check.setChecked(True)

    # -- save ------------------------------------------------------------------------------
    def _on_save_clicked(self) -> None:
        if self._result is None:
            self._show_error(export.NOTHING_YET)
            return
        path = export.ask_base(self, self._source_layer)
        if path:
            try:
                written = self.save(path)
            except UserError as exc:
                self._show_error(str(exc))
                return
            self.status_label.setText("wrote " + ", ".join(p.name for p in written))

    def save(self, base, overwrite: bool = True):
        """Write ``BASE_clusters.nii.gz``, ``BASE_filtered.nii.gz`` and ``BASE_table.csv`` (+ sidecars).

        With an atlas loaded in the viewer the table gains ``peak_region`` and ``regions`` columns, and its
        sidecar names the atlas.
        """
        if self._result is None:
            raise UserError(export.NOTHING_YET)
        regions = self.region_columns()
        return export.save_result(self._result, base, self._source_layer, regions, self.regions.grid,
                                  self._explorer.provenance if self._explorer else None,
                                  masked=self.mask_check.isChecked(), overwrite=overwrite)
