"""The cluster table: a sortable Qt model over the result's arrays (read lazily) and its view."""

from __future__ import annotations

from qtpy.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from qtpy.QtWidgets import QHeaderView, QTableView

from ...core import postprocess as pp

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
REGION_WIDTH_CAPS = (170, 260)  # px; long texts: the cell's tooltip has all of it


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


class ClusterTableView(QTableView):
    """The sortable table of the kept clusters (one line per cluster); its model is :attr:`table_model`."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.table_model = ClusterTableModel(self)
        self.table_proxy = QSortFilterProxyModel(self)
        self.table_proxy.setSourceModel(self.table_model)
        self.table_proxy.setSortRole(ClusterTableModel.SORT_ROLE)
        self.setModel(self.table_proxy)
        self.setSortingEnabled(True)
        self.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QTableView.SelectionMode.SingleSelection)
        self.verticalHeader().setVisible(False)
        self.setWordWrap(False)  # one line per cluster; long region lists are elided (tooltip: all)
        header = self.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setResizeContentsPrecision(50)  # look at 50 rows, not thousands
        for k in range(len(REGION_COLUMNS)):  # shown after "sign" (visual order only; the CSV appends them)
            header.moveSection(len(COLUMNS) + k, 2 + k)
        self.setMinimumHeight(140)
        self._columns_sized = self._region_columns_sized = False

    def show_table(self, table: pp.ClusterTable, regions: dict[str, list[str]] | None) -> None:
        self.table_model.set_table(table, regions)
        if not self._columns_sized and len(table):
            self.resizeColumnsToContents()
            self._columns_sized = True
        self.size_region_columns()

    def show_regions(self, regions: dict[str, list[str]] | None) -> None:
        self.table_model.set_regions(regions)
        self.size_region_columns()

    def size_region_columns(self) -> None:
        """Fit the atlas columns once they have text (capped widths)."""
        if self._region_columns_sized or not any((self.table_model.regions or {}).get("peak_region", [])):
            return
        for c, cap in zip(range(len(COLUMNS), len(COLUMNS) + len(REGION_COLUMNS)), REGION_WIDTH_CAPS):
            self.resizeColumnToContents(c)
            self.setColumnWidth(c, min(self.columnWidth(c), cap))
        self._region_columns_sized = True

    def cluster_id(self, index) -> int | None:
        """The cluster id of a clicked (proxy) index."""
        src = self.table_proxy.mapToSource(index)
        return int(self.table_model.table.id[src.row()]) if src.isValid() else None
