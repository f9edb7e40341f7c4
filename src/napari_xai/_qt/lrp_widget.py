"""LRP designer dock widget: segments with rules, named configurations, intermediate relevance, comparison.

After Huang et al., "A Visual Designer of Layer-wise Relevance Propagation
Models", for 3D medical networks inside napari:

* **Design** tab: the model's layers in execution order (name, type, output
  shape, how LRP treats them), a segment ruler, the configuration manager
  (create, duplicate, rename, delete, activate, load, save as JSON) and the
  segment editor with the ten parameters of the unified rule, grouped by the
  four steps of the paper's parameter guide.
* **Run** tab: target class, segmentation mask (predicted region, a Labels
  layer or the connected component under a click: the voxel in 2D, the first
  voxel of the predicted region along the view ray in 3D), ground truth for
  readouts; runs the active configuration and shows the relevance per channel
  and their sum, the relevance at segment boundaries and chosen layers, the
  predicted segmentation, conservation, channel shares and mask readouts.
* **Check** tab (:mod:`.check_panel`): voxel flipping (painted, or ranked by a
  relevance layer as a flipping curve with AOPC), channel ablation and the
  randomization sanity check (Adebayo et al. 2018).
* **Compare** tab: runs every ticked configuration/method for every ticked
  target and model (``core.compare``) on the same input and shows the cells
  side by side in napari's grid mode with identical colour limits, each cell
  labelled with what varies (configuration · target · model); the grid is
  saved as one PNG.

Thin by design: all numbers come from ``napari_xai.core`` (``lrp``,
``explain``, ``metrics``). Work runs in a worker thread; layers are touched
only in the worker's ``returned`` callback on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..core.errors import Cancelled, UserError
from ..core.lrp import LayerInfo, LrpConfig, Segment, default_config, load_configs, resolve, save_configs
from ..core.lrp import CUSTOM, PARAM_HELP, PRESETS, STEPS, RuleParams, formula, match_preset
from ..core.compare import cell_limits, common_limit
from .._layers import array_on_grid, intermediate_layer_data, point_on_grid, signed_layers
from ._jobs import fail, report_error, start_worker
from ._layout import compact, scrolled
from .check_panel import fill_table, read_only_table
from ..core.segmentation import Ray

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger(__name__)

from .explain_widget import SOURCES  # noqa: E402  - one list of model sources for every widget

MASK_SOURCES = ("predicted region", "Labels layer", "component at point")
SEGMENT_COLOURS = ["#e6550d", "#3182bd", "#31a354", "#756bb1", "#de2d26", "#636363", "#fd8d3c", "#6baed6"]
KIND_TEXT = {"rule": "segment rule", "pass": "pass", "sum": "sum rule", "gradient": "gradient", "none": "NO RULE"}
REST = "(rest)"
PARAM_RANGE = {"alpha": (0.0, 10.0), "beta": (0.0, 9.0), "epsilon": (0.0, 100.0)}
META_KEY = "xai_lrp"


def volume_from_layers(viewer, names: list[str]):
    """Stack image layers (one grid) into a :class:`Volume` in their files' voxel order and affine."""
    from .._layers import volume_from_layers as stack_layers

    if not names:
        raise UserError("select at least one input image layer (File › Open Sample › napari-xai › Demo brain).")
    for name in names:
        data = np.asarray(viewer.layers[name].data)
        if data.ndim != 3:
            raise UserError(f"layer '{name}' is {data.ndim}D; the LRP designer explains 3D volumes.")
    return stack_layers([viewer.layers[name] for name in names])


def model_outputs(model, x, index: int = 0) -> tuple[bool, int]:
    """(does output ``index`` hold a logit map (N, C, D, H, W)?, how many tensors the model returns) for input ``x``."""
    from ..core.explain import predict_cached
    from ..core.segmentation import is_segmentation_output, pick_output

    raw = predict_cached(model.module, x)  # the explanation that follows reuses this prediction
    count = sum(1 for o in raw if hasattr(o, "shape")) if isinstance(raw, (tuple, list)) else 1
    return is_segmentation_output(pick_output(raw, min(index, max(count - 1, 0)))), count


def is_segmentation(model, x, index: int = 0) -> bool:
    """True when the model's output ``index`` (of a tuple; a single output is output 0) is a logit map."""
    return model_outputs(model, x, index)[0]


# ---------------------------------------------------------------------------
# the segment ruler
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# the dock widget
# ---------------------------------------------------------------------------


