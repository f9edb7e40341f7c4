"""The Design tab of the LRP designer: the model's layers, the segment ruler and the segment editor."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import UserError
from ...core.lrp import LayerInfo, Segment, resolve
from ...core.lrp import CUSTOM, PARAM_HELP, PRESETS, STEPS, RuleParams, formula, match_preset
from ..model_picker import SOURCES, TRUST_TEXT, TRUST_TIP
from .common import KIND_TEXT, PARAM_RANGE, REST, SEGMENT_COLOURS, model_outputs, volume_from_layers
from .ruler import SegmentRuler


class DesignTab:
    """Design tab of :class:`~.designer.LrpDesignerWidget` (layer table, segments, rule editor)."""

    def _build_design(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        lay.addWidget(self._build_model_box())
        self._build_layer_table()
        lay.addWidget(self.layer_table, 2)
        lay.addWidget(self.ruler)
        lay.addWidget(self._build_config_box())
        lay.addWidget(self._build_segment_box(), 3)
        return page

    def _build_model_box(self) -> QGroupBox:
        """Model source, input layers and 'List layers'."""
        box = QGroupBox("Model and input")
        form = QFormLayout(box)
        self.source = QComboBox()
        self.source.addItems(list(SOURCES))
        self.path = QLineEdit()
        self.path.setPlaceholderText("bundle folder, .py file or TorchScript file")
        self.class_name = QLineEdit()
        self.class_name.setPlaceholderText("class in the .py file, e.g. MyNet")
        self.weights = QLineEdit()
        self.weights.setPlaceholderText("state_dict checkpoint (.pt)")
        self.kwargs = QLineEdit("{}")
        self.kwargs.setToolTip('constructor keyword arguments as JSON, e.g. {"in_channels": 2}')
        self.trust = QCheckBox(TRUST_TEXT)  # unticked: untrusted files load without running their code
        self.trust.setToolTip(TRUST_TIP)
        self.inputs = QListWidget()
        self.inputs.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.inputs.setMaximumHeight(48)
        self.inputs.setToolTip("Image layers of one grid; several become channels in this order.")
        self.list_btn = QPushButton("List layers")
        self.list_btn.setToolTip("Load the model and list its layers in execution order (one forward pass).")
        form.addRow("model", self.source)
        form.addRow("path", self.path)
        form.addRow("class", self.class_name)
        form.addRow("weights", self.weights)
        form.addRow("kwargs (JSON)", self.kwargs)
        form.addRow(self.trust)
        form.addRow("input layer(s)", self.inputs)
        form.addRow(self.list_btn)
        self.source.currentTextChanged.connect(self._on_source)
        self.list_btn.clicked.connect(self.list_layers)
        self._on_source()

        return box

    def _build_layer_table(self) -> None:
        """The model's layers in execution order, and the segment ruler under them."""
        self.layer_table = QTableWidget(0, 6)
        self.layer_table.setHorizontalHeaderLabels(["#", "layer", "type", "output", "LRP", "show"])
        self.layer_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.layer_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.layer_table.verticalHeader().setVisible(False)
        hdr = self.layer_table.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hdr.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.layer_table.setMinimumHeight(220)
        self.layer_table.setToolTip("Select rows and press 'Add segment' to make them a segment; tick 'show' to see "
                                    "the relevance arriving at a layer.")
        self.layer_table.itemChanged.connect(self._on_layer_item_changed)
        self.ruler = SegmentRuler()

    def _build_segment_box(self) -> QGroupBox:
        """The segment table and the editor of the selected segment's rule."""
        box = QGroupBox("Segments (execution order)")
        v = QVBoxLayout(box)
        self.segment_table = QTableWidget(0, 5)
        self.segment_table.setHorizontalHeaderLabels(["segment", "start", "end", "rule", "formula"])
        self.segment_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.segment_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.segment_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.segment_table.verticalHeader().setVisible(False)
        sh = self.segment_table.horizontalHeader()
        sh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        sh.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        self.segment_table.setMinimumHeight(150)
        self.segment_table.itemSelectionChanged.connect(self._on_segment_selected)
        v.addWidget(self.segment_table)
        row = QHBoxLayout()
        self.add_segment_btn = QPushButton("Add segment from selected layers")
        self.add_segment_btn.clicked.connect(self._add_segment_clicked)
        self.remove_segment_btn = QPushButton("Remove segment")
        self.remove_segment_btn.clicked.connect(self.remove_segment)
        row.addWidget(self.add_segment_btn)
        row.addWidget(self.remove_segment_btn)
        v.addLayout(row)
        edit = QFormLayout()
        self.seg_name = QLineEdit()
        self.seg_name.editingFinished.connect(self._on_rule_edited)
        self.seg_start = QComboBox()
        self.seg_end = QComboBox()
        self.seg_start.currentIndexChanged.connect(self._on_rule_edited)
        self.seg_end.currentIndexChanged.connect(self._on_rule_edited)
        self.preset = QComboBox()
        self.preset.addItems([p.name for p in PRESETS.values()] + [CUSTOM])
        for i, p in enumerate(PRESETS.values()):
            self.preset.setItemData(i, f"{p.title}: {p.formula} ({p.reference})", Qt.ItemDataRole.ToolTipRole)
        self.preset.currentTextChanged.connect(self._on_preset)
        startend = QHBoxLayout()
        startend.addWidget(self.seg_start)
        startend.addWidget(QLabel("to"))
        startend.addWidget(self.seg_end)
        edit.addRow("name", self.seg_name)
        edit.addRow("layers", startend)
        edit.addRow("rule", self.preset)
        v.addLayout(edit)
        v.addLayout(self._build_rule_spins())
        self.formula_label = QLabel("")
        self.formula_label.setWordWrap(True)
        v.addWidget(self.formula_label)
        return box

    def _build_rule_spins(self) -> QGridLayout:
        """The unified rule's parameters, grouped by the four steps of the paper's parameter guide."""
        self.spins: dict[str, QDoubleSpinBox] = {}
        steps = QGridLayout()
        row = 0
        for title, names, guide in STEPS:
            lab = QLabel(title.replace(": ", ":\n", 1))
            lab.setToolTip(f"{title}. {guide}")
            steps.addWidget(lab, row, 0, (len(names) + 2) // 3, 1)
            for c, n in enumerate(names):
                spin = QDoubleSpinBox()
                spin.setButtonSymbols(QDoubleSpinBox.ButtonSymbols.NoButtons)
                spin.setMinimumWidth(90)
                lo, hi = PARAM_RANGE.get(n, (-10.0, 10.0))
                spin.setRange(lo, hi)
                spin.setDecimals(4 if n == "epsilon" else 3)
                spin.setSingleStep(0.05 if n != "epsilon" else 0.01)
                spin.setPrefix(f"{self._symbol(n)} ")
                spin.setToolTip(PARAM_HELP[n])
                spin.valueChanged.connect(self._on_rule_edited)
                self.spins[n] = spin
                steps.addWidget(spin, row + c // 3, 1 + c % 3)
            row += (len(names) + 2) // 3
        return steps

    @staticmethod
    def _symbol(name: str) -> str:
        return {"alpha": "α", "beta": "β", "epsilon": "ε", "theta0": "θ0", "theta1": "θ1", "gamma0": "γ0",
                "gamma1": "γ1", "gamma1p": "γ1p", "gamma1n": "γ1n", "gamma2": "γ2"}[name]

    def list_layers(self) -> list[LayerInfo]:
        """Load the model and list its layers in execution order (one forward pass on the GUI thread)."""
        from ...core.explain import prepare_input, prepare_target
        from ...core.lrp import list_layers
        from ...core.methods.registry import RunContext

        try:
            model = self.load_model()
            if model.is_scripted:
                raise UserError("the LRP designer needs an eager nn.Module, but the model is TorchScript; "
                                "load it as a .py file with weights or a MONAI bundle.")
            volume = volume_from_layers(self._viewer, self.input_names())
            x, *_ = prepare_input(volume, model)
            seg, outputs = model_outputs(model, x, self.output_index.value())
            # the layers do not depend on the mask: a segmentation model is listed with a whole-volume mask
            module, _, names, *_ = prepare_target(model, x, volume, 0 if seg else None, seg,
                                                   np.ones(volume.shape, bool) if seg else None, None,
                                                   self.output_index.value(), 26, RunContext())
            self.layers = list_layers(module, x)
        except UserError as exc:
            self._fail(str(exc))
            return []
        self._set_classes(names)
        self.check.refresh_layers()
        self._fill_layer_table()
        self._refresh_segment_editor()
        n_rule = sum(l.kind == "rule" for l in self.layers)
        text = f"{len(self.layers)} layers in execution order, {n_rule} take a segment rule."
        if outputs > 1:
            text += (f"\nThe model returns {outputs} outputs (deep supervision?); output {self.output_index.value()} "
                     "is explained ('model output' in the Run tab picks another).")
        self.status.setText(text)
        return self.layers

    def _set_classes(self, names: list[str]) -> None:
        current = self.target.currentText()
        self.target.clear()
        self.target.addItems(["predicted", *names])
        self.target.setCurrentText(current if current in names else "predicted")
        self._set_compare_targets(names)

    def _fill_layer_table(self) -> None:
        cfg = self.config
        owner: dict[str, str] = {}
        try:
            owner = resolve(cfg, self.layers).owner if cfg is not None and self.layers else {}
        except UserError:
            pass
        self._updating = True
        self.layer_table.setRowCount(len(self.layers))
        show = set(cfg.intermediate) if cfg else set()
        for r, l in enumerate(self.layers):
            shape = "×".join(map(str, l.output_shape[1:])) if l.output_shape else "-"
            kind = KIND_TEXT.get(l.kind, l.kind)
            if l.kind == "rule":
                seg = owner.get(l.name)
                kind = f"→ {seg}" if seg else "→ rest"
            values = [str(l.index), l.name, l.type, shape, kind]
            for c, val in enumerate(values):
                item = QTableWidgetItem(val)
                if l.kind == "none":
                    item.setForeground(QColor("#ff6b6b"))
                self.layer_table.setItem(r, c, item)
            chk = QTableWidgetItem("")
            chk.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            chk.setCheckState(Qt.CheckState.Checked if l.name in show else Qt.CheckState.Unchecked)
            chk.setToolTip("show the relevance arriving at this layer's output after a run")
            self.layer_table.setItem(r, 5, chk)
        self._updating = False
        self._update_ruler()

    def _on_layer_item_changed(self, item: QTableWidgetItem) -> None:
        if self._updating or item.column() != 5 or self.config is None:
            return
        name = self.layers[item.row()].name
        inter = [n for n in self.config.intermediate if n != name]
        if item.checkState() == Qt.CheckState.Checked:
            inter.append(name)
        self.config.intermediate = inter

    def set_intermediate(self, names: list[str]) -> None:
        """Layers whose incoming relevance is shown after a run (the 'show' column)."""
        if self.config is not None:
            self.config.intermediate = list(names)
        self._fill_layer_table()

    def _update_ruler(self) -> None:
        cfg = self.config
        spans = []
        if cfg is not None and self.layers:
            index = {l.name: l.index for l in self.layers}
            for s in cfg.segments:
                if s.start in index and s.end in index:
                    spans.append((index[s.start], index[s.end], s.name))
        self.ruler.set_data(self.layers, spans, self._selected_segment())

    # ------------------------------------------------------------------ segments
    def _fill_segment_table(self, select: int | None = None) -> None:
        cfg = self.config
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
            r = len(rows)
            preset = PRESETS.get(match_preset(cfg.default))
            for c, val in enumerate([REST, "layers outside", "all segments", preset.title if preset else "custom",
                                     formula(cfg.default)]):
                self.segment_table.setItem(r, c, QTableWidgetItem(val))
        self._updating = False
        if select is not None and 0 <= select < self.segment_table.rowCount():
            self.segment_table.selectRow(select)
        self._refresh_segment_editor()

    def _selected_segment(self) -> int:
        rows = {i.row() for i in self.segment_table.selectedItems()}
        return min(rows) if rows else -1

    def _selected_rule(self) -> tuple[Segment | None, bool]:
        """(segment, is_rest) of the selected row."""
        cfg = self.config
        r = self._selected_segment()
        if cfg is None or r < 0:
            return None, False
        if r == len(cfg.segments):
            return None, True
        return cfg.segments[r], False

    def _on_segment_selected(self) -> None:
        if not self._updating:
            self._refresh_segment_editor()

    def _refresh_segment_editor(self) -> None:
        seg, rest = self._selected_rule()
        cfg = self.config
        self._updating = True
        names = [l.name for l in self.layers]
        for combo, value in ((self.seg_start, seg.start if seg else ""), (self.seg_end, seg.end if seg else "")):
            combo.clear()
            combo.addItems(names if names else ([value] if value else []))
            if value:
                if combo.findText(value) < 0:
                    combo.addItem(value)
                combo.setCurrentText(value)
        editable = seg is not None or rest
        self.seg_name.setEnabled(seg is not None)
        self.seg_start.setEnabled(seg is not None)
        self.seg_end.setEnabled(seg is not None)
        self.preset.setEnabled(editable)
        for s in self.spins.values():
            s.setEnabled(editable)
        rule = seg.rule if seg else (cfg.default if (rest and cfg) else RuleParams())
        self.seg_name.setText(seg.name if seg else (REST if rest else ""))
        self.preset.setCurrentText(match_preset(rule))
        for n, spin in self.spins.items():
            spin.setValue(getattr(rule, n))
        self.formula_label.setText(f"R_i = Σ_j [{formula(rule)}] R_j" if editable else "select a segment to edit its rule")
        self._updating = False
        self._update_ruler()

    def _rule_from_spins(self) -> RuleParams:
        return RuleParams(**{n: float(s.value()) for n, s in self.spins.items()})

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
        cfg = self.config
        if cfg is None or (seg is None and not rest):
            return
        try:
            rule = self._rule_from_spins()
            rule.validate("rule")
        except UserError as exc:
            self.formula_label.setText(f"⚠ {exc}")
            return
        row = self._selected_segment()
        if rest:
            cfg.default = rule
        else:
            seg.rule = rule
            name = self.seg_name.text().strip() or seg.name
            if name != seg.name and name in {s.name for s in cfg.segments}:
                self.formula_label.setText(f"⚠ a segment named {name!r} exists already")
                return
            seg.name = name
            if self.seg_start.currentText():
                seg.start = self.seg_start.currentText()
            if self.seg_end.currentText():
                seg.end = self.seg_end.currentText()
        self._fill_segment_table(select=row)
        if self.layers:
            self._fill_layer_table()

    def add_segment(self, start: str, end: str, preset: str = "lrp-epsilon", name: str | None = None,
                    **params: float) -> Segment:
        """Add a segment to the shown configuration (checked against the layers when they are listed)."""
        cfg = self.config
        if cfg is None:
            raise UserError("create a configuration first.")
        base = PRESETS[preset].params if preset in PRESETS else RuleParams()
        rule = RuleParams.from_dict({**base.to_dict(), **params})
        names = {s.name for s in cfg.segments}
        name = name or next(f"segment {i}" for i in range(1, 1000) if f"segment {i}" not in names)
        seg = Segment(start, end, rule, name)
        trial = cfg.copy()
        trial.segments.append(seg)
        if self.layers:
            resolve(trial, self.layers)  # empty / overlapping / unknown layers: UserError before anything changes
        cfg.segments.append(seg)
        self._fill_segment_table(select=len(cfg.segments) - 1)
        if self.layers:
            self._fill_layer_table()
        return seg

    def _add_segment_clicked(self):
        rows = sorted({i.row() for i in self.layer_table.selectedItems()})
        if not rows:
            self._fail("select the layers of the new segment in the layer table first.")
            return
        try:
            self.add_segment(self.layers[rows[0]].name, self.layers[rows[-1]].name)
        except UserError as exc:
            self._fail(str(exc))

    def remove_segment(self) -> None:
        seg, _ = self._selected_rule()
        if seg is not None:
            self.config.segments.remove(seg)
            self._fill_segment_table()
            if self.layers:
                self._fill_layer_table()
