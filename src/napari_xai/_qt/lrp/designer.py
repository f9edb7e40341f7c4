"""LRP designer dock widget: segments with rules, named configurations, intermediate relevance, comparison.

After Huang et al., "A Visual Designer of Layer-wise Relevance Propagation
Models", for 3D medical networks inside napari. One tab per file, composed here:

* **Design** (:mod:`.design_tab`): the model (the shared model picker, trust
  included) and its layers in execution order, a segment ruler, the
  configuration manager (:mod:`.configs`) and the segment editor
  (:mod:`.segments`) with the ten parameters of the unified rule.
* **Run** (:mod:`.run_tab`): target, segmentation mask, ground truth; runs the
  active configuration and shows relevance, intermediate relevance,
  conservation and readouts.
* **Compare** (:mod:`.compare_tab`): every ticked configuration/method for
  every ticked target and model, side by side in napari's grid.
* **Check** (:mod:`.check_tab`): voxel flipping, flipping curves, channel
  ablation and the randomization sanity check.

This parent holds what the tabs share: the viewer, the model (one cache), the
model's layers, the worker with its progress bar, Cancel and status line.
Thin by design: all numbers come from ``napari_xai.core``; layers are touched
only in a worker's ``returned`` callback on the GUI thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from qtpy.QtWidgets import QProgressBar, QTabWidget, QVBoxLayout, QWidget

from ...core.lrp import LayerInfo, LrpConfig
from .._events import connect_all, disconnect_all
from .._forms import label
from .._jobs import Job, fail, report_error
from .._layout import compact, scrolled
from ..model_picker import ModelPicker
from .check_tab import CheckPanel
from .common import META_KEY, is_segmentation, refuse_torchscript
from .compare_tab import CompareTab
from .configs import ConfigManager
from .design_tab import DesignTab
from .run_tab import RunTab

if TYPE_CHECKING:  # pragma: no cover
    import napari


class LrpDesignerWidget(QWidget):
    """The LRP designer dock widget (Plugins › napari-xai › LRP designer)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer", parent: QWidget | None = None):
        super().__init__(parent)
        self._viewer = napari_viewer
        from .. import lod

        lod.install(napari_viewer)  # relevance layers cropped to where they show in 3D
        self.layers: list[LayerInfo] = []
        self._model = None
        self._model_key = None
        self.job = Job(self, self._show_progress)
        self.picker = ModelPicker(with_kwargs=True)  # the same picker as Explain, trust included
        self.manager = ConfigManager(self)
        self.design = DesignTab(self)
        self.segments = self.design.segments
        self.run_tab = RunTab(self)
        self.compare_tab = CompareTab(self)
        self.check = CheckPanel(self)
        self._build()
        self.manager.configs_changed.connect(self.compare_tab.refresh_list)
        self.manager.config_selected.connect(self.design.show_config)
        events = self._viewer.layers.events
        self._connections = connect_all([(events.inserted, self.refresh_layer_choices),
                                         (events.removed, self.refresh_layer_choices),
                                         (events.reordered, self.refresh_layer_choices)])
        self._viewer.mouse_drag_callbacks.append(self.run_tab.on_click)
        self.refresh_layer_choices()
        self.manager.new_config("configuration 1")

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 2, 0, 2)
        self.tabs = QTabWidget()
        outer.addWidget(self.tabs)
        # the pages scroll (the check panel scrolls its own groups): the dock fits a laptop screen
        self.tabs.addTab(scrolled(self.design), "Design")
        self.tabs.addTab(scrolled(self.run_tab), "Run")
        self.tabs.addTab(scrolled(self.compare_tab), "Compare")
        self.tabs.addTab(self.check, "Check")
        self.status = label("")
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        outer.addWidget(self.progress)
        outer.addWidget(self.status)
        compact(self)

    # ------------------------------------------------------------------ viewer choices
    def refresh_layer_choices(self, *_):
        from napari.layers import Image, Labels

        layers = self._viewer.layers
        images = [l.name for l in layers if isinstance(l, Image) and META_KEY not in l.metadata
                  and "xai_relevance" not in l.metadata and "xai_explorer" not in l.metadata
                  and "xai_check" not in l.metadata]
        labels = [l.name for l in layers if isinstance(l, Labels) and META_KEY not in l.metadata
                  and "xai_check" not in l.metadata]
        self.design.set_input_choices(images)
        self.run_tab.set_label_choices(labels)

    def input_names(self) -> list[str]:
        """The input image layers selected in the Design tab (several: channels, in this order)."""
        return self.design.input_names()

    def set_classes(self, names: list[str]) -> None:
        """The model's class names: the Run tab's target and the Compare tab's targets."""
        self.run_tab.set_classes(names)
        self.compare_tab.set_targets(names)

    # ------------------------------------------------------------------ model
    def model_source(self) -> tuple[str, dict]:
        """``(source, extra)`` of the picker, the trust opt-in included when ticked."""
        return self.picker.load_args()

    def load_model(self):
        """The model for the current source (cached)."""
        source, extra = self.model_source()
        return self.load_for_worker({"source": source, "extra": extra})

    def load_for_worker(self, req: dict):
        """The model of a request's ``source``/``extra`` (cached: one model for every tab); any thread."""
        from ...core.models import load_model

        key = (req["source"], tuple(sorted(req["extra"].items())))
        if self._model is not None and self._model_key == key:
            return self._model
        refuse_torchscript(req["source"])
        model = load_model(req["source"], device="cpu", **req["extra"])
        self._model, self._model_key = model, key
        return model

    def request(self) -> dict:
        """What a run explains: input volume, model source, target, mask, ground truth, options (Run tab)."""
        return self.run_tab.request()

    def explain(self, model, req, cfg: LrpConfig | None, method: str = "lrp", boundaries: bool | None = None):
        """Run :func:`explain` (worker thread) with the configuration object itself (no file)."""
        from ...core.explain import explain, prepare_input
        from ...core.methods.catalogue import get_method

        params: dict = {}
        if get_method(method).takes_config:
            params = {"config": cfg, "boundaries": req["boundaries"] if boundaries is None else boundaries}
        if "segmentation" not in req:
            req["segmentation"] = bool(req["mask"]) or is_segmentation(model, prepare_input(req["volume"], model)[0],
                                                                       req["output_index"])
        return explain(
            req["volume"], model, method, params=params, target=req["target"],
            progress=self.job.report,
            should_stop=self.job.should_stop, segmentation=req["segmentation"], output_index=req["output_index"],
            **req["mask"],
        )

    # ------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        return self.job.busy

    def start(self, work: Callable, message: str, done: Callable) -> None:
        """Run ``work`` in a worker thread (Run and Compare share it); ``done(result)`` on the GUI thread."""
        if self.check.busy:  # both tabs use one model (LRP merges BatchNorm into it while it runs)
            self.fail("the Check tab is still running; wait for it or cancel it there.")
            return
        self.job.report(0.0, message)
        self._set_running(True)
        self.status.setText(message + "…")

        def returned(result):
            done(result)
            self.job.timer.stop()  # the last cell's message ("3/4") must not outlive the run
            self.job.report(1.0, "done")
            self._show_progress()

        self.job.start(work, returned=returned, errored=self._on_error, finished=lambda: self._set_running(False))

    def _set_running(self, on: bool) -> None:
        self.run_tab.run_btn.setEnabled(not on)
        self.compare_tab.compare_btn.setEnabled(not on)
        self.run_tab.cancel_btn.setEnabled(on)

    def cancel(self, *_):
        self.job.cancel()
        self.status.setText("cancelling…")

    def _show_progress(self):
        frac, msg = self.job.progress
        self.progress.setValue(int(round(100 * frac)))
        self.progress.setFormat(f"{msg[:40]} %p%" if msg else "%p%")

    def _on_error(self, exc):
        self.job.timer.stop()
        cancelled = report_error(exc, self.status.setText)
        self.job.report(0.0 if cancelled else self.job.progress[0], "cancelled" if cancelled else "failed")
        self._show_progress()

    def fail(self, message: str) -> None:
        fail(self.status.setText, message)

    def closeEvent(self, event):  # noqa: N802 (Qt API)
        disconnect_all(self._connections + self.check.connections)
        try:
            self._viewer.mouse_drag_callbacks.remove(self.run_tab.on_click)
        except ValueError:
            pass
        super().closeEvent(event)