class LrpDesignerWidget(QWidget):
    """The LRP designer dock widget (Plugins › napari-xai › LRP designer)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(parent)
        self._viewer = napari_viewer
        self.configs: list[LrpConfig] = []
        self.active: str | None = None
        self.layers: list[LayerInfo] = []
        self.point: tuple[int, int, int] | None = None
        self.last_result = None
        self.last_comparison: list = []
        self.last_cells: tuple | None = None
        self.cell_readouts: list[dict] = []  # (request, core.compare cells, loaded models) of the last comparison
        self.readouts: dict[str, Any] = {}
        self._model = None
        self._model_key = None
        self._worker = None
        self._cancel = threading.Event()
        self._progress = [0.0, ""]
        self._picking = False
        self._updating = False
        self._grid_state: dict | None = None
        self._build()
        self._timer = QTimer(self)
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        for ev in ("inserted", "removed", "reordered"):
            getattr(self._viewer.layers.events, ev).connect(self.refresh_layer_choices)
        self._viewer.mouse_drag_callbacks.append(self._on_click)
        self.refresh_layer_choices()
        self.new_config("configuration 1")

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 2, 0, 2)
        self.tabs = QTabWidget()
        outer.addWidget(self.tabs)
        # the pages scroll (the check panel scrolls its own groups): the dock fits a laptop screen
        self.tabs.addTab(scrolled(self._build_design()), "Design")
        self.tabs.addTab(scrolled(self._build_run()), "Run")
        self.tabs.addTab(scrolled(self._build_compare()), "Compare")
        from .check_panel import CheckPanel

        self.check = CheckPanel(self)
        self.tabs.addTab(self.check, "Check")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        outer.addWidget(self.progress)
        outer.addWidget(self.status)
        compact(self)

    def _build_design(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        # model and input
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
        form.addRow("input layer(s)", self.inputs)
        form.addRow(self.list_btn)
        lay.addWidget(box)
        self.source.currentTextChanged.connect(self._on_source)
        self.list_btn.clicked.connect(self.list_layers)
        self._on_source()

        # layers
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
        lay.addWidget(self.layer_table, 2)
        self.ruler = SegmentRuler()
        lay.addWidget(self.ruler)

        # configuration manager
        box = QGroupBox("Configurations")
        grid = QGridLayout(box)
        self.config_combo = QComboBox()
        self.config_combo.currentTextChanged.connect(self._on_config_selected)
        self.active_label = QLabel("")
        grid.addWidget(self.config_combo, 0, 0, 1, 3)
        grid.addWidget(self.active_label, 0, 3, 1, 2)
        buttons = [("New", self._new_clicked), ("Duplicate", self._duplicate_clicked), ("Rename", self._rename_clicked),
                   ("Delete", self.delete_config), ("Activate", self.activate), ("Load…", self._load_clicked),
                   ("Save…", self._save_clicked)]
        self.config_buttons = {}
        for i, (text, fn) in enumerate(buttons):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, f=fn: f())
            self.config_buttons[text] = b
            grid.addWidget(b, 1 + i // 4, i % 4)
        self.zero_bias = QCheckBox("zero biases (conserving rules)")
        self.zero_bias.setToolTip("Leave layer biases out of every rule; then rules with alpha - beta = 1 and small "
                                  "epsilon conserve relevance exactly.")
        self.zero_bias.toggled.connect(self._on_zero_bias)
        grid.addWidget(self.zero_bias, 2, 3)
        frow = QHBoxLayout()
        self.filter_kind = QComboBox()
        self.filter_kind.addItems(["no filter", "pass", "clamp"])
        self.filter_kind.setToolTip(
            "Filter inside LRP (Joa et al.): at every rule layer but the last, the relevance is divided by its largest\n"
            "|value|; 'pass' zeroes values outside [α1, α2], 'clamp' clamps them into it; then it is scaled back.\n"
            "E.g. pass [0, 0.4] removes the top 60 % of the amplitude range, clamp [0, 0.2] flattens the top 80 %.")
        self.filter_a1, self.filter_a2 = QDoubleSpinBox(), QDoubleSpinBox()
        for spin, value in ((self.filter_a1, 0.0), (self.filter_a2, 1.0)):
            spin.setRange(0.0, 1.0)
            spin.setSingleStep(0.05)
            spin.setDecimals(2)
            spin.setMinimumWidth(80)
            spin.setValue(value)
            spin.valueChanged.connect(self._on_filter)
        self.filter_kind.currentTextChanged.connect(self._on_filter)
        frow.addWidget(QLabel("filter inside LRP"))
        frow.addWidget(self.filter_kind)
        frow.addWidget(QLabel("α1"))
        frow.addWidget(self.filter_a1)
        frow.addWidget(QLabel("α2"))
        frow.addWidget(self.filter_a2)
        grid.addLayout(frow, 3, 0, 1, 4)
        lay.addWidget(box)

        # segments
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
        v.addLayout(steps)
        self.formula_label = QLabel("")
        self.formula_label.setWordWrap(True)
        v.addWidget(self.formula_label)
        lay.addWidget(box, 3)
        return page

    @staticmethod
    def _symbol(name: str) -> str:
        return {"alpha": "α", "beta": "β", "epsilon": "ε", "theta0": "θ0", "theta1": "θ1", "gamma0": "γ0",
                "gamma1": "γ1", "gamma1p": "γ1p", "gamma1n": "γ1n", "gamma2": "γ2"}[name]

    def _build_run(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        box = QGroupBox("Target")
        form = QFormLayout(box)
        self.target = QComboBox()
        self.target.addItem("predicted")
        self.mask_source = QComboBox()
        self.mask_source.addItems(MASK_SOURCES)
        self.mask_source.setToolTip("Segmentation models: explain the sum of the target class's logits inside this mask.")
        self.mask_layer = QComboBox()
        self.pick_btn = QPushButton("Pick point (click on the component)")
        self.pick_btn.setCheckable(True)
        self.pick_btn.toggled.connect(self._on_pick_toggled)
        self.point_label = QLabel("no point")
        self.truth_layer = QComboBox()
        self.truth_layer.setToolTip("Ground-truth Labels layer: relevance mass, rank accuracy, inclusivity.")
        self.output_index = QSpinBox()
        self.output_index.setRange(0, 15)
        self.output_index.setToolTip("Models that return several outputs (a tuple, e.g. deep supervision):\n"
                                     "which one to explain. 0 = the first. 'List layers' finds how many there are.")
        self.boundaries = QCheckBox("relevance at segment boundaries")
        self.boundaries.setChecked(True)
        form.addRow("target class", self.target)
        form.addRow("mask (segmentation)", self.mask_source)
        form.addRow("mask layer", self.mask_layer)
        pr = QHBoxLayout()
        pr.addWidget(self.pick_btn)
        pr.addWidget(self.point_label)
        form.addRow("point", pr)
        form.addRow("ground truth", self.truth_layer)
        form.addRow("model output (tuple)", self.output_index)
        form.addRow(self.boundaries)
        lay.addWidget(box)
        row = QHBoxLayout()
        self.run_btn = QPushButton("Run active configuration")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.run_btn)
        row.addWidget(self.cancel_btn)
        lay.addLayout(row)
        self.readout_table = read_only_table(["readout", "value"])
        lay.addWidget(self.readout_table, 1)
        return page

    def _build_compare(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        intro = QLabel("Every ticked configuration/method runs for every ticked target and model "
                       "on the same input; one grid cell each, one colour scale for all.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        self.compare_list = QListWidget()
        self.compare_list.setToolTip("LRP configurations of this designer and the registry's methods.")
        lay.addWidget(QLabel("configurations and methods"))
        lay.addWidget(self.compare_list, 3)
        axes = QHBoxLayout()
        tcol, mcol = QVBoxLayout(), QVBoxLayout()
        tcol.addWidget(QLabel("targets"))
        self.compare_targets = QListWidget()
        self.compare_targets.setToolTip("Classes to explain; 'predicted' is each model's own prediction.")
        tcol.addWidget(self.compare_targets)
        mcol.addWidget(QLabel("models"))
        self.compare_models = QListWidget()
        self.compare_models.setToolTip("Models to compare; none = the model of the Design tab.\n"
                                       "Choose a model in the Design tab and press 'Add model'.")
        mcol.addWidget(self.compare_models)
        mrow = QHBoxLayout()
        self.add_model_btn = QPushButton("Add model")
        self.add_model_btn.setToolTip("Add the Design tab's model source to the comparison.")
        self.add_model_btn.clicked.connect(self._add_model_clicked)
        self.remove_model_btn = QPushButton("Remove")
        self.remove_model_btn.clicked.connect(self._remove_model_clicked)
        mrow.addWidget(self.add_model_btn)
        mrow.addWidget(self.remove_model_btn)
        mcol.addLayout(mrow)
        axes.addLayout(tcol)
        axes.addLayout(mcol)
        lay.addLayout(axes, 2)
        self._compare_sources: dict[str, tuple[str, dict]] = {}
        self._set_compare_targets([])
        opts = QHBoxLayout()
        self.compare_3d = QCheckBox("3D view")
        self.compare_3d.setChecked(True)
        self.compare_common = QCheckBox("one colour scale for all cells")
        self.compare_common.setChecked(True)
        self.compare_common.setToolTip("Untick when methods with different units meet (e.g. occlusion and LRP):\n"
                                       "then each cell is scaled to its own 99.99th percentile of |relevance|.")
        opts.addWidget(self.compare_3d)
        opts.addWidget(self.compare_common)
        lay.addLayout(opts)
        row = QHBoxLayout()
        self.compare_btn = QPushButton("Compare in grid")
        self.compare_btn.clicked.connect(lambda: self.compare())
        self.save_png_btn = QPushButton("Save PNG…")
        self.save_png_btn.clicked.connect(self._save_png_clicked)
        self.exit_grid_btn = QPushButton("Exit grid")
        self.exit_grid_btn.clicked.connect(self.exit_grid)
        row.addWidget(self.compare_btn)
        row.addWidget(self.save_png_btn)
        row.addWidget(self.exit_grid_btn)
        lay.addLayout(row)
        srow = QHBoxLayout()
        self.sweep_btn = QPushButton("Add α sweep of the active configuration")
        self.sweep_btn.setToolTip("Copies of the active configuration with a [0, α] filter inside LRP for α = 0.2, 0.4, "
                                  "0.6, 0.8, ticked with the original (Joa et al.'s α sweep).")
        self.sweep_btn.clicked.connect(self._sweep_clicked)
        self.sweep_kind = QComboBox()
        self.sweep_kind.addItems(["pass", "clamp"])
        srow.addWidget(self.sweep_btn, 1)
        srow.addWidget(self.sweep_kind)
        lay.addLayout(srow)
        self.cell_table = read_only_table(["cell", "Σ relevance", "mass in GT", "rank acc.", "D(R,GT)", "D(R,x)"])
        self.cell_table.setToolTip("Per cell: the relevance sum and, with a ground truth chosen in the Run tab, the mask "
                                   "readouts (relevance mass, rank accuracy, inclusivity).")
        lay.addWidget(self.cell_table, 1)
        return page

    # ------------------------------------------------------------------ viewer choices
    def refresh_layer_choices(self, *_):
        from napari.layers import Image, Labels

        images = [l.name for l in self._viewer.layers if isinstance(l, Image) and META_KEY not in l.metadata
                  and "xai_relevance" not in l.metadata and "xai_explorer" not in l.metadata
                  and "xai_check" not in l.metadata]
        labels = [l.name for l in self._viewer.layers if isinstance(l, Labels) and META_KEY not in l.metadata
                  and "xai_check" not in l.metadata]
        selected = {i.text() for i in self.inputs.selectedItems()}
        self.inputs.clear()
        for name in images:
            item = QListWidgetItem(name)
            self.inputs.addItem(item)
            item.setSelected(name in selected)
        if not selected and self.inputs.count():
            self.inputs.item(0).setSelected(True)
        for combo in (self.mask_layer, self.truth_layer):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItem("")
            combo.addItems(labels)
            combo.setCurrentText(current if current in labels else "")
            combo.blockSignals(False)
        if not self.truth_layer.currentText():
            gt = [n for n in labels if "ground truth" in n.lower()]
            if gt:
                self.truth_layer.setCurrentText(gt[0])

    def set_inputs(self, names: list[str]) -> None:
        for i in range(self.inputs.count()):
            item = self.inputs.item(i)
            item.setSelected(item.text() in names)

    def input_names(self) -> list[str]:
        return [self.inputs.item(i).text() for i in range(self.inputs.count()) if self.inputs.item(i).isSelected()]

    def _on_source(self, *_):
        kind = SOURCES[self.source.currentText()]
        self.path.setEnabled(kind != "demo")
        self.class_name.setEnabled(kind == "python")
        self.weights.setEnabled(kind == "python")
        self.kwargs.setEnabled(kind == "python")

    # ------------------------------------------------------------------ model and layers
    def model_source(self) -> tuple[str, dict]:
        kind = SOURCES[self.source.currentText()]
        if kind == "demo":
            return "demo", {}
        path = self.path.text().strip()
        if not path:
            raise UserError(f"enter the {self.source.currentText()} path.")
        if kind == "python":
            cls = self.class_name.text().strip()
            if not cls:
                raise UserError("enter the model class name (e.g. MyNet) for the .py file.")
            return f"{path}:{cls}", {"weights": self.weights.text().strip() or None,
                                     "model_kwargs": self.kwargs.text().strip() or "{}"}
        return path, {}

    def load_model(self):
        """The model for the current source (cached)."""
        from ..core.models import load_model

        source, extra = self.model_source()
        key = (source, tuple(sorted(extra.items())))
        if self._model is None or self._model_key != key:
            _refuse_torchscript(source)
            self._model = load_model(source, device="cpu", **extra)
            self._model_key = key
        return self._model

    def list_layers(self) -> list[LayerInfo]:
        """Load the model and list its layers in execution order (one forward pass on the GUI thread)."""
        from ..core.explain import prepare_input, prepare_target
        from ..core.lrp import list_layers
        from ..core.methods.registry import RunContext

        try:
            model = self.load_model()
            if model.is_scripted:
                raise UserError("the LRP designer needs an eager nn.Module, but the model is TorchScript; "
                                "load it as a .py file with weights or a MONAI bundle.")
            volume = volume_from_layers(self._viewer, self.input_names())
            x, *_ = prepare_input(volume, model)
            seg, outputs = model_outputs(model, x, self.output_index.value())
            # the layers do not depend on the mask: a segmentation model is listed with a whole-volume mask
            t = prepare_target(model, x, volume, 0 if seg else None, seg, np.ones(volume.shape, bool) if seg else None,
                               None, self.output_index.value(), 26, RunContext())
            names = t.names
            self.layers = list_layers(t.module, x)
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

    # ------------------------------------------------------------------ configurations
    @property
    def config(self) -> LrpConfig | None:
        name = self.config_combo.currentText()
        for c in self.configs:
            if c.name == name:
                return c
        return None

    def config_named(self, name: str) -> LrpConfig:
        for c in self.configs:
            if c.name == name:
                return c
        raise UserError(f"there is no configuration {name!r}.")

    def _unique(self, base: str) -> str:
        names = {c.name for c in self.configs}
        if base not in names:
            return base
        i = 2
        while f"{base} ({i})" in names:
            i += 1
        return f"{base} ({i})"

    def _refresh_configs(self, select: str | None = None) -> None:
        self.config_combo.blockSignals(True)
        self.config_combo.clear()
        self.config_combo.addItems([c.name for c in self.configs])
        if select is not None:
            self.config_combo.setCurrentText(select)
        self.config_combo.blockSignals(False)
        if self.active not in {c.name for c in self.configs}:
            self.active = self.configs[0].name if self.configs else None
        self.active_label.setText(f"active: {self.active}" if self.active else "no configuration")
        self._refresh_compare_list()
        self._on_config_selected()

    def new_config(self, name: str | None = None, from_layers: bool = True) -> LrpConfig:
        """Create a configuration: the γ | ε | 0 composite over the listed layers, or an empty one."""
        name = self._unique(name or "configuration")
        if from_layers and self.layers:
            cfg = default_config(self.layers, name)
        else:
            cfg = LrpConfig(name=name)
        self.configs.append(cfg)
        if self.active is None:
            self.active = cfg.name
        self._refresh_configs(cfg.name)
        return cfg

    def duplicate_config(self, name: str | None = None) -> LrpConfig:
        src = self.config
        if src is None:
            raise UserError("there is no configuration to duplicate.")
        cfg = src.copy(self._unique(name or f"{src.name} copy"))
        self.configs.append(cfg)
        self._refresh_configs(cfg.name)
        return cfg

    def sweep_filter(self, kind: str = "pass", alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)) -> list[str]:
        """Copies of the active configuration with an in-LRP filter [0, α] for each α, ticked for comparison.

        With the original (no filter) and a ground truth in the Run tab, the
        Compare tab's table then shows how the readouts change with α (the α
        sweep of Joa et al.). Returns the compare-list labels of the sweep.
        """
        from ..core.lrp import LayerFilter

        base = self.config_named(self.active) if self.active else self.config
        if base is None:
            raise UserError("create a configuration first.")
        names = []
        for a in alphas:
            cfg = base.copy(self._unique(f"{base.name} · {a:g}-{kind}"))
            cfg.filter = LayerFilter(kind, 0.0, float(a))
            self.configs.append(cfg)
            names.append(cfg.name)
        self._refresh_configs(base.name)
        labels = [f"config: {base.name}"] + [f"config: {n}" for n in names]
        self._tick(self.compare_list, labels)
        self.status.setText(f"{len(names)} filtered copies of '{base.name}' added and ticked with it; press "
                            "'Compare in grid'.")
        return labels

    def _sweep_clicked(self):
        try:
            self.sweep_filter(self.sweep_kind.currentText())
        except UserError as exc:
            self._fail(str(exc))

    def rename_config(self, name: str) -> None:
        cfg = self.config
        name = name.strip()
        if cfg is None or not name:
            return
        if name != cfg.name and name in {c.name for c in self.configs}:
            raise UserError(f"a configuration named {name!r} exists already.")
        if self.active == cfg.name:
            self.active = name
        cfg.name = name
        self._refresh_configs(name)

    def delete_config(self) -> None:
        cfg = self.config
        if cfg is None:
            return
        self.configs.remove(cfg)
        if not self.configs:
            self.configs.append(LrpConfig(name="configuration 1"))
        self._refresh_configs(self.configs[0].name)

    def activate(self, name: str | None = None) -> None:
        """Make a configuration the active one (the one 'Run' uses)."""
        name = name or self.config_combo.currentText()
        self.config_named(name)
        self.active = name
        self.active_label.setText(f"active: {name}")

    def save_configs(self, path: str | Path) -> Path:
        return save_configs(path, self.configs, self.active)

    def load_configs(self, path: str | Path, replace: bool = False) -> list[LrpConfig]:
        configs, active = load_configs(path)
        if replace:
            self.configs = []
        for c in configs:
            c.name = self._unique(c.name)
            self.configs.append(c)
        if active and replace:
            self.active = active
        self._refresh_configs(configs[0].name)
        return configs

    def _new_clicked(self):
        name, ok = QInputDialog.getText(self, "New configuration", "name:", text=self._unique("configuration"))
        if ok and name.strip():
            self.new_config(name.strip())

    def _duplicate_clicked(self):
        try:
            self.duplicate_config()
        except UserError as exc:
            self._fail(str(exc))

    def _rename_clicked(self):
        cfg = self.config
        if cfg is None:
            return
        name, ok = QInputDialog.getText(self, "Rename configuration", "name:", text=cfg.name)
        if ok:
            try:
                self.rename_config(name)
            except UserError as exc:
                self._fail(str(exc))

    def _load_clicked(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load LRP configurations", "", "JSON (*.json)")
        if path:
            try:
                self.load_configs(path)
            except UserError as exc:
                self._fail(str(exc))

    def _save_clicked(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save LRP configurations", "lrp_configs.json", "JSON (*.json)")
        if path:
            try:
                self.status.setText(f"saved {self.save_configs(path)}")
            except UserError as exc:
                self._fail(str(exc))

    def _on_config_selected(self, *_):
        cfg = self.config
        self._updating = True
        self.zero_bias.setChecked(bool(cfg.zero_bias) if cfg else False)
        filt = cfg.filter if cfg else None
        self.filter_kind.setCurrentText(filt.kind if filt else "no filter")
        self.filter_a1.setValue(filt.alpha1 if filt else 0.0)
        self.filter_a2.setValue(filt.alpha2 if filt else 1.0)
        self._updating = False
        self._fill_segment_table()
        if self.layers:
            self._fill_layer_table()

    def set_filter(self, kind: str | None, alpha1: float = 0.0, alpha2: float = 1.0) -> None:
        """Set the active configuration's in-LRP relevance filter (None: no filter)."""
        self.filter_a1.setValue(alpha1)
        self.filter_a2.setValue(alpha2)
        self.filter_kind.setCurrentText(kind or "no filter")
        self._on_filter()

    def _on_filter(self, *_):
        from ..core.lrp import LayerFilter

        if self._updating or self.config is None:
            return
        kind = self.filter_kind.currentText()
        if kind == "no filter":
            self.config.filter = None
            return
        try:
            self.config.filter = LayerFilter(kind, self.filter_a1.value(), self.filter_a2.value())
        except UserError as exc:
            self.status.setText(f"error: {exc}")
            return
        self.status.setText(f"'{self.config.name}': {self.config.filter.label()} filter at every rule layer but the last.")

    def _on_zero_bias(self, on: bool) -> None:
        if not self._updating and self.config is not None:
            self.config.zero_bias = bool(on)

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

    # ------------------------------------------------------------------ point picking
    def _on_pick_toggled(self, on: bool) -> None:
        self._picking = bool(on)
        self.status.setText("click the component to explain (2D: the voxel; 3D: the first voxel of the target's "
                            "predicted region along the view ray)" if on else "")

    def _on_click(self, viewer, event):
        if not self._picking:
            return
        names = self.input_names()
        if not names:
            return
        layer = self._viewer.layers[names[0]]
        world = np.asarray(event.position, dtype=float)
        pos = np.asarray(layer.world_to_data(world), dtype=float)[-3:]
        direction = getattr(event, "view_direction", None)
        if self._viewer.dims.ndisplay == 3 and direction is not None:
            # the ray in data coordinates: map a second point along the view direction
            ahead = np.asarray(layer.world_to_data(world + np.asarray(direction, dtype=float)), dtype=float)[-3:]
            self.set_point(Ray(tuple(pos), tuple(ahead - pos)))
        else:
            self.set_point(tuple(int(round(v)) for v in pos))
        self.pick_btn.setChecked(False)

    def set_point(self, point: "tuple[int, int, int] | Ray | None") -> None:
        """The component to explain: a voxel (2D click) or a view ray (3D click), in the input's voxel coordinates."""
        if isinstance(point, Ray):
            self.point = point
            o = ", ".join(f"{v:.0f}" for v in point.origin)
            self.point_label.setText(f"ray through ({o})")
        else:
            self.point = None if point is None else tuple(int(v) for v in point)
            self.point_label.setText("no point" if point is None else f"voxel {self.point}")
        if point is not None:
            self.mask_source.setCurrentText("component at point")

    # ------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _mask_args(self, volume) -> dict:
        src = self.mask_source.currentText()
        if src == "Labels layer":
            name = self.mask_layer.currentText()
            if not name:
                raise UserError("choose the mask's Labels layer, or use the predicted region.")
            mask = array_on_grid(self._viewer.layers[name], volume)  # on the input file's voxel order
            return {"mask": mask}
        if src == "component at point":
            if self.point is None:
                raise UserError("pick a point first (press 'Pick point' and click on the component).")
            return {"point": point_on_grid(self.point, volume)}
        return {}

    def _request(self) -> dict:
        volume = volume_from_layers(self._viewer, self.input_names())
        source, extra = self.model_source()
        target = None if self.target.currentText() == "predicted" else self.target.currentText()
        truth = None
        if self.truth_layer.currentText():
            truth = array_on_grid(self._viewer.layers[self.truth_layer.currentText()], volume)
        return {"volume": volume, "source": source, "extra": extra, "target": target, "mask": self._mask_args(volume),
                "truth": truth, "boundaries": self.boundaries.isChecked(), "output_index": self.output_index.value()}

    def run(self, *_):
        """Explain with the active configuration (worker thread); layers appear when it returns."""
        if self._worker is not None:
            return
        try:
            cfg = self.config_named(self.active) if self.active else None
            if cfg is None:
                raise UserError("create and activate a configuration first.")
            req = self._request()
            cfg = cfg.copy()
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            model = self._load_for_worker(req)
            rel = self._explain(model, req, cfg)
            return "run", (model, req, cfg, rel)

        self._start(work, f"running '{cfg.name}'")

    def compare(self, items: list[str] | None = None, targets: list[str] | None = None,
                models: list[str] | None = None):
        """Run every configuration/method for every target and model on the same input; show them in napari's grid.

        ``items`` are labels of the compare list (``config: <name>`` or
        ``method: <name>``), ``targets`` class names or "predicted", ``models``
        keys of the models list; each defaults to the ticked entries (no model
        ticked: the Design tab's model).
        """
        from ..core.compare import plan

        if self._worker is not None:
            return
        items = items if items is not None else self._checked(self.compare_list)
        targets = targets if targets is not None else self._checked(self.compare_targets)
        models = models if models is not None else self._checked(self.compare_models)
        try:
            if not items:
                raise UserError("tick at least one configuration or method in the compare list.")
            whats = []
            for it in items:
                kind, _, name = it.partition(": ")
                if kind == "config":
                    self.config_named(name)
                elif kind == "method":
                    from ..core.methods.catalogue import get_method

                    name = get_method(name).name
                else:
                    raise UserError(f"unknown compare item {it!r}.")
                whats.append((kind, name))
            configs = {c.name: c.copy() for c in self.configs}
            if models:
                unknown = [m for m in models if m not in self._compare_sources]
                if unknown:
                    raise UserError(f"model {unknown[0]!r} is not in the models list; add it with 'Add model'.")
                sources = {m: self._compare_sources[m] for m in models}
            else:
                sources = {"": self.model_source()}
            # each model explains its own class of a ticked name; a model that does not name it (e.g. a
            # randomised copy) explains the name's position among the Design tab model's classes, with a note
            classes = [self.target.itemText(i) for i in range(1, self.target.count())]
            plan_items = plan(whats, [None if t == "predicted" else t for t in targets or [None]], list(sources))
            req = self._request()
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            from ..core.compare import run_comparison

            loaded = {}
            for key, (source, extra) in sources.items():
                if self._cancel.is_set():
                    raise Cancelled("cancelled by the user")
                self._progress[:] = [0.0, f"loading {key or 'the model'}"]
                loaded[key] = self._load_for_worker({"source": source, "extra": extra})
            first = next(iter(loaded.values()))
            seg = bool(req["mask"]) or is_segmentation(first, self._prepare(req, first), req["output_index"])
            cells = run_comparison(
                req["volume"], plan_items, loaded, configs, classes=classes,
                progress=lambda f, m: self._progress.__setitem__(slice(None), [f, m]),
                should_stop=self._cancel.is_set, segmentation=seg, output_index=req["output_index"], **req["mask"],
            )
            self.last_cells = (req, cells, loaded)  # for the Check tab's per-cell flipping curves
            return "compare", (req, [(c.label, c.relevance) for c in cells])

        self._start(work, f"comparing {len(plan_items)} cells")

    @staticmethod
    def _prepare(req, model):
        from ..core.explain import prepare_input

        return prepare_input(req["volume"], model)[0]

    def add_compare_model(self) -> str:
        """Add the Design tab's model source to the comparison's models list (ticked); returns its key."""
        from ..core.compare import model_name

        source, extra = self.model_source()
        same = [k for k, v in self._compare_sources.items() if v == (source, extra)]
        key = same[0] if same else model_name(source, extra.get("weights"), list(self._compare_sources))
        if key not in self._compare_sources:
            self._compare_sources[key] = (source, dict(extra))
            item = QListWidgetItem(key)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setToolTip(source)
            self.compare_models.addItem(item)
        for i in range(self.compare_models.count()):
            it = self.compare_models.item(i)
            if it.text() == key:
                it.setCheckState(Qt.CheckState.Checked)
        return key

    def _add_model_clicked(self):
        try:
            key = self.add_compare_model()
        except UserError as exc:
            self._fail(str(exc))
        else:
            self.status.setText(f"model '{key}' added to the comparison.")

    def _remove_model_clicked(self):
        for it in self.compare_models.selectedItems():
            self._compare_sources.pop(it.text(), None)
            self.compare_models.takeItem(self.compare_models.row(it))

    def _set_compare_targets(self, names: list[str]) -> None:
        checked = set(self._checked(self.compare_targets)) if hasattr(self, "compare_targets") else set()
        self.compare_targets.clear()
        for text in ["predicted", *names]:
            item = QListWidgetItem(text)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = text in checked or (not (checked & {"predicted", *names}) and text == "predicted")
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.compare_targets.addItem(item)

    def _load_for_worker(self, req):
        from ..core.models import load_model

        key = (req["source"], tuple(sorted(req["extra"].items())))
        if self._model is not None and self._model_key == key:
            return self._model
        _refuse_torchscript(req["source"])
        model = load_model(req["source"], device="cpu", **req["extra"])
        self._model, self._model_key = model, key
        return model

    def _explain(self, model, req, cfg: LrpConfig | None, method: str = "lrp", boundaries: bool | None = None):
        """Run :func:`explain` (worker thread) with the configuration object itself (no file)."""
        from ..core.explain import explain, prepare_input

        params: dict = {}
        if method == "lrp":
            params = {"config": cfg, "boundaries": req["boundaries"] if boundaries is None else boundaries}
        if "segmentation" not in req:
            req["segmentation"] = bool(req["mask"]) or is_segmentation(model, prepare_input(req["volume"], model)[0],
                                                                       req["output_index"])
        return explain(
            req["volume"], model, method, params=params, target=req["target"],
            progress=lambda f, m: self._progress.__setitem__(slice(None), [f, m]),
            should_stop=self._cancel.is_set, segmentation=req["segmentation"], output_index=req["output_index"],
            **req["mask"],
        )

    def _start(self, work, message: str) -> None:
        if self.check.busy:  # both tabs use one model (LRP merges BatchNorm into it while it runs)
            self._fail("the Check tab is still running; wait for it or cancel it there.")
            return
        self._cancel.clear()
        self._progress[:] = [0.0, message]
        self.run_btn.setEnabled(False)
        self.compare_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText(message + "…")
        self._timer.start()
        self._worker = start_worker(work, returned=self._on_returned, errored=self._on_error,
                                    finished=self._on_finished)

    def cancel(self, *_):
        self._cancel.set()
        self.status.setText("cancelling…")

    def _show_progress(self):
        frac, msg = self._progress
        self.progress.setValue(int(round(100 * frac)))
        self.progress.setFormat(f"{msg[:40]} %p%" if msg else "%p%")

    def _on_returned(self, result):
        kind, payload = result
        if kind == "run":
            self._show_run(*payload)
        else:
            self._show_comparison(*payload)
        self._timer.stop()  # the last cell's message ("3/4") must not outlive the run
        self._progress[:] = [1.0, "done"]
        self._show_progress()

    def _on_error(self, exc):
        self._timer.stop()
        cancelled = report_error(exc, self.status.setText)
        self._progress[:] = [0.0 if cancelled else self._progress[0], "cancelled" if cancelled else "failed"]
        self._show_progress()

    def _on_finished(self):
        self._timer.stop()
        self._worker = None
        self.run_btn.setEnabled(True)
        self.compare_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _fail(self, message: str) -> None:
        fail(self.status.setText, message)

    # ------------------------------------------------------------------ showing results
    def _meta(self, rel, extra: dict | None = None) -> dict:
        return {"affine": rel.affine, "nifti_header": rel.header, "provenance": rel.provenance,
                "warnings": list(rel.warnings), META_KEY: dict(extra or {})}

    def _show_run(self, model, req, cfg: LrpConfig, rel) -> None:
        from .._layers import upsert

        self._set_classes(list(rel.provenance["model"]["class_names"]))
        base = f"{model.name} · {cfg.name}"
        names = req["volume"].name.split("+") if req["volume"].name else []
        tuples: list[tuple] = []
        channels = rel.data.shape[0]
        for c in range(channels):
            label = base if channels == 1 else f"{base} [{names[c] if c < len(names) else f'ch {c}'}]"
            tuples += signed_layers(rel.data[c], label, rel.affine, self._meta(rel, {"kind": "relevance", "channel": c}))
        if channels > 1:
            tuples += signed_layers(rel.data.sum(axis=0), f"{base} [Σ channels]", rel.affine,
                                    self._meta(rel, {"kind": "relevance", "channel": "sum"}))
        tuples += intermediate_layer_data(rel, base, self._meta(rel, {"kind": "intermediate"}))
        if rel.segmentation is not None:
            tuples.append((rel.segmentation, {"name": f"{model.name} · predicted segmentation", "affine": rel.affine,
                                              "opacity": 0.4, "metadata": {**self._meta(rel, {"kind": "segmentation"}),
                                                                           "affine": rel.affine}}, "labels"))
        upsert(self._viewer, tuples)
        self.last_result = rel
        self._show_readouts(rel, req)
        text = f"explained '{rel.target_name}' with '{cfg.name}'"
        cons = rel.provenance["params"].get("conservation")
        if cons:
            text += f"; relevance in/out = {cons['input']:.4g} / {cons['output']:.4g} (ratio {cons['ratio']:.3f})"
        if rel.warnings:
            from napari.utils.notifications import show_warning

            for w in rel.warnings:
                show_warning(f"napari-xai: {w}")
            text += "\n⚠ " + "\n⚠ ".join(rel.warnings)
        self.status.setText(text)

    def _show_readouts(self, rel, req) -> None:
        from ..core.evaluation.metrics import mask_report

        rows: list[tuple[str, str]] = []
        out: dict[str, Any] = {}
        cons = rel.provenance["params"].get("conservation")
        if cons:
            out["conservation"] = cons
            rows += [("relevance at the input", f"{cons['input']:.5g}"),
                     ("relevance injected at the output", f"{cons['output']:.5g}"),
                     ("ratio in / out", f"{cons['ratio']:.4f}" + ("" if cons["expected"] else " (rules do not conserve)"))]
        for k, v in rel.provenance["params"].get("intermediate_sums", {}).items():
            rows.append((f"Σ relevance at {k}", f"{v:.5g}"))
        seg = rel.provenance.get("segmentation")
        if seg:
            rows.append(("target mask", f"{seg['mask']}, {seg['mask_voxels']} voxels, score {seg['score']:.4g}"))
        names = req["volume"].name.split("+") if req["volume"].name else None
        if rel.data.shape[0] > 1:
            try:
                shares = rel.channel_shares(names if names and len(names) == rel.data.shape[0] else None)
            except UserError:
                shares = rel.channel_shares()
            out["channel_shares"] = shares
            for s in shares:
                rows.append((f"{s['name']}: share of + / − relevance",
                             f"{s['positive_share']:.1%} / {s['negative_share']:.1%}"))
        if req["truth"] is not None:
            try:
                rep = mask_report(rel.data, req["truth"], image=req["volume"].data)
            except UserError as exc:
                rows.append(("ground truth", str(exc)))
            else:
                out["mask"] = rep
                rows += [("relevance mass in ground truth", f"{rep['relevance_mass']:.3f}"),
                         ("relevance rank accuracy", f"{rep['rank_accuracy']:.3f}"),
                         ("ground-truth inclusivity D(R, y_GT)", f"{rep['ground_truth_inclusivity']:.3f}"),
                         ("input inclusivity D(R, x)", f"{rep['input_inclusivity']:.3f}")]
        self.readouts = out
        fill_table(self.readout_table, [list(r) for r in rows])

    # ------------------------------------------------------------------ comparison
    def _refresh_compare_list(self) -> None:
        from ..core.methods.catalogue import all_methods

        checked = set(self._checked(self.compare_list))
        self.compare_list.clear()
        labels = [f"config: {c.name}" for c in self.configs]
        labels += [f"method: {m.name}" for m in all_methods()]
        for text in labels:
            item = QListWidgetItem(text)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = text in checked or (not checked and text.startswith("config: "))
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.compare_list.addItem(item)

    @staticmethod
    def _checked(widget: QListWidget) -> list[str]:
        return [widget.item(i).text() for i in range(widget.count())
                if widget.item(i).checkState() == Qt.CheckState.Checked]

    @staticmethod
    def _tick(widget: QListWidget, names: list[str]) -> None:
        for i in range(widget.count()):
            it = widget.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in names else Qt.CheckState.Unchecked)

    def set_compare_items(self, items: list[str], targets: list[str] | None = None,
                          models: list[str] | None = None) -> None:
        """Tick these compare-list entries (and, if given, these targets and models)."""
        self._tick(self.compare_list, items)
        if targets is not None:
            self._tick(self.compare_targets, targets)
        if models is not None:
            self._tick(self.compare_models, models)

    def enter_grid(self, tuples: list[tuple], three_d: bool, meta_key: str = META_KEY) -> list:
        """Add these grid layers (``_layers.comparison_layer_data``) and switch napari's grid on.

        The earlier grid layers tagged ``kind`` = the new ones' kind under
        ``meta_key`` go; every other layer is hidden while the grid is on
        (their visibility is restored by :meth:`exit_grid`), never changed otherwise.
        """
        from .._layers import show_grid

        viewer = self._viewer
        kinds = {kw["metadata"].get(meta_key, {}).get("kind") for _, kw, _ in tuples} - {None}
        for layer in [l for l in viewer.layers if l.metadata.get(meta_key, {}).get("kind") in kinds]:
            viewer.layers.remove(layer)
        if self._grid_state is None:
            self._grid_state = {"visible": {l.name: l.visible for l in viewer.layers},
                                "ndisplay": viewer.dims.ndisplay, "stride": viewer.canvas.grid.stride}
        for layer in viewer.layers:
            layer.visible = False
        return show_grid(viewer, tuples, three_d=three_d)

    def _show_comparison(self, req, results: list) -> None:
        from .._layers import comparison_layer_data, faint_cells

        maps = [rel.data.sum(axis=0) for _, rel in results]
        common = self.compare_common.isChecked()
        limit = common_limit(maps) if common else cell_limits(maps)
        tuples = comparison_layer_data(req["volume"].data[0], results, limit, META_KEY)
        self.enter_grid(tuples, three_d=self.compare_3d.isChecked())
        self.last_comparison = results
        self._fill_cell_table(req, results)
        scale = f"colour limit 0…{limit:.3g} for all" if common else "each cell scaled to its own 99.99th percentile"
        faint = faint_cells(tuples, META_KEY)
        if faint:
            scale += f" ({', '.join(faint)}: too faint at this scale; uncheck 'one colour scale' to see them)"
        self.status.setText(f"{len(results)} cells side by side; {scale} (hot: positive, cyan: negative relevance).")

    def _fill_cell_table(self, req, results: list) -> None:
        """One row per comparison cell: relevance sum and, with a ground truth, the mask readouts."""
        from ..core.evaluation.metrics import MASK_READOUTS, mask_report

        self.cell_readouts = []
        texts = []
        for label, rel in results:
            row = {"cell": label, "sum": float(rel.data.sum())}
            if req.get("truth") is not None:
                try:
                    rep = mask_report(rel.data, req["truth"], image=req["volume"].data)
                except UserError:
                    rep = None
                if rep is not None:
                    row.update({k: rep[k] for k in MASK_READOUTS})
            self.cell_readouts.append(row)
            texts.append([label, f"{row['sum']:.4g}"] + [f"{row[k]:.3f}" if k in row else "–" for k in MASK_READOUTS])
        fill_table(self.cell_table, texts)

    def exit_grid(self) -> None:
        viewer = self._viewer
        viewer.canvas.grid.enabled = False
        state = self._grid_state or {}
        for layer in viewer.layers:
            if layer.name in state.get("visible", {}):
                layer.visible = state["visible"][layer.name]
        if "ndisplay" in state:
            viewer.dims.ndisplay = state["ndisplay"]
            viewer.canvas.grid.stride = state["stride"]
        self._grid_state = None

    def save_comparison(self, path: str | Path) -> Path:
        """Save the comparison grid (canvas) as one PNG figure."""
        if not self.last_comparison:
            raise UserError("run a comparison first ('Compare in grid').")
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise UserError(f"{path.name} must end in .png.")
        self._viewer.screenshot(str(path), canvas_only=True, flash=False)
        return path

    def _save_png_clicked(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save comparison", "lrp_comparison.png", "PNG (*.png)")
        if path:
            try:
                self.status.setText(f"saved {self.save_comparison(path)}")
            except UserError as exc:
                self._fail(str(exc))

    def closeEvent(self, event):  # noqa: N802 (Qt API)
        try:
            self._viewer.mouse_drag_callbacks.remove(self._on_click)
        except ValueError:
            pass
        super().closeEvent(event)


def _refuse_torchscript(source: str) -> None:
    """LRP needs an eager module: say so for a TorchScript file before anything loads it (TorchScript is code)."""
    import os

    from ..core.models import is_torchscript_file

    if os.path.isfile(source) and is_torchscript_file(source):
        raise UserError("the LRP designer needs an eager nn.Module, but the model is TorchScript; "
                        "load it as a .py file with weights or a MONAI bundle.")
