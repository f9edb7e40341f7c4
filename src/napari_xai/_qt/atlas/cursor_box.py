"""The Atlas dock's "Under the cursor" group: region name, probability, MNI coordinate, all probabilities."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QGroupBox, QListWidget, QToolButton, QVBoxLayout

from ...core import atlas as at
from .._forms import label, row


def lookup_text(lk: at.Lookup) -> str:
    """The region line: name, probability, and whether it is below the threshold."""
    if not lk.name:
        return "— (no region)"
    text = lk.name
    if lk.probability is not None:
        text += f"  {lk.probability * 100:.0f}%"
        if lk.below_threshold:
            text += " (below threshold: no outline)"
    return text


def probability_lines(lk: at.Lookup) -> list[str]:
    """Every region's probability at the point (a label atlas: its one region)."""
    if lk.probabilities:
        return [f"{p * 100:5.1f}%  {name}" for name, p in lk.probabilities]
    if lk.name:
        return [f"100.0%  {lk.name} (label atlas)"]
    return ["no region here"]


class CursorBox(QGroupBox):
    """Region and MNI coordinate under the mouse; *All probabilities* lists every region's probability there."""

    def __init__(self, parent=None):
        super().__init__("Under the cursor", parent)
        self.last_lookup: at.Lookup | None = None
        self.probabilistic = True  # no atlas yet: the button is enabled
        self.region_label = label("—", style="font-weight: bold; font-size: 14px;")
        self.region_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.coord_label = label("MNI (x, y, z) mm")
        self.coord_label.setWordWrap(False)
        self.prob_button = QToolButton()
        self.prob_button.setText("All probabilities")
        self.prob_button.setCheckable(True)
        self.prob_button.setToolTip("Probabilistic atlases: every region's probability at the cursor")
        self.prob_button.toggled.connect(self.show_probabilities)
        self.prob_list = QListWidget()
        self.prob_list.setMaximumHeight(110)
        self.prob_list.setVisible(False)
        lay = QVBoxLayout(self)
        lay.addWidget(self.region_label)
        lay.addLayout(row((self.coord_label, 1), self.prob_button))
        lay.addWidget(self.prob_list)

    def show_lookup(self, lk: at.Lookup) -> None:
        self.last_lookup = lk
        x, y, z = lk.xyz_mm
        self.coord_label.setText(f"MNI ({x:.1f}, {y:.1f}, {z:.1f}) mm")
        self.region_label.setText(lookup_text(lk))
        if self.prob_list.isVisible():
            self._fill(lk)

    def show_probabilities(self, on: bool) -> None:
        """Show or hide the list (the button works for probabilistic atlases, and before any atlas is loaded)."""
        self.prob_button.setEnabled(self.probabilistic)
        self.prob_list.setVisible(bool(on))
        if on and self.last_lookup is not None:
            self._fill(self.last_lookup)

    def _fill(self, lk: at.Lookup) -> None:
        self.prob_list.clear()
        self.prob_list.addItems(probability_lines(lk))

    def clear(self) -> None:
        self.last_lookup = None
        self.probabilistic = True
        self.region_label.setText("—")
