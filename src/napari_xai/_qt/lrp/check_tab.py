"""The LRP designer's Check tab: does the relevance explain the model? Voxel flipping and channel ablation.

After Huang et al. (VisLRPDesigner §6.3 pixel flipping, §6.4 neuron ablation)
in 3D, with the quantitative flipping curve of Samek et al. 2017:

* **Flip painted voxels**: paint a Labels layer over the input (*New flip
  mask* makes one on the input's grid); *Predict* (or every paint stroke, with
  *live*) shows the class scores before and after those voxels take the
  baseline's values.
* **Flipping curve**: regions ranked by a relevance layer (any method's, or
  a comparison cell's) are flipped step by step, most relevant first, least
  relevant first and at random; the curves and their AOPC show whether the map
  ranks the evidence the model uses. The flipped regions at the last step are
  added as a Labels layer. *Curves for every comparison cell* does this for
  each cell of the last comparison, with the cell's own model and target, and
  tabulates the AOPC per cell and order.
* **Channel ablation**: the channels of a layer ranked by their positive
  relevance (LRP with the active configuration), with negative relevance and
  mean activation; tick channels to show their relevance as layers or to
  ablate them (set to zero) and see the new prediction.
* **Randomization sanity check** (Adebayo et al. 2018): the model's
  parametrised layers are randomized on a copy, from the output end
  (cascading) or one at a time (independent), and the map of the active LRP
  configuration or of a chosen method is computed again after each step; a
  table compares every map with the original, a verdict line applies the rule
  of thumb of :func:`napari_xai.core.evaluation.similarity.verdict`, and *Show maps* puts the
  maps side by side in napari's grid (new layers; one colour scale or one per map).

Thin: all numbers come from :mod:`napari_xai.core.evaluation.flipping` and
:mod:`napari_xai.core.evaluation.sanity`; work runs in a worker thread (progress bar and
Cancel at the bottom of the tab), and layers change only on the GUI thread.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..._layers import array_on_grid
from ...core.errors import Cancelled, UserError
from ...core.evaluation.flipping import BASELINES
from .._jobs import fail, report_error, start_worker
from .common import fill_table, read_only_table

if TYPE_CHECKING:  # pragma: no cover
    from .designer import LrpDesignerWidget

log = logging.getLogger(__name__)

META_KEY = "xai_check"
ACTIVE_CONFIG = "active LRP configuration"
SANITY_HEADERS = ["#", "randomized", "Spearman", "|Spearman|", "SSIM", "top 5%", "score", "p"]
SANITY_HEADER_TIPS = [
    "step: 0 = the original model",
    "the layer randomized at this step; '+': the layers above it stay random (cascading)",
    "Spearman rank correlation of the channel-summed maps with the original (1: same ranking, 0: unrelated)",
    "Spearman rank correlation of |map| with the original's",
    "structural similarity of |map| / max|map| (Gaussian window, σ 1.5 voxels)",
    "share of the original's top 5 % voxels by |map| still in the top 5 % (chance: 0.05)",
    "the explained class's score in this step's model: its logit (segmentation: the sum of its logits in the mask)",
    "the explained class's probability in this step's model (segmentation: its share of the predicted voxels)",
]
ORDER_COLOURS = {"morf": "#e6550d", "lerf": "#3182bd", "random": "#969696"}
ORDER_TEXT = {"morf": "most relevant first", "lerf": "least relevant first", "random": "random"}
ORDER_SHORT = {"morf": "MoRF", "lerf": "LeRF", "random": "random"}
LIVE_DELAY_MS = 400


CELL_COLOURS = ["#e6550d", "#31a354", "#3182bd", "#756bb1", "#de2d26", "#fd8d3c", "#6baed6", "#74c476"]


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


class CheckPanel(QWidget):
    """The Check tab (see the module docstring); ``host`` is the LRP designer that owns it."""

    def __init__(self, host: "LrpDesignerWidget"):
        super().__init__()
        self.host = host
        self._viewer = host._viewer
        self._worker = None
        self._cancel = threading.Event()
        self._watched = None
        self.last_prediction: dict | None = None
        self.last_curves: list = []
        self.last_channels: dict | None = None
        self.last_ablation: dict | None = None
        self.last_sanity: tuple | None = None  # (what was explained, input volume, SanityResult)
        self.sanity_verdict_info: dict | None = None
        self._progress = [0.0, ""]
        self._progress_timer = QTimer(self)
        self._progress_timer.setInterval(100)
        self._progress_timer.timeout.connect(self._show_progress)
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self.predict)
        self._build()
        self._viewer.layers.events.inserted.connect(self.refresh_choices)
        self._viewer.layers.events.removed.connect(self.refresh_choices)
        self.refresh_choices()

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        # the four groups scroll; progress, Cancel and the status stay visible below them
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        inner = QWidget()
        lay = QVBoxLayout(inner)
        lay.setContentsMargins(2, 2, 2, 2)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setWidget(inner)
        outer.addWidget(self.scroll, 1)
        box = QGroupBox("Flip painted voxels")
        form = QFormLayout(box)
        self.flip_layer = QComboBox()
        self.flip_layer.setToolTip("Labels layer on the input's grid; its non-zero voxels are flipped.")
        self.flip_layer.currentTextChanged.connect(self._watch)
        self.new_mask_btn = QPushButton("New flip mask")
        self.new_mask_btn.setToolTip("Add an empty Labels layer on the input's grid and start painting.")
        self.new_mask_btn.clicked.connect(self.new_flip_mask)
        row = QHBoxLayout()
        row.addWidget(self.flip_layer, 1)
        row.addWidget(self.new_mask_btn)
        form.addRow("flip mask", row)
        self.baseline = QComboBox()
        self.baseline.addItems(BASELINES)
        self.baseline.setToolTip("What flipped voxels become: 0, the image's mean, or a Gaussian blur of the image.\n"
                                 "Choose one that is neutral for the model: zero intensity can look like pathology\n"
                                 "(e.g. tissue loss for an atrophy model) and then adds evidence instead of removing it.")
        form.addRow("baseline", self.baseline)
        row = QHBoxLayout()
        self.live = QCheckBox("live (after each paint stroke)")
        self.live.setChecked(True)
        self.predict_btn = QPushButton("Predict")
        self.predict_btn.clicked.connect(self.predict)
        row.addWidget(self.live)
        row.addWidget(self.predict_btn)
        form.addRow(row)
        self.predict_table = read_only_table(["class", "before", "after"])
        self.predict_table.setMaximumHeight(110)
        form.addRow(self.predict_table)
        lay.addWidget(box)

        box = QGroupBox("Flipping curve")
        form = QFormLayout(box)
        self.relevance_layer = QComboBox()
        self.relevance_layer.setToolTip("A relevance layer (any method, or a comparison cell); regions are ranked by it.")
        form.addRow("relevance", self.relevance_layer)
        orders = QHBoxLayout()
        self.order_boxes = {}
        for key, text in (("morf", "MoRF"), ("lerf", "LeRF"), ("random", "random")):
            cb = QCheckBox(text)
            cb.setChecked(key != "lerf")
            cb.setToolTip(ORDER_TEXT[key])
            self.order_boxes[key] = cb
            orders.addWidget(cb)
        form.addRow("orders", orders)
        self.region = QSpinBox()
        self.region.setRange(1, 32)
        self.region.setValue(3)
        self.region.setToolTip("Edge of the cubic regions in voxels of the input grid (1 = single voxels).")
        self.steps = QSpinBox()
        self.steps.setRange(1, 200)
        self.steps.setValue(20)
        self.max_fraction = QDoubleSpinBox()
        self.max_fraction.setRange(0.01, 1.0)
        self.max_fraction.setSingleStep(0.05)
        self.max_fraction.setValue(0.2)
        self.max_fraction.setToolTip("Share of all regions flipped at the last step.")
        row = QHBoxLayout()
        for label, w in (("region", self.region), ("steps", self.steps), ("up to", self.max_fraction)):
            row.addWidget(QLabel(label))
            row.addWidget(w)
        form.addRow(row)
        self.curve_btn = QPushButton("Run flipping curve")
        self.curve_btn.clicked.connect(self.run_curve)
        self.cells_btn = QPushButton("Curves for every comparison cell")
        self.cells_btn.setToolTip("Each cell of the last comparison (Compare tab) with its own model and target:\n"
                                  "AOPC per cell and order, to compare how faithful the maps are.")
        self.cells_btn.clicked.connect(self.run_cell_curves)
        row = QHBoxLayout()
        row.addWidget(self.curve_btn)
        row.addWidget(self.cells_btn)
        form.addRow(row)
        self.plot = CurvePlot()
        form.addRow(self.plot)
        self.aopc_table = read_only_table(["cell", "target"])
        self.aopc_table.setVisible(False)
        self.aopc_table.setMaximumHeight(140)
        form.addRow(self.aopc_table)
        lay.addWidget(box, 2)

        box = QGroupBox("Channel ablation")
        form = QFormLayout(box)
        self.ablate_layer = QComboBox()
        self.ablate_layer.setToolTip("A layer with channels (from 'List layers' in the Design tab).")
        self.rank_btn = QPushButton("Rank channels")
        self.rank_btn.setToolTip("One LRP pass with the active configuration: relevance per channel of this layer.")
        self.rank_btn.clicked.connect(self.rank_channels)
        row = QHBoxLayout()
        row.addWidget(self.ablate_layer, 1)
        row.addWidget(self.rank_btn)
        form.addRow("layer", row)
        from ...core.atlas import BUILTIN_ATLASES

        self.channel_atlas = QComboBox()
        self.channel_atlas.addItems(["no atlas", *BUILTIN_ATLASES])
        self.channel_atlas.setToolTip(
            "Also name the atlas region each channel fires on for this input (network dissection: its top 0.5 %\n"
            "activations' best IoU with a region; 'napari-xai dissect' does this over a cohort). MNI inputs only.")
        form.addRow("regions", self.channel_atlas)
        self.channel_table = read_only_table(["ablate", "channel", "R+", "R−", "activation", "IoU · fires on"])
        self.channel_table.setMinimumHeight(190)
        self.channel_table.setWordWrap(False)  # long region names are cut at the end, the IoU before them stays
        self.channel_table.setTextElideMode(Qt.TextElideMode.ElideRight)
        head = self.channel_table.horizontalHeader()
        for col in range(5):  # numbers keep their width; the region name takes the rest
            head.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        form.addRow(self.channel_table)
        row = QHBoxLayout()
        self.show_channels_btn = QPushButton("Show relevance of ticked")
        self.show_channels_btn.clicked.connect(self.show_channels)
        self.ablate_btn = QPushButton("Ablate ticked")
        self.ablate_btn.clicked.connect(self.ablate)
        row.addWidget(self.show_channels_btn)
        row.addWidget(self.ablate_btn)
        form.addRow(row)
        self.ablation_label = QLabel("")
        self.ablation_label.setWordWrap(True)
        form.addRow(self.ablation_label)
        lay.addWidget(box, 2)
        lay.addWidget(self._build_sanity(), 3)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_btn)
        outer.addLayout(row)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)
        self._buttons = [self.predict_btn, self.curve_btn, self.cells_btn, self.rank_btn, self.ablate_btn,
                         self.sanity_btn]
        self.last_cell_curves: list = []

    def _build_sanity(self) -> QGroupBox:
        from ...core.methods.catalogue import all_methods
        from ...core.evaluation.sanity import MODES
        from ...core.evaluation.similarity import VERDICT_THRESHOLD

        box = QGroupBox("Randomization sanity check")
        box.setToolTip("Adebayo et al. 2018: randomize the model's weights (on a copy) from the output end and explain\n"
                       "again. A map that stays the same does not explain what the model learned.")
        form = QFormLayout(box)
        self.sanity_method = QComboBox()
        self.sanity_method.addItems([ACTIVE_CONFIG] + [m.name for m in all_methods()])
        self.sanity_method.setToolTip("What to explain at every step: the active LRP configuration (Design tab) or a "
                                      "method.\nInput, model, target and mask are those of the Design and Run tabs.")
        form.addRow("map of", self.sanity_method)
        self.sanity_mode = QComboBox()
        self.sanity_mode.addItems(list(MODES))
        self.sanity_mode.setToolTip("cascading: randomize cumulatively from the output end (the paper's main test);\n"
                                    "independent: one layer at a time, the others keep their trained weights.")
        self.sanity_layers = QSpinBox()
        self.sanity_layers.setRange(0, 9999)
        self.sanity_layers.setSpecialValueText("all")
        self.sanity_layers.setToolTip("Randomize only this many parametrised layers from the top (all = every one).")
        self.sanity_seed = QSpinBox()
        self.sanity_seed.setRange(0, 2**31 - 1)
        self.sanity_seed.setToolTip("Seed of the random weights (and of stochastic methods such as SmoothGrad).")
        form.addRow("mode", self.sanity_mode)
        row = QHBoxLayout()
        row.addWidget(self.sanity_layers, 1)
        row.addWidget(QLabel("seed"))
        row.addWidget(self.sanity_seed, 1)
        form.addRow("layers from top", row)
        self.sanity_btn = QPushButton("Run sanity check")
        self.sanity_btn.clicked.connect(self.run_sanity)
        self.sanity_maps_btn = QPushButton("Show maps")
        self.sanity_maps_btn.setToolTip("Add the original map and every step's map as new layers, side by side in "
                                        "napari's grid;\n'Exit grid' shows your layers again.")
        self.sanity_maps_btn.clicked.connect(self.show_sanity_maps)
        self.sanity_3d = QCheckBox("3D")
        self.sanity_common = QCheckBox("one colour scale")
        self.sanity_common.setChecked(True)
        self.sanity_common.setToolTip(
            "One colour limit for every map. A randomized model's score is often near 0, so conserving methods\n"
            "(LRP, integrated gradients) give much smaller maps: untick to scale each map to its own 99.99th\n"
            "percentile of |relevance| (the table's metrics do not depend on the scale).")
        self.sanity_exit_btn = QPushButton("Exit grid")
        self.sanity_exit_btn.clicked.connect(lambda: self.host.exit_grid())
        row = QHBoxLayout()
        row.addWidget(self.sanity_btn)
        row.addWidget(self.sanity_maps_btn)
        row.addWidget(self.sanity_exit_btn)
        form.addRow(row)
        row = QHBoxLayout()
        row.addWidget(self.sanity_common)
        row.addWidget(self.sanity_3d)
        row.addStretch(1)
        form.addRow("maps", row)
        self.sanity_table = read_only_table(SANITY_HEADERS)
        hdr = self.sanity_table.horizontalHeader()
        hdr.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)  # nothing elided; scrolls if narrow
        for c, tip in enumerate(SANITY_HEADER_TIPS):
            self.sanity_table.horizontalHeaderItem(c).setToolTip(tip)
        self.sanity_table.setMinimumHeight(280)  # a small network's steps without scrolling
        form.addRow(self.sanity_table)
        self.sanity_verdict = QLabel("")
        self.sanity_verdict.setWordWrap(True)
        self.sanity_verdict.setToolTip(
            f"Rule of thumb: the map fails when the larger of its two rank correlations with the original is\n"
            f">= {VERDICT_THRESHOLD:g} at any cascading step (independent mode: with the top layer alone random).")
        form.addRow(self.sanity_verdict)
        return box

    # ------------------------------------------------------------------ choices
    def refresh_choices(self, *_):
        from napari.layers import Image, Labels

        def fill(combo, names):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)

        labels = [l.name for l in self._viewer.layers if isinstance(l, Labels)
                  and not l.metadata.get("xai_lrp") and not l.metadata.get(META_KEY, {}).get("kind") == "flipped"]
        fill(self.flip_layer, [""] + labels)
        rel = [l.name for l in self._viewer.layers if isinstance(l, Image) and "xai_relevance" in l.metadata
               and not l.name.endswith(" (−)")]
        fill(self.relevance_layer, rel)
        self._watch()

    def refresh_layers(self) -> None:
        """Layers with channels, after the designer listed them."""
        names = [l.name for l in self.host.layers if l.output_shape and len(l.output_shape) >= 2
                 and l.kind in ("rule", "pass", "gradient", "sum")]
        current = self.ablate_layer.currentText()
        self.ablate_layer.clear()
        self.ablate_layer.addItems(names)
        if current in names:
            self.ablate_layer.setCurrentText(current)

    def _watch(self, *_):
        """Follow paint strokes on the flip mask (live prediction)."""
        name = self.flip_layer.currentText()
        layer = self._viewer.layers[name] if name and name in self._viewer.layers else None
        if layer is self._watched:
            return
        if self._watched is not None:
            for ev in ("paint", "data"):
                emitter = getattr(self._watched.events, ev, None)
                if emitter is not None:
                    try:
                        emitter.disconnect(self._on_paint)
                    except (TypeError, RuntimeError, ValueError):
                        pass
        self._watched = layer
        if layer is not None:
            emitter = getattr(layer.events, "paint", None) or layer.events.data
            emitter.connect(self._on_paint)

    def _on_paint(self, *_):
        if self.live.isChecked():
            self._live_timer.start()

    # ------------------------------------------------------------------ helpers
    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _context(self) -> dict:
        """What the designer's Run tab says: input volume, model source, target, mask, output index."""
        req = self.host._request()
        req["kwargs"] = {"output_index": req["output_index"], **req["mask"]}
        if req["mask"]:
            req["kwargs"]["segmentation"] = True
        return req

    @staticmethod
    def _explain_kwargs(model, req) -> dict:
        """Worker thread: the request's explain options, with ``segmentation`` found from the model's output."""
        from ...core.explain import prepare_input
        from .common import is_segmentation

        kwargs = dict(req["kwargs"])
        if "segmentation" not in kwargs:
            kwargs["segmentation"] = is_segmentation(model, prepare_input(req["volume"], model)[0], req["output_index"])
        return kwargs

    def _scorer(self, req, target=None):
        from ...core.evaluation.flipping import Scorer

        model = self.host._load_for_worker(req)
        kwargs = self._explain_kwargs(model, req)
        return model, Scorer(model, req["volume"], req["target"] if target is None else target, **kwargs)

    def _start(self, work, message: str, done) -> None:
        if self._worker is not None:
            return
        if getattr(self.host, "busy", False):  # one model for both tabs (LRP merges BatchNorm into it while it runs)
            self._fail("the designer is still running (Run/Compare); wait for it or cancel it first.")
            return
        self._cancel.clear()
        for b in self._buttons:
            b.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.setText(message + "…")
        self._progress[:] = [-1.0, message]  # < 0: no progress reported yet (busy indicator)
        self.progress.setRange(0, 0)
        self._progress_timer.start()

        def returned(result):
            self.progress.setRange(0, 100)
            self.progress.setValue(100)
            done(result)

        self._worker = start_worker(work, returned=returned, errored=self._on_error, finished=self._on_finished)

    def _report(self, fraction: float, message: str) -> None:
        """Progress from the worker thread (read by a GUI-thread timer)."""
        self._progress[:] = [fraction, message]

    def _show_progress(self) -> None:
        frac, msg = self._progress
        if frac < 0:
            return
        self.progress.setRange(0, 100)
        self.progress.setValue(int(round(100 * frac)))
        self.progress.setFormat(f"{msg[:48]} %p%" if msg else "%p%")

    def cancel(self, *_):
        if self._worker is not None:
            self._cancel.set()
            self.status.setText("cancelling…")

    def _on_finished(self):
        self._worker = None
        self._progress_timer.stop()
        self.cancel_btn.setEnabled(False)
        for b in self._buttons:
            b.setEnabled(True)

    def _on_error(self, exc):
        report_error(exc, self.status.setText)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)

    def _fail(self, message: str) -> None:
        fail(self.status.setText, message)

    # ------------------------------------------------------------------ flip painted voxels
    def new_flip_mask(self) -> Any:
        """An empty Labels layer on the first input layer's grid, selected for painting."""
        names = self.host.input_names()
        if not names:
            self._fail("select the input image layer(s) in the Design tab first.")
            return None
        src = self._viewer.layers[names[0]]
        base, name, n = "flip mask", "flip mask", 2
        while name in self._viewer.layers:
            name, n = f"{base} {n}", n + 1
        layer = self._viewer.add_labels(np.zeros(np.asarray(src.data).shape, np.uint8), name=name,
                                        affine=src.affine.affine_matrix, opacity=0.6)
        layer.brush_size = 6
        layer.mode = "paint"
        self._viewer.layers.selection.active = layer
        self.refresh_choices()
        self.flip_layer.setCurrentText(name)
        self.status.setText(f"paint the voxels to flip on '{name}'; the prediction updates after each stroke.")
        return layer

    def predict(self, *_):
        if self._worker is not None:
            self._live_timer.start()  # try again when the running job is done
            return
        try:
            name = self.flip_layer.currentText()
            if not name:
                raise UserError("choose the flip mask (a Labels layer), or press 'New flip mask' and paint.")
            req = self._context()
            mask = array_on_grid(self._viewer.layers[name], req["volume"]) != 0  # on the input file's voxel order
            if not mask.any():
                raise UserError(f"the flip mask '{name}' is empty; paint the voxels to flip.")
            baseline = self.baseline.currentText()
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            from ...core.evaluation.flipping import predict_flipped

            model, scorer = self._scorer(req)
            return predict_flipped(model, req["volume"], mask, baseline, scorer=scorer)

        self._start(work, "predicting with flipped voxels", self._show_prediction)

    def _show_prediction(self, res: dict) -> None:
        self.last_prediction = res
        use_p = not np.isnan(res["before"]["probabilities"][0])
        key = "probabilities" if use_p else "logits"
        rows = []
        for i, n in enumerate(res["names"]):
            b, a = res["before"][key][i], res["after"][key][i]
            rows.append([n + (" ◀ target" if i == res["target"] else ""), f"{b:.4g}", f"{a:.4g}"])
        fill_table(self.predict_table, rows)
        names = res["names"]
        self.status.setText(
            f"{res['voxels']} voxels flipped to '{res['baseline']}': target '{res['target_name']}' logit "
            f"{res['before']['logits'][res['target']]:.4g} → {res['after']['logits'][res['target']]:.4g} "
            f"(Δ {res['delta']:+.4g}); predicted {names[res['before']['predicted']]} → {names[res['after']['predicted']]}.")

    # ------------------------------------------------------------------ flipping curves
    def run_curve(self, *_):
        try:
            name = self.relevance_layer.currentText()
            if not name:
                raise UserError("no relevance layer yet; run the active configuration (Run tab) or another method first.")
            layer = self._viewer.layers[name]
            rel = np.asarray(layer.metadata["xai_relevance"], dtype=np.float32)
            target = (layer.metadata.get("provenance") or {}).get("target", {}).get("index")
            orders = [k for k, cb in self.order_boxes.items() if cb.isChecked()]
            if not orders:
                raise UserError("tick at least one order (MoRF, LeRF or random).")
            req = self._context()
            if rel.shape != tuple(req["volume"].shape):
                raise UserError(f"relevance layer '{name}' has shape {rel.shape} but the input has "
                                f"{tuple(req['volume'].shape)}; choose the input it explains.")
            opts = {"baseline": self.baseline.currentText(), "region": self.region.value(),
                    "steps": self.steps.value(), "max_fraction": self.max_fraction.value()}
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            from ...core.evaluation.flipping import flip_curve, flipped_mask

            model, scorer = self._scorer(req, target)
            curves = []
            for order in orders:
                if self._cancel.is_set():
                    raise Cancelled("cancelled by the user")
                curves.append(flip_curve(model, req["volume"], rel, order=order, scorer=scorer,
                                         should_stop=self._cancel.is_set, **opts))
            flipped = flipped_mask(rel, opts["max_fraction"], opts["region"], "morf")
            return name, curves, flipped, req["volume"].affine

        self._start(work, f"flipping regions ({', '.join(orders)})", self._show_curves)

    def _show_curves(self, result) -> None:
        from ..._layers import upsert

        name, curves, flipped, affine = result
        self.last_curves = curves
        self.plot.set_curves(curves)
        c0 = curves[0]
        # label 2: another colour than the painted flip mask's label 1
        upsert(self._viewer, [(2 * flipped.astype(np.uint8), {
            "name": f"flipped: top {100 * c0.fractions[-1]:.0f}% of regions · {name.removesuffix(' (+)')}",
            "affine": affine, "opacity": 0.45,
            "metadata": {META_KEY: {"kind": "flipped", "relevance": name, "region": c0.region,
                                    "fraction": c0.fractions[-1]}}}, "labels")])
        text = "; ".join(f"{ORDER_TEXT[c.order]}: AOPC {c.aopc:.4g}" for c in curves)
        self.status.setText(f"target '{c0.target_name}', score {c0.scores[0]:.4g} before flipping; {text} "
                            f"({len(c0.scores)} steps, regions of {c0.region} voxels, baseline {c0.baseline}).")

    def run_cell_curves(self, *_):
        """Flipping curves for every cell of the last comparison, each with the cell's model and target."""
        try:
            if not self.host.last_cells:
                raise UserError("run a comparison first (Compare tab), then compute its flipping curves.")
            req, cells, loaded = self.host.last_cells
            orders = [k for k, cb in self.order_boxes.items() if cb.isChecked()]
            if not orders:
                raise UserError("tick at least one order (MoRF, LeRF or random).")
            opts = {"baseline": self.baseline.currentText(), "region": self.region.value(),
                    "steps": self.steps.value(), "max_fraction": self.max_fraction.value()}
            kwargs = {"output_index": req["output_index"], **req["mask"]}
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            from ...core.explain import prepare_input
            from ...core.evaluation.flipping import Scorer, flip_curve
            from .common import is_segmentation

            scorers: dict = {}
            out = []
            for cell in cells:
                if self._cancel.is_set():
                    raise Cancelled("cancelled by the user")
                model, rel = loaded[cell.item.model], cell.relevance
                key = (cell.item.model, rel.target)
                if key not in scorers:
                    kw = dict(kwargs)
                    kw["segmentation"] = bool(req["mask"]) or is_segmentation(
                        model, prepare_input(req["volume"], model)[0], req["output_index"])
                    scorers[key] = Scorer(model, req["volume"], rel.target, **kw)
                curves = [flip_curve(model, req["volume"], rel.data.sum(axis=0), order=o, scorer=scorers[key],
                                     should_stop=self._cancel.is_set, **opts) for o in orders]
                out.append((cell.label, curves))
            return orders, out

        self._start(work, f"flipping curves for {len(cells)} comparison cells", self._show_cell_curves)

    def _show_cell_curves(self, result) -> None:
        orders, rows = result
        self.last_cell_curves = rows
        headers = ["cell", "target"] + [f"AOPC {ORDER_SHORT[o]}" for o in orders]
        self.aopc_table.setColumnCount(len(headers))
        self.aopc_table.setHorizontalHeaderLabels(headers)
        fill_table(self.aopc_table, [[label, curves[0].target_name] + [f"{c.aopc:.4g}" for c in curves]
                                for label, curves in rows])
        self.aopc_table.setVisible(True)
        first = orders[0]
        self.plot.set_curves([(f"{label} ({first})", CELL_COLOURS[i % len(CELL_COLOURS)], curves[0])
                              for i, (label, curves) in enumerate(rows)])
        best = max(rows, key=lambda r: r[1][0].aopc)
        self.status.setText(f"{len(rows)} cells; largest {ORDER_TEXT[first]} AOPC: '{best[0]}' ({best[1][0].aopc:.4g}). "
                            "Compare AOPC only between cells with the same model and target.")

    # ------------------------------------------------------------------ channel ablation
    def _ticked_channels(self) -> list[int]:
        out = []
        for r in range(self.channel_table.rowCount()):
            item = self.channel_table.item(r, 0)
            if item is not None and item.checkState() == Qt.CheckState.Checked:
                out.append(int(self.channel_table.item(r, 1).text()))
        return out

    def tick_channels(self, channels: list[int]) -> None:
        for r in range(self.channel_table.rowCount()):
            c = int(self.channel_table.item(r, 1).text())
            self.channel_table.item(r, 0).setCheckState(Qt.CheckState.Checked if c in channels else Qt.CheckState.Unchecked)

    def rank_channels(self, *_):
        try:
            layer = self.ablate_layer.currentText()
            if not layer:
                raise UserError("list the model's layers first (Design tab), then choose a layer with channels.")
            req = self._context()
            cfg = self.host.config_named(self.host.active).copy() if self.host.active else None
        except UserError as exc:
            self._fail(str(exc))
            return

        atlas_name = self.channel_atlas.currentText()

        def work():
            from ...core.evaluation.ablation import channel_relevance

            model, scorer = self._scorer(req)
            res = channel_relevance(model, req["volume"], layer, config=cfg, scorer=scorer)
            if atlas_name != "no atlas":
                from ...core.atlas import load_atlas
                from ...core.dissect import dissect

                try:
                    found = dissect(model, [req["volume"]], load_atlas(atlas_name), layer)
                    res["regions"] = {r.channel: r for r in found.rows}
                except UserError as exc:  # e.g. a dense layer, or an input outside the atlas: the ranking stands
                    res["regions_note"] = str(exc)
            return res

        self._start(work, f"relevance per channel of '{layer}'", self._show_channels_table)

    def _show_channels_table(self, res: dict) -> None:
        self.last_channels = res
        rows = sorted(res["channels"], key=lambda c: -c["positive"])
        self.channel_table.setRowCount(len(rows))
        for r, c in enumerate(rows):
            tick = QTableWidgetItem("")
            tick.setFlags(tick.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            tick.setCheckState(Qt.CheckState.Unchecked)
            self.channel_table.setItem(r, 0, tick)
            region = (res.get("regions") or {}).get(c["channel"])
            where = "" if region is None else ("dead" if region.dead else f"{region.iou:.2f} {region.region}")
            for k, text in enumerate([str(c["channel"]), f"{c['positive']:.4g}", f"{c['negative']:.4g}",
                                      f"{c['activation']:.4g}", where], start=1):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.channel_table.setItem(r, k, item)
        total = sum(c["positive"] + c["negative"] for c in res["channels"])
        note = f" Regions: {res['regions_note']}" if res.get("regions_note") else ""
        self.status.setText(f"{len(rows)} channels of '{res['layer']}', sorted by positive relevance; "
                            f"their relevance sums to {total:.4g}. Tick channels to show or ablate them.{note}")

    def show_channels(self, *_):
        from .common import META_KEY as LRP_KEY
        from ..._layers import signed_layers

        res = self.last_channels
        chans = self._ticked_channels()
        if res is None or not chans:
            self._fail("rank the channels of a layer and tick the ones to show.")
            return
        if res["volumes"] is None:
            self._fail(f"layer '{res['layer']}' has no spatial output to show.")
            return
        from ..._layers import upsert

        affine = self.host._request()["volume"].affine
        tuples = []
        for c in chans:
            tuples += signed_layers(res["volumes"][c], f"{res['layer']} · channel {c}", affine,
                                    {LRP_KEY: {"kind": "channel", "layer": res["layer"], "channel": c}})
            if res.get("activations") is not None:
                # the designer paper shows each neuron's activation beside its relevance (hidden at first)
                act = res["activations"][c]
                hi = float(np.abs(act).max()) or 1.0
                tuples.append((act, {"name": f"{res['layer']} · channel {c} activation", "affine": affine,
                                     "colormap": "magma", "contrast_limits": (0.0, hi), "visible": False,
                                     "metadata": {LRP_KEY: {"kind": "activation", "layer": res["layer"],
                                                            "channel": c}}}, "image"))
        upsert(self._viewer, tuples)
        self.status.setText(f"relevance of {len(chans)} channel(s) of '{res['layer']}' added as layers"
                            + (" (their activation maps too, hidden)." if res.get("activations") is not None else "."))

    def ablate(self, *_):
        try:
            layer = self.ablate_layer.currentText()
            chans = self._ticked_channels()
            if not layer or not chans:
                raise UserError("rank the channels of a layer and tick the ones to ablate.")
            req = self._context()
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            from ...core.evaluation.ablation import ablate

            model, scorer = self._scorer(req)
            return ablate(model, req["volume"], layer, chans, scorer=scorer)

        self._start(work, f"ablating {len(chans)} channel(s) of '{layer}'", self._show_ablation)

    def _show_ablation(self, res: dict) -> None:
        self.last_ablation = res
        names, t = res["names"], res["target"]
        b, a = res["before"], res["after"]
        probs = ""
        if not np.isnan(b["probabilities"][0]):
            probs = f"; p({names[t]}) {b['probabilities'][t]:.3f} → {a['probabilities'][t]:.3f}"
        self.ablation_label.setText(
            f"channels {', '.join(map(str, res['channels']))} of '{res['layer']}' set to zero: '{names[t]}' logit "
            f"{b['logits'][t]:.4g} → {a['logits'][t]:.4g} (Δ {res['delta']:+.4g}){probs}; predicted "
            f"{names[b['predicted']]} → {names[a['predicted']]}.")
        self.status.setText("ablation done; the model itself is unchanged.")

    # ------------------------------------------------------------------ randomization sanity check
    def _sanity_method(self) -> tuple[str, dict, str]:
        """(registry method, its parameters, what it is called) of the 'map of' choice."""
        choice = self.sanity_method.currentText()
        if choice != ACTIVE_CONFIG:
            return choice, {}, choice
        if not self.host.active:
            raise UserError("no active LRP configuration; activate one in the Design tab, or choose a method.")
        cfg = self.host.config_named(self.host.active).copy()
        return "lrp", {"config": cfg, "boundaries": False}, f"'{cfg.name}'"

    def run_sanity(self, *_):
        """The randomization test (core.evaluation.sanity.sanity_check) of the chosen map on the Design/Run tabs' request."""
        try:
            req = self._context()
            method, params, what = self._sanity_method()
            opts = {"mode": self.sanity_mode.currentText(), "seed": self.sanity_seed.value(),
                    "last": self.sanity_layers.value() or None}
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            import time

            from ...core.evaluation.sanity import sanity_check

            model = self.host._load_for_worker(req)
            t0 = time.perf_counter()
            res = sanity_check(req["volume"], model, method, params=params, target=req["target"], keep_maps=True,
                               progress=self._report, should_stop=self._cancel.is_set, **opts,
                               **self._explain_kwargs(model, req))
            return what, req["volume"], res, time.perf_counter() - t0

        self._start(work, f"randomization sanity check of {what} ({opts['mode']})", self._show_sanity)

    def _show_sanity(self, result) -> None:
        from ...core.evaluation.similarity import verdict

        what, volume, res, seconds = result
        self.last_sanity = (what, volume, res)
        mode = res.provenance["mode"]
        self.sanity_table.horizontalHeaderItem(1).setToolTip(
            SANITY_HEADER_TIPS[1] if mode == "cascading" else "independent: only this layer is random")
        fill_table(self.sanity_table, [
            [str(r["step"]), sanity_layer_text(r, mode)]
            + [f"{r[k]:.3f}" for k in ("spearman", "spearman_abs", "ssim", "top_overlap")]
            + [f"{r.get('target_score', float('nan')):.3g}", f"{r.get('target_probability', float('nan')):.3f}"]
            for r in res.rows])
        v = verdict(res.rows, mode)
        self.sanity_verdict_info = v
        self.sanity_verdict.setText(v["text"])
        self.sanity_verdict.setStyleSheet("color: #74c476;" if v["passes"] else "color: #fd8d3c;")
        target = res.provenance["target"]["name"]
        text = (f"{what} for '{target}': {len(res.rows) - 1} of {res.provenance['layers_in_model']} parametrised "
                f"layers randomized ({mode}, seed {res.provenance['seed']}) in {seconds:.1f} s; the model itself is "
                "unchanged. 'Show maps' puts the maps side by side.")
        if res.warnings:
            text += "\n⚠ " + "\n⚠ ".join(res.warnings)
        self.status.setText(text)

    def show_sanity_maps(self, *_):
        """The original map and every step's map as new layers in napari's grid (one colour scale, or one per map)."""
        import dataclasses

        from ..._layers import comparison_layer_data, faint_cells
        from ...core.compare import cell_limits, common_limit

        if self.last_sanity is None:
            self._fail("run the sanity check first ('Run sanity check'), then show its maps.")
            return
        what, volume, res = self.last_sanity
        cells = []
        for row, m, rec in zip(res.rows, res.maps, res.step_provenance):
            rel = dataclasses.replace(res.original, data=np.asarray(m, np.float32), provenance=rec, warnings=[],
                                      intermediate={}, segmentation=None)
            cells.append((sanity_step_label(row, res.provenance["mode"]), rel))
        maps = [m.sum(axis=0) for m in res.maps]
        common = self.sanity_common.isChecked()
        limit = common_limit(maps) if common else cell_limits(maps)
        tuples = comparison_layer_data(volume.data[0], cells, limit, META_KEY)
        for _, kw, _ in tuples:
            tag = kw["metadata"][META_KEY]
            tag.update({"kind": "sanity", "step": int(kw["metadata"]["provenance"]["sanity"]["step"])})
        self.host.enter_grid(tuples, three_d=self.sanity_3d.isChecked(), meta_key=META_KEY)
        scale = f"colour limit 0…{limit:.3g} for all" if common else "each map scaled to its own 99.99th percentile"
        faint = faint_cells(tuples, META_KEY)
        if faint:
            scale += f" ({', '.join(faint)}: too faint at this scale; uncheck 'one colour scale' to see them)"
        self.status.setText(f"{len(cells)} maps of {what} side by side (sanity 0 = the original); {scale} "
                            "(hot: positive, cyan: negative). 'Exit grid' shows your layers again.")


def sanity_layer_text(row: dict, mode: str) -> str:
    """The table's 'randomized' cell: the step's layer; '+ layer' when the layers above are random too."""
    if row["step"] == 0:
        return "original"
    return f"+ {row['layer']}" if mode == "cascading" and row["step"] > 1 else row["layer"]


def sanity_step_label(row: dict, mode: str) -> str:
    """Grid-cell title of a sanity step: its step and 'randomized' cell in the table."""
    return f"sanity {row['step']}: {sanity_layer_text(row, mode)}"
