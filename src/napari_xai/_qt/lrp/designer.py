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
* **Check** tab (:mod:`.check_tab`): voxel flipping (painted, or ranked by a
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

Each tab's code lives in its own module (``design_tab``, ``configs``, ``run_tab``, ``compare_tab``,
``check_tab``); this class composes them.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QListWidgetItem, QProgressBar, QTabWidget, QVBoxLayout, QWidget

from ...core.errors import UserError
from ...core.lrp import LayerInfo, LrpConfig
from ..._layers import array_on_grid, point_on_grid
from .._jobs import fail, report_error, start_worker
from .._layout import compact, scrolled
from ..model_picker import SOURCES
from .design_tab import DesignTab
from .configs import ConfigManager
from .run_tab import RunTab
from .compare_tab import CompareTab
from .check_tab import CheckPanel
from .common import META_KEY, is_segmentation, refuse_torchscript, volume_from_layers

if TYPE_CHECKING:  # pragma: no cover
    import napari


class LrpDesignerWidget(DesignTab, ConfigManager, RunTab, CompareTab, QWidget):
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
        self.check = CheckPanel(self)
        self.tabs.addTab(self.check, "Check")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        outer.addWidget(self.progress)
        outer.addWidget(self.status)
        compact(self)

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
        self.trust.setEnabled(kind != "demo")

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
            extra = {"weights": self.weights.text().strip() or None, "model_kwargs": self.kwargs.text().strip() or "{}"}
        else:
            extra = {}
        if self.trust.isChecked():  # the opt-in travels to load_model; unticked, nothing changes
            extra["trust"] = True
        return (f"{path}:{cls}" if kind == "python" else path), extra

    def load_model(self):
        """The model for the current source (cached)."""
        from ...core.models import load_model

        source, extra = self.model_source()
        key = (source, tuple(sorted(extra.items())))
        if self._model is None or self._model_key != key:
            refuse_torchscript(source)
            self._model = load_model(source, device="cpu", **extra)
            self._model_key = key
        return self._model

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

    def _load_for_worker(self, req):
        from ...core.models import load_model

        key = (req["source"], tuple(sorted(req["extra"].items())))
        if self._model is not None and self._model_key == key:
            return self._model
        refuse_torchscript(req["source"])
        model = load_model(req["source"], device="cpu", **req["extra"])
        self._model, self._model_key = model, key
        return model

    def _explain(self, model, req, cfg: LrpConfig | None, method: str = "lrp", boundaries: bool | None = None):
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

    def _meta(self, rel, extra: dict | None = None) -> dict:
        return {"affine": rel.affine, "nifti_header": rel.header, "provenance": rel.provenance,
                "warnings": list(rel.warnings), META_KEY: dict(extra or {})}

    def closeEvent(self, event):  # noqa: N802 (Qt API)
        try:
            self._viewer.mouse_drag_callbacks.remove(self._on_click)
        except ValueError:
            pass
        super().closeEvent(event)
