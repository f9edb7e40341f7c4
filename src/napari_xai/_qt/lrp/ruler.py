"""The segment ruler of the LRP designer: the model's layers as a strip, segments as coloured spans."""

from __future__ import annotations

from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ...core.lrp import LayerInfo
from .common import SEGMENT_COLOURS

class SegmentRuler(QWidget):
    """Layers as ticks in execution order (tall ticks: Conv/Linear), segments as coloured spans."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.layers: list[LayerInfo] = []
        self.spans: list[tuple[int, int, str]] = []
        self.selected = -1
        self.setMinimumHeight(58)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Layers in execution order (tall ticks: Conv/Linear layers that take a segment rule); "
                        "coloured bars: segments.")

    def set_data(self, layers: list[LayerInfo], spans: list[tuple[int, int, str]], selected: int = -1) -> None:
        self.layers, self.spans, self.selected = list(layers), list(spans), selected
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        n = len(self.layers)
        if not n:
            p.setPen(QColor("#aaaaaa"))
            p.drawText(8, h // 2 + 4, "press 'List layers' to see the model's layers")
            return
        left, right = 8.0, w - 8.0
        step = (right - left) / n
        base = h - 14.0
        for i, layer in enumerate(self.layers):
            x = left + (i + 0.5) * step
            tall = layer.kind == "rule"
            p.setPen(QPen(QColor("#ffffff" if tall else "#888888"), 1.4 if tall else 1.0))
            p.drawLine(int(x), int(base), int(x), int(base - (16 if tall else 7)))
        font = QFont()
        font.setPointSize(8)
        p.setFont(font)
        for k, (a, b, name) in enumerate(self.spans):
            colour = QColor(SEGMENT_COLOURS[k % len(SEGMENT_COLOURS)])
            colour.setAlpha(230 if k == self.selected else 170)
            rect = QRectF(left + a * step + 1, 4, (b - a + 1) * step - 2, 20)
            p.fillRect(rect, colour)
            if k == self.selected:
                p.setPen(QPen(QColor("#ffffff"), 2))
                p.drawRect(rect)
            p.setPen(QColor("#ffffff"))
            p.drawText(rect, Qt.AlignmentFlag.AlignCenter, name)
        p.setPen(QColor("#bbbbbb"))
        p.drawText(int(left), h - 2, "#0 input")
        end = f"#{n - 1} output"
        p.drawText(int(right - p.fontMetrics().horizontalAdvance(end)), h - 2, end)
