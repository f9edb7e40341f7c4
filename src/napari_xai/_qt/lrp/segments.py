"""The segment editor of the LRP designer's Design tab: the segments of the shown configuration and the rule of
the selected one, its ten parameters grouped by the four steps of the paper's parameter guide."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout, QGroupBox
from qtpy.QtWidgets import QLabel, QLineEdit, QTableWidgetItem, QVBoxLayout

from ...core.errors import UserError
from ...core.lrp import CUSTOM, PARAM_HELP, PRESETS, STEPS, RuleParams, Segment, formula, match_preset, resolve
from .._forms import button, double_spin, label, read_only_table, row
from .common import PARAM_RANGE, REST, SEGMENT_COLOURS

SYMBOLS = {"alpha": "α", "beta": "β", "epsilon": "ε", "theta0": "θ0", "theta1": "θ1", "gamma0": "γ0",
           "gamma1": "γ1", "gamma1p": "γ1p", "gamma1n": "γ1n", "gamma2": "γ2"}


def rule_spin(name: str) -> QDoubleSpinBox:
    """A spin box for one of the unified rule's ten parameters, its guide text as tooltip."""
    lo, hi = PARAM_RANGE.get(name, (-10.0, 10.0))
    eps = name == "epsilon"
    spin = double_spin(lo, hi, 0.0, 0.01 if eps else 0.05, 4 if eps else 3, PARAM_HELP[name])
    spin.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
    spin.setMinimumWidth(90)
    spin.setPrefix(f"{SYMBOLS[name]} ")
    return spin


