"""The LRP designer's Check tab: does the relevance explain the model? Voxel flipping and channel ablation.

After Huang et al. (VisLRPDesigner §6.3 pixel flipping, §6.4 neuron ablation)
in 3D, with the quantitative flipping curve of Samek et al. 2017. Four groups, one widget each:

* **Flip painted voxels** (:class:`~.flip_checks.FlipBox`): paint a Labels layer over the input; *Predict* (or
  every paint stroke, with *live*) shows the class scores before and after those voxels take the baseline's values.
* **Flipping curve** (:class:`~.flip_checks.CurveBox`): regions ranked by a relevance layer flipped step by step,
  most relevant first, least relevant first and at random, with AOPC; also for every comparison cell.
* **Channel ablation** (:class:`~.channel_checks.ChannelBox`): a layer's channels ranked by positive relevance;
  show ticked channels' relevance, or ablate them and see the new prediction.
* **Randomization sanity check** (:class:`~.sanity_checks.SanityBox`, Adebayo et al. 2018): the map again after
  each step of randomizing the model's layers (on a copy), a similarity table, a verdict and the maps in a grid.

Thin: all numbers come from :mod:`napari_xai.core.evaluation`; work runs in a worker thread (progress bar and
Cancel at the bottom of the tab), and layers change only on the GUI thread. This panel holds what the groups
share: the request of the Design and Run tabs, the scorer, the worker.
"""

from __future__ import annotations

from qtpy.QtWidgets import QFrame, QProgressBar, QScrollArea, QVBoxLayout, QWidget

from .._events import connect_all
from .._forms import button, fill_combo, label, row
from .._jobs import Job, fail, report_error
from .channel_checks import ChannelBox
from .common import ACTIVE_CONFIG, CHECK_META_KEY, is_segmentation
from .flip_checks import CurveBox, FlipBox
from .sanity_checks import SanityBox

META_KEY = CHECK_META_KEY  # the Check tab's layers carry this metadata key
__all__ = ["ACTIVE_CONFIG", "META_KEY", "CheckPanel"]


class CheckPanel(QWidget):
    """The Check tab (see the module docstring); ``host`` is the LRP designer that owns it."""

    def __init__(self, host):
        super().__init__()
        self.host = host
        self.viewer = host._viewer
        self.job = Job(self, self._show_progress)
        self.flip = FlipBox(self)
        self.curves = CurveBox(self, self.flip.baseline)
        self.channels = ChannelBox(self)
        self.sanity = SanityBox(self)
        self._build()
        events = self.viewer.layers.events
        self.connections = connect_all([(events.inserted, self.refresh_choices),
                                        (events.removed, self.refresh_choices)])
        self.refresh_choices()

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
        for box, stretch in ((self.flip, 0), (self.curves, 2), (self.channels, 2), (self.sanity, 3)):
            lay.addWidget(box, stretch)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.cancel_btn = button("Cancel", self.cancel, enabled=False)
        outer.addLayout(row((self.progress, 1), self.cancel_btn))
        self.status = label("")
        outer.addWidget(self.status)
        self._buttons = [self.flip.predict_btn, self.curves.curve_btn, self.curves.cells_btn, self.channels.rank_btn,
                         self.channels.ablate_btn, self.sanity.sanity_btn]

    # ------------------------------------------------------------------ choices
    def refresh_choices(self, *_):
        from napari.layers import Image, Labels

        layers = self.viewer.layers
        labels = [l.name for l in layers if isinstance(l, Labels)
                  and not l.metadata.get("xai_lrp") and not l.metadata.get(META_KEY, {}).get("kind") == "flipped"]
        fill_combo(self.flip.flip_layer, [""] + labels)
        fill_combo(self.curves.relevance_layer, [l.name for l in layers if isinstance(l, Image)
                                                 and "xai_relevance" in l.metadata and not l.name.endswith(" (−)")])
        self.flip.watch()

    def refresh_layers(self) -> None:
        """Layers with channels, after the designer listed them."""
        self.channels.set_layers(self.host.layers)

    # ------------------------------------------------------------------ what the groups share
    @property
    def busy(self) -> bool:
        return self.job.busy

    def context(self) -> dict:
        """What the designer's Run tab says: input volume, model source, target, mask, output index."""
        req = self.host.request()
        req["kwargs"] = {"output_index": req["output_index"], **req["mask"]}
        if req["mask"]:
            req["kwargs"]["segmentation"] = True
        return req

    @staticmethod
    def explain_kwargs(model, req) -> dict:
        """Worker thread: the request's explain options, with ``segmentation`` found from the model's output."""
        from ...core.explain import prepare_input

        kwargs = dict(req["kwargs"])
        if "segmentation" not in kwargs:
            kwargs["segmentation"] = is_segmentation(model, prepare_input(req["volume"], model)[0], req["output_index"])
        return kwargs

    def scorer(self, req, target=None):
        from ...core.evaluation.flipping import Scorer

        model = self.host.load_for_worker(req)
        return model, Scorer(model, req["volume"], req["target"] if target is None else target,
                             **self.explain_kwargs(model, req))

    def start_scored(self, req: dict, compute, message: str, done, target=None) -> None:
        """In the worker: ``compute(model, scorer)`` for the request's model and target (or ``target``)."""
        def work():
            return compute(*self.scorer(req, target))

        self.start(work, message, done)

    def start(self, work, message: str, done) -> None:
        if self.busy:
            return
        if self.host.busy:  # one model for both tabs (LRP merges BatchNorm into it while it runs)
            self.fail("the designer is still running (Run/Compare); wait for it or cancel it first.")
            return
        self._set_running(True)
        self.status.setText(message + "…")
        self.job.report(-1.0, message)  # < 0: no progress reported yet (busy indicator)
        self.progress.setRange(0, 0)

        def returned(result):
            self.progress.setRange(0, 100)
            self.progress.setValue(100)
            done(result)

        self.job.start(work, returned=returned, errored=self._on_error, finished=lambda: self._set_running(False))

    def should_stop(self) -> bool:
        return self.job.should_stop()

    def report(self, fraction: float, message: str) -> None:
        """Progress from the worker thread (read by a GUI-thread timer)."""
        self.job.report(fraction, message)

    def _set_running(self, on: bool) -> None:
        for b in self._buttons:
            b.setEnabled(not on)
        self.cancel_btn.setEnabled(on)

    def _show_progress(self) -> None:
        frac, msg = self.job.progress
        if frac < 0:
            return
        self.progress.setRange(0, 100)
        self.progress.setValue(int(round(100 * frac)))
        self.progress.setFormat(f"{msg[:48]} %p%" if msg else "%p%")

    def cancel(self, *_):
        if self.busy:
            self.job.cancel()
            self.status.setText("cancelling…")

    def _on_error(self, exc):
        report_error(exc, self.status.setText)
        self.progress.setRange(0, 100)
        self.progress.setValue(0)

    def fail(self, message: str) -> None:
        fail(self.status.setText, message)
