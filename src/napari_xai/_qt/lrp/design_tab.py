"""The Design tab of the LRP designer: the model and input, its layers in execution order, the segment ruler,
the configuration manager and the segment editor (:mod:`.segments`)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QAbstractItemView, QListWidget, QListWidgetItem, QTableWidgetItem, QVBoxLayout, QWidget

from ...core.errors import UserError
from ...core.lrp import LayerInfo, resolve
from .._forms import button, checkable, group_form, read_only_table
from .common import KIND_TEXT, model_outputs, volume_from_layers
from .ruler import SegmentRuler
from .segments import SegmentEditor

SHOW_COLUMN = 5
SCRIPTED = ("the LRP designer needs an eager nn.Module, but the model is TorchScript; "
            "load it as a .py file with weights or a MONAI bundle.")


class DesignTab(QWidget):
    """Model and input, the layer table and ruler, the configurations and segments; ``host`` is the designer."""

    def __init__(self, host):
        super().__init__()
        self.host = host
        self._updating = False
        lay = QVBoxLayout(self)
        lay.addWidget(self._build_model_box())
        self.layer_table = read_only_table(["#", "layer", "type", "output", "LRP", "show"], stretch=1,
                                           select_rows=True)
        self.layer_table.setMinimumHeight(220)
        self.layer_table.setToolTip("Select rows and press 'Add segment' to make them a segment; tick 'show' to see "
                                    "the relevance arriving at a layer.")
        self.layer_table.itemChanged.connect(self._on_layer_item_changed)
        self.ruler = SegmentRuler()
        self.segments = SegmentEditor(host, self)
        lay.addWidget(self.layer_table, 2)
        lay.addWidget(self.ruler)
        lay.addWidget(host.manager)
        lay.addWidget(self.segments, 3)

    def _build_model_box(self):
        """The shared model picker (with its trust checkbox), the input layers and 'List layers'."""
        box, form = group_form("Model and input")
        form.addRow(self.host.picker.form().native)
        self.inputs = QListWidget()
        self.inputs.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        self.inputs.setMaximumHeight(48)
        self.inputs.setToolTip("Image layers of one grid; several become channels in this order.")
        form.addRow("input layer(s)", self.inputs)
        self.list_btn = button("List layers", self.list_layers,
                               "Load the model and list its layers in execution order (one forward pass).")
        form.addRow(self.list_btn)
        return box

    # ------------------------------------------------------------------ inputs
    def set_input_choices(self, names: list[str]) -> None:
        selected = {i.text() for i in self.inputs.selectedItems()}
        self.inputs.clear()
        for name in names:
            item = QListWidgetItem(name)
            self.inputs.addItem(item)
            item.setSelected(name in selected)
        if not selected and self.inputs.count():
            self.inputs.item(0).setSelected(True)

    def set_inputs(self, names: list[str]) -> None:
        for i in range(self.inputs.count()):
            item = self.inputs.item(i)
            item.setSelected(item.text() in names)

    def input_names(self) -> list[str]:
        return [self.inputs.item(i).text() for i in range(self.inputs.count()) if self.inputs.item(i).isSelected()]

    # ------------------------------------------------------------------ layers
    def list_layers(self) -> list[LayerInfo]:
        """Load the model and list its layers in execution order (one forward pass on the GUI thread)."""
        from ...core.explain import prepare_input, prepare_target
        from ...core.lrp import list_layers
        from ...core.methods.registry import RunContext

        host = self.host
        index = host.run_tab.output_index.value()
        try:
            model = host.load_model()
            if model.is_scripted:
                raise UserError(SCRIPTED)
            volume = volume_from_layers(host._viewer, host.input_names())
            x, *_ = prepare_input(volume, model)
            seg, outputs = model_outputs(model, x, index)
            # the layers do not depend on the mask: a segmentation model is listed with a whole-volume mask
            module, _, names, *_ = prepare_target(model, x, volume, 0 if seg else None, seg,
                                                   np.ones(volume.shape, bool) if seg else None, None,
                                                   index, 26, RunContext())
            host.layers = list_layers(module, x)
        except UserError as exc:
            host.fail(str(exc))
            return []
        host.set_classes(names)
        host.check.refresh_layers()
        self.fill_layer_table()
        self.segments.refresh_editor()
        n_rule = sum(l.kind == "rule" for l in host.layers)
        text = f"{len(host.layers)} layers in execution order, {n_rule} take a segment rule."
        if outputs > 1:
            text += (f"\nThe model returns {outputs} outputs (deep supervision?); output {index} "
                     "is explained ('model output' in the Run tab picks another).")
        host.status.setText(text)
        return host.layers

    def show_config(self) -> None:
        """Show the manager's current configuration: its segments and, with listed layers, who owns each."""
        self.segments.fill_table()
        if self.host.layers:
            self.fill_layer_table()

    def fill_layer_table(self) -> None:
        cfg, layers = self.host.manager.config, self.host.layers
        owner: dict[str, str] = {}
        try:
            owner = resolve(cfg, layers).owner if cfg is not None and layers else {}
        except UserError:
            pass
        self._updating = True
        self.layer_table.setRowCount(len(layers))
        show = set(cfg.intermediate) if cfg else set()
        for r, l in enumerate(layers):
            shape = "×".join(map(str, l.output_shape[1:])) if l.output_shape else "-"
            kind = KIND_TEXT.get(l.kind, l.kind)
            if l.kind == "rule":
                kind = f"→ {owner[l.name]}" if owner.get(l.name) else "→ rest"
            for c, val in enumerate([str(l.index), l.name, l.type, shape, kind]):
                item = QTableWidgetItem(val)
                if l.kind == "none":
                    item.setForeground(QColor("#ff6b6b"))
                self.layer_table.setItem(r, c, item)
            chk = checkable(QTableWidgetItem(""), l.name in show,
                            "show the relevance arriving at this layer's output after a run")
            chk.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            self.layer_table.setItem(r, SHOW_COLUMN, chk)
        self._updating = False
        self.update_ruler()

    def _on_layer_item_changed(self, item: QTableWidgetItem) -> None:
        cfg = self.host.manager.config
        if self._updating or item.column() != SHOW_COLUMN or cfg is None:
            return
        name = self.host.layers[item.row()].name
        inter = [n for n in cfg.intermediate if n != name]
        if item.checkState() == Qt.CheckState.Checked:
            inter.append(name)
        cfg.intermediate = inter

    def set_intermediate(self, names: list[str]) -> None:
        """Layers whose incoming relevance is shown after a run (the 'show' column)."""
        if self.host.manager.config is not None:
            self.host.manager.config.intermediate = list(names)
        self.fill_layer_table()

    def selected_layer_rows(self) -> list[int]:
        return sorted({i.row() for i in self.layer_table.selectedItems()})

    def update_ruler(self) -> None:
        cfg, layers = self.host.manager.config, self.host.layers
        spans = []
        if cfg is not None and layers:
            index = {l.name: l.index for l in layers}
            spans = [(index[s.start], index[s.end], s.name) for s in cfg.segments
                     if s.start in index and s.end in index]
        self.ruler.set_data(layers, spans, self.segments.selected_row())
