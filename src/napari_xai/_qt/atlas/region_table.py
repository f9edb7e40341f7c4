"""The Atlas dock's region table: relevance per region, sortable, filterable; a click outlines and centres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QAbstractItemView, QGroupBox, QLineEdit, QTableWidgetItem, QVBoxLayout

from ..._layers import full_shape, uncropped
from ...core import atlas as at
from ...core.geometry import layer_affine  # the one layer -> affine
from .._forms import button, label, read_only_table, row
from .viewers import grid_threshold

COLUMNS = ("Region", "Σ+", "% of +", "Mean", "Σ−", "Voxels", "mm³", "Clusters", "Value")


class NumItem(QTableWidgetItem):
    """A table cell that sorts by a number."""

    def __init__(self, text: str, key: float):
        super().__init__(text)
        self._key = key
        self.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))

    def __lt__(self, other):  # noqa: D105
        if isinstance(other, NumItem):
            return self._key < other._key
        return super().__lt__(other)


def row_cells(r: dict) -> dict[str, QTableWidgetItem]:
    """The cells of one region row of :func:`napari_xai.core.atlas.region_table`, by column."""
    name = QTableWidgetItem(r["region"])
    name.setData(Qt.ItemDataRole.UserRole, int(r["value"]))
    name.setToolTip(f"{r['region']} (label value {r['value']}, labels-file index {r['index']})")
    cl = r["clusters"]
    return {
        "Region": name,
        "Σ+": NumItem(f"{r['pos_sum']:.4g}", r["pos_sum"]),
        "% of +": NumItem(f"{r['pos_share']:.1f}", r["pos_share"]),
        "Mean": NumItem(f"{r['mean']:.3g}", r["mean"]),
        "Σ−": NumItem(f"{r['neg_sum']:.4g}", r["neg_sum"]),
        "Voxels": NumItem(str(r["voxels"]), r["voxels"]),
        "mm³": NumItem(f"{r['volume_mm3']:.0f}", r["volume_mm3"]),
        "Clusters": NumItem(", ".join(map(str, cl[:8])) + ("…" if len(cl) > 8 else ""), len(cl)),
        "Value": NumItem(str(r["value"]), r["value"]),
    }


def layer_volume(layer) -> np.ndarray:
    """The 3D data of an Image/Labels layer; the signed map for our relevance layers."""
    meta = getattr(layer, "metadata", {}) or {}
    rel = meta.get("xai_relevance")
    if rel is not None and np.shape(rel) == full_shape(layer):  # a layer shown cropped (3D): its full grid
        return np.asarray(rel)
    data = np.asarray(layer.data)
    if data.ndim > 3:
        data = data.reshape((-1,) + data.shape[-3:])[0]
    return data


def region_table_of(grid, rel_layer, clusters_layer=None) -> at.RegionTable:
    """Relevance per region of ``grid``'s atlas, on the relevance layer's own grid (clusters listed if given)."""
    rel = layer_volume(rel_layer)
    tgrid = at.atlas_on_grid(grid.atlas, rel.shape[-3:], layer_affine(rel_layer), threshold=grid_threshold(grid))
    cl_data = uncropped(clusters_layer.data, clusters_layer.metadata)[0] if clusters_layer is not None else None
    # the explorer's clusters layer is cropped to the clusters' box
    clusters = cl_data if cl_data is not None and tuple(cl_data.shape[-3:]) == tuple(rel.shape[-3:]) else None
    return at.region_table(tgrid, rel, clusters)


def save_region_table(path, table: at.RegionTable, grid, rel_layer, clusters_name: str | None) -> Path:
    """Write the region table as CSV plus a JSON provenance sidecar (atomically); returns the CSV path."""
    from ...core.provenance import now_iso, package_versions, write_sidecar
    from ...core.volumes import atomic_write_bytes

    p = Path(path)
    if p.suffix.lower() != ".csv":
        p = p.with_suffix(".csv")
    a = grid.atlas
    record = {
        "kind": "regions",
        "created": now_iso(),
        "relevance_layer": rel_layer.name if rel_layer is not None else None,
        "relevance_provenance": (rel_layer.metadata or {}).get("provenance") if rel_layer is not None else None,
        "atlas": {"name": a.name, "kind": a.kind, "source": a.source, "threshold": grid.threshold},
        "clusters_layer": clusters_name,
        "totals": table.summary(),
        "versions": package_versions(),
    }
    atomic_write_bytes(p, table.to_csv().encode("utf-8"))
    write_sidecar(p, record)
    return p


def summary_text(t: at.RegionTable) -> str:
    share = 100.0 * t.inside_pos / t.total_pos if t.total_pos > 0 else 0.0
    return (f"{len(t.rows)} regions · {share:.1f}% of the positive relevance is inside the atlas · "
            f"Σ+ {t.total_pos:.4g}, Σ− {t.total_neg:.4g}")


class RegionTableBox(QGroupBox):
    """Filter, *Save CSV…*, the table and its summary line.

    Signals: ``region_clicked(value)``, ``selection_changed(values)``, ``save_requested()``.
    """

    region_clicked = Signal(int)
    selection_changed = Signal(list)
    save_requested = Signal()

    def __init__(self, parent=None):
        super().__init__("Regions", parent)
        self.filter_edit = QLineEdit()
        self.filter_edit.setPlaceholderText("filter by name…")
        self.filter_edit.textChanged.connect(self.apply_filter)
        self.save_button = button("Save CSV…", self.save_requested.emit)
        tw = self.table_widget = read_only_table(list(COLUMNS), stretch=None, select_rows=True)
        tw.setSortingEnabled(True)
        tw.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        tw.horizontalHeader().setSortIndicator(COLUMNS.index("Σ+"), Qt.SortOrder.DescendingOrder)  # most + first
        tw.itemSelectionChanged.connect(lambda: self.selection_changed.emit(self.selected_values()))
        tw.cellClicked.connect(self._on_cell_clicked)
        self.summary = label("")
        lay = QVBoxLayout(self)
        lay.addLayout(row((self.filter_edit, 1), self.save_button))
        lay.addWidget(tw)
        lay.addWidget(self.summary)

    def fill(self, table: at.RegionTable | None, summary: str | None = None) -> None:
        """Show ``table``'s rows (None: none) and the summary (default: the table's own)."""
        tw = self.table_widget
        tw.setSortingEnabled(False)
        tw.blockSignals(True)
        tw.setRowCount(0)
        rows = table.rows if table is not None else []
        tw.setRowCount(len(rows))
        for i, r in enumerate(rows):
            cells = row_cells(r)
            for c, key in enumerate(COLUMNS):
                tw.setItem(i, c, cells[key])
        tw.blockSignals(False)
        tw.setSortingEnabled(True)
        self.apply_filter(self.filter_edit.text())
        if summary is not None or table is not None:
            self.summary.setText(summary if summary is not None else summary_text(table))

    def apply_filter(self, text: str) -> None:
        t = text.strip().lower()
        for i in range(self.table_widget.rowCount()):
            item = self.table_widget.item(i, 0)
            self.table_widget.setRowHidden(i, bool(t) and (item is None or t not in item.text().lower()))

    def row_value(self, r: int) -> int | None:
        item = self.table_widget.item(r, 0)
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def selected_values(self) -> list[int]:
        rows = sorted({idx.row() for idx in self.table_widget.selectedIndexes()})
        return [v for v in (self.row_value(r) for r in rows) if v is not None]

    def _on_cell_clicked(self, r: int, column: int) -> None:
        value = self.row_value(r)
        if value is not None:
            self.region_clicked.emit(value)
