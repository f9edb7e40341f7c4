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

Each group's code lives in its own module (``flip_checks``, ``channel_checks``, ``sanity_checks``);
:class:`CheckPanel` composes them.
"""

from __future__ import annotations

import threading

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLabel, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget

from .._jobs import fail, report_error, start_worker
from .flip_checks import FlipChecks
from .channel_checks import ChannelChecks
from .sanity_checks import SanityChecks
from .common import ACTIVE_CONFIG, CHECK_META_KEY, LIVE_DELAY_MS


META_KEY = CHECK_META_KEY  # the Check tab's layers carry this metadata key
__all__ = ["ACTIVE_CONFIG", "META_KEY", "CheckPanel"]


class CheckPanel(FlipChecks, ChannelChecks, SanityChecks, QWidget):
    """The Check tab (see the module docstring); ``host`` is the LRP designer that owns it."""

    def __init__(self, host):
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
        self.scroll.setMinimumHeight(24)  # a small minimum: six docks stacked fit an 800 px window
        self.scroll.setWidget(inner)
        outer.addWidget(self.scroll, 1)
        lay.addWidget(self._build_flip_box())
        lay.addWidget(self._build_curve_box(), 2)
        lay.addWidget(self._build_channel_box(), 2)
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
