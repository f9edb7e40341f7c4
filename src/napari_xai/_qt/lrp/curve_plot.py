"""The flipping-curve plot of the Check tab: score against flipped share, one curve per order, AOPC in the legend."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget


from .common import ORDER_COLOURS, ORDER_TEXT

class CurvePlot(QWidget):
    """Target score against the share of flipped regions, one line per curve, with AOPC in the legend.

    ``set_curves`` takes FlipCurves (labelled and coloured by their order) or
    ``(label, colour, curve)`` triples (e.g. one MoRF curve per comparison cell).
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self.curves: list = []
        self.entries: list = []
        self.setMinimumHeight(170)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def set_curves(self, curves: list) -> None:
        self.entries = [c if isinstance(c, tuple) else (ORDER_TEXT.get(c.order, c.order),
                                                        ORDER_COLOURS.get(c.order, "#ffffff"), c) for c in curves]
        self.curves = [e[2] for e in self.entries]
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("#262930"))
        font = QFont()
        font.setPointSize(8)
        p.setFont(font)
        p.setPen(QColor("#bbbbbb"))
        if not self.curves:
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "run a flipping curve")
            return
        left, right, top, bottom = 52, 10, 10, 34
        w, h = self.width() - left - right, self.height() - top - bottom
        xs = [c.fractions for c in self.curves]
        ys = np.concatenate([np.asarray(c.scores, float) for c in self.curves])
        x1 = max(max(x) for x in xs) or 1.0
        y0, y1 = float(ys.min()), float(ys.max())
        if y1 - y0 < 1e-12:
            y0, y1 = y0 - 1, y1 + 1
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def pt(fx, fy):
            return QPointF(left + w * fx / x1, top + h * (1 - (fy - y0) / (y1 - y0)))

        p.drawRect(QRectF(left, top, w, h))
        for k in range(3):
            v = y0 + (y1 - y0) * k / 2
            p.drawText(QRectF(0, pt(0, v).y() - 7, left - 4, 14), Qt.AlignmentFlag.AlignRight, f"{v:.3g}")
            f = x1 * k / 2
            p.drawText(QRectF(pt(f, y0).x() - 20, top + h + 2, 40, 14), Qt.AlignmentFlag.AlignCenter, f"{100 * f:.0f}%")
        p.drawText(QRectF(left, top + h + 16, w, 14), Qt.AlignmentFlag.AlignCenter,
                   "regions flipped → target score (logit)")
        for label, colour, c in self.entries:
            pen = QPen(QColor(colour))
            pen.setWidthF(2.0)
            p.setPen(pen)
            for a, b in zip(range(len(c.scores) - 1), range(1, len(c.scores))):
                p.drawLine(pt(c.fractions[a], c.scores[a]), pt(c.fractions[b], c.scores[b]))
        # legend on a translucent box, over the lines
        texts = [f"{label}: AOPC {c.aopc:.4g}" for label, _, c in self.entries]
        width = max(p.fontMetrics().horizontalAdvance(t) for t in texts) + 10
        p.fillRect(QRectF(left + w - width - 4, top + 2, width + 2, 13 * len(texts) + 4), QColor(38, 41, 48, 210))
        for i, ((_, colour, _), text) in enumerate(zip(self.entries, texts)):
            p.setPen(QColor(colour))
            p.drawText(QRectF(left + 6, top + 4 + 13 * i, w - 12, 13), Qt.AlignmentFlag.AlignRight, text)
        p.end()
