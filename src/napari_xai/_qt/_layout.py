"""Dock layout shared by the widgets: forms scroll, so every dock fits a laptop screen.

A dock's minimum height adds to the window's when docks are stacked (two tall
docks made the window taller than a 1200 px screen), and its width is taken
from the canvas. Each widget therefore puts its controls into a
:class:`DockScroll`: its minimum size is small (the content scrolls), its
preferred size is the content's, capped at :data:`DOCK_WIDTH` × :data:`DOCK_MAX_HEIGHT`.
"""

from __future__ import annotations

from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

# napari's layer docks take ~330 px on the left: a dock of at most ~290 px leaves the canvas half of a
# 1280 px window (the user can widen it; narrower, the form scrolls sideways)
DOCK_WIDTH = 280
DOCK_MAX_HEIGHT = 600  # preferred height at most; the minimum is far smaller
DOCK_MIN_HEIGHT = 80  # a few rows of the form; all six docks stacked fit an 800 px window


class DockScroll(QScrollArea):
    """A frameless scroll area around ``body`` with a small minimum and a capped preferred size."""

    def __init__(self, body: QWidget, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setWidget(body)
        compact(body)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        hint = self.widget().sizeHint()
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(min(hint.width() + bar, DOCK_WIDTH), min(hint.height(), DOCK_MAX_HEIGHT))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(min(self.widget().minimumSizeHint().width() + bar, DOCK_WIDTH), DOCK_MIN_HEIGHT)


def compact(widget: QWidget, chars: int = 8) -> None:
    """Let the combo boxes under ``widget`` be narrower than their longest item (it shows in the popup)."""
    from qtpy.QtWidgets import QComboBox

    for combo in widget.findChildren(QComboBox):
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(chars)


def scroll_body(widget: QWidget) -> QWidget:
    """Give ``widget`` a scrolling content area and return the (empty) body to lay the controls out in."""
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    body = QWidget()
    outer.addWidget(DockScroll(body), 1)
    return body


def scrolled(page: QWidget) -> DockScroll:
    """``page`` (e.g. a tab) inside a :class:`DockScroll`."""
    return DockScroll(page)


def into_scroll_area(widget: QWidget) -> DockScroll:
    """Move the rows of ``widget``'s (vertical box) layout into a :class:`DockScroll` in their place.

    For a magicgui ``Container`` (napari docks its ``.native``, so magicgui's own
    ``scrollable`` does not reach the dock). Rows keep their order and widgets.
    """
    layout = widget.layout()
    body = QWidget()
    inner = QVBoxLayout(body)
    inner.setContentsMargins(layout.contentsMargins())
    inner.setSpacing(layout.spacing())
    while layout.count():
        item = layout.takeAt(0)
        if item.widget() is not None:
            inner.addWidget(item.widget())
        elif item.layout() is not None:
            inner.addLayout(item.layout())
        elif item.spacerItem() is not None:
            inner.addItem(item.spacerItem())
    inner.addStretch(1)
    layout.setContentsMargins(0, 0, 0, 0)
    scroll = DockScroll(body)
    layout.addWidget(scroll)
    return scroll