class SegmentEditor(QGroupBox):
    """Segments (start and end layer, rule) of the manager's shown configuration; the '(rest)' row is its default
    rule. ``host`` is the designer, ``tab`` the Design tab (layer table and ruler)."""

    def __init__(self, host, tab):
        super().__init__("Segments (execution order)")
        self.host, self.tab = host, tab
        self._updating = False
        v = QVBoxLayout(self)
        self.segment_table = read_only_table(["segment", "start", "end", "rule", "formula"], stretch=4,
                                             select_rows=True)
        self.segment_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.segment_table.setMinimumHeight(150)
        self.segment_table.itemSelectionChanged.connect(self._on_segment_selected)
        v.addWidget(self.segment_table)
        self.add_segment_btn = button("Add segment from selected layers", self._add_segment_clicked)
        self.remove_segment_btn = button("Remove segment", self.remove_segment)
        v.addLayout(row(self.add_segment_btn, self.remove_segment_btn))
        v.addLayout(self._build_editor())
        v.addLayout(self._build_rule_spins())
        self.formula_label = label("")
        v.addWidget(self.formula_label)

    def _build_editor(self) -> QFormLayout:
        edit = QFormLayout()
        self.seg_name = QLineEdit()
        self.seg_name.editingFinished.connect(self._on_rule_edited)
        self.seg_start, self.seg_end = QComboBox(), QComboBox()
        for c in (self.seg_start, self.seg_end):
            c.currentIndexChanged.connect(self._on_rule_edited)
        self.preset = QComboBox()
        self.preset.addItems([p.name for p in PRESETS.values()] + [CUSTOM])
        for i, p in enumerate(PRESETS.values()):
            self.preset.setItemData(i, f"{p.title}: {p.formula} ({p.reference})", Qt.ItemDataRole.ToolTipRole)
        self.preset.currentTextChanged.connect(self._on_preset)
        edit.addRow("name", self.seg_name)
        edit.addRow("layers", row(self.seg_start, "to", self.seg_end))
        edit.addRow("rule", self.preset)
        return edit

    def _build_rule_spins(self) -> QGridLayout:
        """The unified rule's parameters, grouped by the four steps of the paper's parameter guide."""
        self.spins: dict[str, QDoubleSpinBox] = {}
        steps = QGridLayout()
        r = 0
        for title, names, guide in STEPS:
            lab = QLabel(title.replace(": ", ":\n", 1))
            lab.setToolTip(f"{title}. {guide}")
            steps.addWidget(lab, r, 0, (len(names) + 2) // 3, 1)
            for c, n in enumerate(names):
                spin = self.spins[n] = rule_spin(n)
                spin.valueChanged.connect(self._on_rule_edited)
                steps.addWidget(spin, r + c // 3, 1 + c % 3)
            r += (len(names) + 2) // 3
        return steps

    # ------------------------------------------------------------------ table
    def fill_table(self, select: int | None = None) -> None:
        cfg = self.host.manager.config
        rows = list(cfg.segments) if cfg else []
        self._updating = True
        self.segment_table.setRowCount(len(rows) + (1 if cfg else 0))
        for r, s in enumerate(rows):
            preset = PRESETS[s.preset].title if s.preset in PRESETS else "custom"
            for c, val in enumerate([s.name, s.start, s.end, preset, formula(s.rule)]):
                item = QTableWidgetItem(val)
                if c == 0:
                    item.setBackground(QColor(SEGMENT_COLOURS[r % len(SEGMENT_COLOURS)]))
                self.segment_table.setItem(r, c, item)
        if cfg:
            preset = PRESETS.get(match_preset(cfg.default))
            for c, val in enumerate([REST, "layers outside", "all segments", preset.title if preset else "custom",
                                     formula(cfg.default)]):
                self.segment_table.setItem(len(rows), c, QTableWidgetItem(val))
        self._updating = False
        if select is not None and 0 <= select < self.segment_table.rowCount():
            self.segment_table.selectRow(select)
        self.refresh_editor()

    def selected_row(self) -> int:
        rows = {i.row() for i in self.segment_table.selectedItems()}
        return min(rows) if rows else -1

    def _selected_rule(self) -> tuple[Segment | None, bool]:
        """(segment, is_rest) of the selected row."""
        cfg = self.host.manager.config
        r = self.selected_row()
        if cfg is None or r < 0:
            return None, False
        if r == len(cfg.segments):
            return None, True
        return cfg.segments[r], False

    def _on_segment_selected(self) -> None:
        if not self._updating:
            self.refresh_editor()

    # ------------------------------------------------------------------ editor
    def refresh_editor(self) -> None:
        seg, rest = self._selected_rule()
        cfg = self.host.manager.config
        self._updating = True
        names = [l.name for l in self.host.layers]
        for combo, value in ((self.seg_start, seg.start if seg else ""), (self.seg_end, seg.end if seg else "")):
            combo.clear()
            combo.addItems(names if names else ([value] if value else []))
            if value:
                if combo.findText(value) < 0:
                    combo.addItem(value)
                combo.setCurrentText(value)
        editable = seg is not None or rest
        for w in (self.seg_name, self.seg_start, self.seg_end):
            w.setEnabled(seg is not None)
        for w in (self.preset, *self.spins.values()):
            w.setEnabled(editable)
        rule = seg.rule if seg else (cfg.default if (rest and cfg) else RuleParams())
        self.seg_name.setText(seg.name if seg else (REST if rest else ""))
        self.preset.setCurrentText(match_preset(rule))
        for n, spin in self.spins.items():
            spin.setValue(getattr(rule, n))
        self.formula_label.setText(f"R_i = Σ_j [{formula(rule)}] R_j" if editable else "select a segment to edit its rule")
        self._updating = False
        self.tab.update_ruler()

    def _on_preset(self, name: str) -> None:
        if self._updating or name == CUSTOM or name not in PRESETS:
            return
        self._updating = True
        for n, spin in self.spins.items():
            spin.setValue(getattr(PRESETS[name].params, n))
        self._updating = False
        self._on_rule_edited()

    def _on_rule_edited(self, *_):
        if self._updating:
            return
        seg, rest = self._selected_rule()
        cfg = self.host.manager.config
        if cfg is None or (seg is None and not rest):
            return
        try:
            rule = RuleParams(**{n: float(s.value()) for n, s in self.spins.items()})
            rule.validate("rule")
        except UserError as exc:
            self.formula_label.setText(f"⚠ {exc}")
            return
        r = self.selected_row()
        if rest:
            cfg.default = rule
        else:
            seg.rule = rule
            name = self.seg_name.text().strip() or seg.name
            if name != seg.name and name in {s.name for s in cfg.segments}:
                self.formula_label.setText(f"⚠ a segment named {name!r} exists already")
                return
            seg.name = name
            seg.start = self.seg_start.currentText() or seg.start
            seg.end = self.seg_end.currentText() or seg.end
        self._changed(r)

    def _changed(self, select: int | None = None) -> None:
        self.fill_table(select=select)
        if self.host.layers:
            self.tab.fill_layer_table()

    # ------------------------------------------------------------------ segments
    def add_segment(self, start: str, end: str, preset: str = "lrp-epsilon", name: str | None = None,
                    **params: float) -> Segment:
        """Add a segment to the shown configuration (checked against the layers when they are listed)."""
        cfg = self.host.manager.config
        if cfg is None:
            raise UserError("create a configuration first.")
        base = PRESETS[preset].params if preset in PRESETS else RuleParams()
        rule = RuleParams.from_dict({**base.to_dict(), **params})
        names = {s.name for s in cfg.segments}
        name = name or next(f"segment {i}" for i in range(1, 1000) if f"segment {i}" not in names)
        seg = Segment(start, end, rule, name)
        trial = cfg.copy()
        trial.segments.append(seg)
        if self.host.layers:
            resolve(trial, self.host.layers)  # empty / overlapping / unknown layers: UserError before anything changes
        cfg.segments.append(seg)
        self._changed(len(cfg.segments) - 1)
        return seg

    def _add_segment_clicked(self):
        rows = self.tab.selected_layer_rows()
        if not rows:
            self.host.fail("select the layers of the new segment in the layer table first.")
            return
        try:
            self.add_segment(self.host.layers[rows[0]].name, self.host.layers[rows[-1]].name)
        except UserError as exc:
            self.host.fail(str(exc))

    def remove_segment(self) -> None:
        seg, _ = self._selected_rule()
        if seg is not None:
            self.host.manager.config.segments.remove(seg)
            self._changed()
