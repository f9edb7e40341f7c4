"""Small Qt builders the docks share: rows, buttons, labels, combo boxes, spin boxes, check items, tables.

Each returns a configured widget or layout, so a dock's layout code says what is on screen (text, tooltip, the
slot it calls) without repeating the same five setter calls for every control.
"""

from __future__ import annotations

from typing import Callable, Iterable

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
)


def row(*items, stretch: int | None = None) -> QHBoxLayout:
    """A horizontal row of widgets, layouts and label texts; ``(item, n)`` gives an item stretch ``n``.

    ``stretch`` adds a trailing stretch of that factor.
    """
    lay = QHBoxLayout()
    for it in items:
        item, factor = it if isinstance(it, tuple) else (it, 0)
        if isinstance(item, str):
            item = QLabel(item)
        if isinstance(item, QLayout):
            lay.addLayout(item, factor)
        else:
            lay.addWidget(item, factor)
    if stretch is not None:
        lay.addStretch(stretch)
    return lay


def group_form(title: str) -> tuple[QGroupBox, QFormLayout]:
    """A titled group with a form layout inside."""
    box = QGroupBox(title)
    return box, QFormLayout(box)


def button(text: str, slot: Callable | None = None, tip: str | None = None, *, checkable: bool = False,
           enabled: bool = True) -> QPushButton:
    """A push button wired to ``slot`` (called without Qt's ``checked`` argument unless it is checkable)."""
    b = QPushButton(text)
    b.setCheckable(checkable)
    b.setEnabled(enabled)
    if tip:
        b.setToolTip(tip)
    if slot is not None:
        (b.toggled if checkable else b.clicked).connect(slot if checkable else (lambda *_: slot()))
    return b


def label(text: str = "", style: str | None = None, tip: str | None = None) -> QLabel:
    """A word-wrapping label."""
    lab = QLabel(text)
    lab.setWordWrap(True)
    if style:
        lab.setStyleSheet(style)
    if tip:
        lab.setToolTip(tip)
    return lab


def checkbox(text: str, checked: bool = False, tip: str | None = None, slot: Callable | None = None) -> QCheckBox:
    cb = QCheckBox(text)
    cb.setChecked(checked)
    if tip:
        cb.setToolTip(tip)
    if slot is not None:
        cb.toggled.connect(slot)
    return cb


def combo(items: Iterable[str] = (), tip: str | None = None) -> QComboBox:
    c = QComboBox()
    c.addItems(list(items))
    if tip:
        c.setToolTip(tip)
    return c


def spin(lo: int, hi: int, value: int | None = None, tip: str | None = None) -> QSpinBox:
    s = QSpinBox()
    s.setRange(lo, hi)
    if value is not None:
        s.setValue(value)
    if tip:
        s.setToolTip(tip)
    return s


def double_spin(lo: float, hi: float, value: float, step: float, decimals: int = 2,
                tip: str | None = None) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(lo, hi)
    s.setDecimals(decimals)
    s.setSingleStep(step)
    s.setValue(value)
    if tip:
        s.setToolTip(tip)
    return s


def fill_combo(c: QComboBox, names: Iterable[str], keep: str | None = None) -> None:
    """Replace the items without emitting signals; keep the current (or ``keep``) text when it is still there."""
    names = list(names)
    current = c.currentText() if keep is None else keep
    c.blockSignals(True)
    c.clear()
    c.addItems(names)
    idx = c.findText(current)
    c.setCurrentIndex(idx if idx >= 0 else (0 if names else -1))
    c.blockSignals(False)


def check_state(on: bool) -> Qt.CheckState:
    return Qt.CheckState.Checked if on else Qt.CheckState.Unchecked


def checkable(item: QListWidgetItem | QTableWidgetItem, on: bool, tip: str | None = None):
    """Make a list or table item a tick box in state ``on``; returns the item."""
    item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
    item.setCheckState(check_state(on))
    if tip:
        item.setToolTip(tip)
    return item


def checked_texts(widget: QListWidget) -> list[str]:
    """The texts of the ticked items of a list."""
    return [widget.item(i).text() for i in range(widget.count())
            if widget.item(i).checkState() == Qt.CheckState.Checked]


def tick(widget: QListWidget, names: Iterable[str]) -> None:
    """Tick exactly the items whose text is in ``names``."""
    names = set(names)
    for i in range(widget.count()):
        widget.item(i).setCheckState(check_state(widget.item(i).text() in names))


def fill_checklist(widget: QListWidget, texts: Iterable[str], on: Callable[[str], bool]) -> None:
    """Replace a list's items by tick boxes; ``on(text)`` says which start ticked."""
    widget.clear()
    for text in texts:
        widget.addItem(checkable(QListWidgetItem(text), on(text)))


def read_only_table(headers: list[str], stretch: int | None = -1, select_rows: bool = False) -> QTableWidget:
    """A read-only table with these column headers, no row numbers, and nothing elided.

    Columns fit their contents (headers and cells are never cut to "negati…"); column ``stretch`` (-1: the last
    one, None: none) takes the remaining width, and a narrow dock scrolls sideways.
    """
    t = QTableWidget(0, len(headers))
    t.setHorizontalHeaderLabels(headers)
    t.verticalHeader().setVisible(False)
    hdr = t.horizontalHeader()
    hdr.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    if stretch == -1:
        hdr.setStretchLastSection(True)
    elif stretch is not None:
        hdr.setSectionResizeMode(stretch, QHeaderView.ResizeMode.Stretch)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    if select_rows:
        t.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    return t


def fill_table(table: QTableWidget, rows: list[list[str]]) -> None:
    """Replace the table's rows by these texts."""
    table.setRowCount(len(rows))
    for r, texts in enumerate(rows):
        for c, text in enumerate(texts):
            table.setItem(r, c, QTableWidgetItem(text))


def chosen(c: QComboBox, missing: str) -> str:
    """The combo box's text; a :class:`UserError` saying ``missing`` when nothing is chosen."""
    from ..core.errors import UserError

    text = c.currentText()
    if not text:
        raise UserError(missing)
    return text
