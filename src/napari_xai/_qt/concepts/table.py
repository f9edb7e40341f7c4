"""The Concepts dock's table: one row per concept (channel, relevance share, top region, share in the region).

Sortable by any column (numbers sort as numbers); starts sorted by share, largest first. Rows carry their
channel, so a click or a selection gives channels whatever the sort order.
"""

from __future__ import annotations

import math

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem

COLUMNS = ("channel", "share", "region", "in region")
HEADERS = ("ch", "share", "top region", "in it")
SHARE_COLUMN = 1
SORT_ROLE = Qt.ItemDataRole.UserRole + 1
CHANNEL_ROLE = Qt.ItemDataRole.UserRole + 2


class SortItem(QTableWidgetItem):
    """A cell that sorts by its :data:`SORT_ROLE` value (numbers as numbers), not by its text."""

    def __lt__(self, other):  # noqa: D105 (Qt API)
        a, b = self.data(SORT_ROLE), other.data(SORT_ROLE)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return (-math.inf if math.isnan(a) else a) < (-math.inf if math.isnan(b) else b)
        return str(a) < str(b)


def percent(value: float) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


class ConceptTable(QTableWidget):
    """Rows of a :class:`~napari_xai.core.concepts.ConceptResult`; extended selection for Compare."""

    def __init__(self, parent=None):
        super().__init__(0, len(COLUMNS), parent)
        self.setHorizontalHeaderLabels(list(HEADERS))
        for col, tip in enumerate(("channel of the layer", "its share of the layer's relevance",
                                   "the atlas region with most of its positive relevance",
                                   "the share of its positive relevance in that region")):
            self.horizontalHeaderItem(col).setToolTip(tip)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.verticalHeader().setVisible(False)
        self.setTextElideMode(Qt.TextElideMode.ElideMiddle)  # "Para…pal_L": the side stays readable
        header = self.horizontalHeader()
        for col in range(len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)  # the region name takes what is left
        self.setMinimumHeight(140)
        self.setToolTip("click a concept to show its conditional heatmap; select several (Ctrl/Shift) and press "
                        "Compare; click a header to sort")

    def fill(self, result) -> None:
        """One row per concept of ``result``; sorted by share, largest first."""
        self.setSortingEnabled(False)
        self.clearContents()
        self.setRowCount(len(result.concepts))
        for row, c in enumerate(result.concepts):
            region, rshare = c.top_region
            cells = ((str(c.channel), c.channel), (percent(c.share), c.share), (region or "–", region),
                     (percent(rshare), rshare))
            for col, (text, key) in enumerate(cells):
                item = SortItem(text)
                item.setData(SORT_ROLE, key)
                item.setData(CHANNEL_ROLE, c.channel)
                if col != 2:
                    item.setTextAlignment(int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter))
                item.setToolTip(c.label + f"; relevance {c.relevance:.4g} ({percent(c.share)} of the layer's)")
                self.setItem(row, col, item)
        self.setSortingEnabled(True)
        self.sortItems(SHARE_COLUMN, Qt.SortOrder.DescendingOrder)

    def channel_at(self, row: int) -> int:
        return int(self.item(row, 0).data(CHANNEL_ROLE))

    def channels(self) -> list[int]:
        """Channels in the table's current order."""
        return [self.channel_at(r) for r in range(self.rowCount())]

    def shares(self) -> list[float]:
        """Shares in the table's current order."""
        return [float(self.item(r, SHARE_COLUMN).data(SORT_ROLE)) for r in range(self.rowCount())]

    def selected_channels(self) -> list[int]:
        """Channels of the selected rows, in the table's order."""
        rows = sorted({i.row() for i in self.selectedIndexes()})
        return [self.channel_at(r) for r in rows]

    def select_channels(self, channels) -> None:
        """Select the rows of these channels (for scripts and tests; a user Ctrl-clicks)."""
        self.clearSelection()
        mode = self.selectionMode()
        self.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for r in range(self.rowCount()):
            if self.channel_at(r) in set(channels):
                self.selectRow(r)
        self.setSelectionMode(mode)
