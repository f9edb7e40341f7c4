"""Check tab, flipping: painted voxels flipped to a baseline (:class:`FlipBox`), and flipping curves
(MoRF/LeRF/random) with AOPC, for one relevance layer or every comparison cell (:class:`CurveBox`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFormLayout, QGroupBox

from ..._layers import array_on_grid
from ...core.errors import Cancelled, UserError
from ...core.evaluation.flipping import BASELINES
from .._forms import button, checkbox, chosen, combo, double_spin, fill_table, read_only_table, row, spin
from .common import CELL_COLOURS, CHECK_META_KEY as META_KEY, LIVE_DELAY_MS, ORDER_SHORT, ORDER_TEXT
from .curve_plot import CurvePlot

BASELINE_TIP = ("What flipped voxels become: 0, the image's mean, or a Gaussian blur of the image.\n"
                "Choose one that is neutral for the model: zero intensity can look like pathology\n"
                "(e.g. tissue loss for an atrophy model) and then adds evidence instead of removing it.")


def prediction_rows(res: dict) -> list[list[str]]:
    """Class, score before, score after (probabilities when the model has them, else logits)."""
    key = "probabilities" if not np.isnan(res["before"]["probabilities"][0]) else "logits"
    return [[n + (" ◀ target" if i == res["target"] else ""), f"{res['before'][key][i]:.4g}",
             f"{res['after'][key][i]:.4g}"] for i, n in enumerate(res["names"])]


class FlipBox(QGroupBox):
    """"Flip painted voxels": a Labels layer painted over the input; the class scores before and after.

    With *live*, every paint stroke predicts again (after :data:`LIVE_DELAY_MS`). ``panel`` is the Check tab.
    """

    def __init__(self, panel):
        super().__init__("Flip painted voxels")
        self.panel = panel
        self.last_prediction: dict | None = None
        self._watched = None
        self._live_timer = QTimer(self)
        self._live_timer.setSingleShot(True)
        self._live_timer.setInterval(LIVE_DELAY_MS)
        self._live_timer.timeout.connect(self.predict)
        form = QFormLayout(self)
        self.flip_layer = combo(tip="Labels layer on the input's grid; its non-zero voxels are flipped.")
        self.flip_layer.currentTextChanged.connect(self.watch)
        self.new_mask_btn = button("New flip mask", self.new_flip_mask,
                                   "Add an empty Labels layer on the input's grid and start painting.")
        form.addRow("flip mask", row((self.flip_layer, 1), self.new_mask_btn))
        self.baseline = combo(BASELINES, BASELINE_TIP)
        form.addRow("baseline", self.baseline)
        self.live = checkbox("live (after each paint stroke)", True)
        self.predict_btn = button("Predict", self.predict)
        form.addRow(row(self.live, self.predict_btn))
        self.predict_table = read_only_table(["class", "before", "after"])
        self.predict_table.setMaximumHeight(110)
        form.addRow(self.predict_table)

    def watch(self, *_):
        """Follow paint strokes on the flip mask (live prediction)."""
        name = self.flip_layer.currentText()
        layers = self.panel.viewer.layers
        layer = layers[name] if name and name in layers else None
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

    def new_flip_mask(self) -> Any:
        """An empty Labels layer on the first input layer's grid, selected for painting."""
        panel, viewer = self.panel, self.panel.viewer
        names = panel.host.input_names()
        if not names:
            panel.fail("select the input image layer(s) in the Design tab first.")
            return None
        src = viewer.layers[names[0]]
        base, name, n = "flip mask", "flip mask", 2
        while name in viewer.layers:
            name, n = f"{base} {n}", n + 1
        layer = viewer.add_labels(np.zeros(np.asarray(src.data).shape, np.uint8), name=name,
                                  affine=src.affine.affine_matrix, opacity=0.6)
        layer.brush_size = 6
        layer.mode = "paint"
        viewer.layers.selection.active = layer
        panel.refresh_choices()
        self.flip_layer.setCurrentText(name)
        panel.status.setText(f"paint the voxels to flip on '{name}'; the prediction updates after each stroke.")
        return layer

    def predict(self, *_):
        panel = self.panel
        if panel.busy:
            self._live_timer.start()  # try again when the running job is done
            return
        try:
            name = chosen(self.flip_layer, "choose the flip mask (a Labels layer), or press 'New flip mask' and paint.")
            req = panel.context()
            mask = array_on_grid(panel.viewer.layers[name], req["volume"]) != 0  # on the input file's voxel order
            if not mask.any():
                raise UserError(f"the flip mask '{name}' is empty; paint the voxels to flip.")
            baseline = self.baseline.currentText()
        except UserError as exc:
            panel.fail(str(exc))
            return

        def compute(model, scorer):
            from ...core.evaluation.flipping import predict_flipped

            return predict_flipped(model, req["volume"], mask, baseline, scorer=scorer)

        panel.start_scored(req, compute, "predicting with flipped voxels", self._show_prediction)

    def _show_prediction(self, res: dict) -> None:
        self.last_prediction = res
        fill_table(self.predict_table, prediction_rows(res))
        names, t = res["names"], res["target"]
        self.panel.status.setText(
            f"{res['voxels']} voxels flipped to '{res['baseline']}': target '{res['target_name']}' logit "
            f"{res['before']['logits'][t]:.4g} → {res['after']['logits'][t]:.4g} "
            f"(Δ {res['delta']:+.4g}); predicted {names[res['before']['predicted']]} → "
            f"{names[res['after']['predicted']]}.")


class CurveBox(QGroupBox):
    """"Flipping curve": regions ranked by a relevance layer flipped step by step, with AOPC per order.

    ``baseline`` is the flip box's choice of what flipped voxels become.
    """

    def __init__(self, panel, baseline):
        super().__init__("Flipping curve")
        self.panel, self.baseline = panel, baseline
        self.last_curves: list = []
        self.last_cell_curves: list = []
        form = QFormLayout(self)
        self.relevance_layer = combo(tip="A relevance layer (any method, or a comparison cell); regions are ranked "
                                         "by it.")
        form.addRow("relevance", self.relevance_layer)
        self.order_boxes = {key: checkbox(text, key != "lerf", ORDER_TEXT[key])
                            for key, text in (("morf", "MoRF"), ("lerf", "LeRF"), ("random", "random"))}
        form.addRow("orders", row(*self.order_boxes.values()))
        self.region = spin(1, 32, 3, "Edge of the cubic regions in voxels of the input grid (1 = single voxels).")
        self.steps = spin(1, 200, 20)
        self.max_fraction = double_spin(0.01, 1.0, 0.2, 0.05, tip="Share of all regions flipped at the last step.")
        form.addRow(row("region", self.region, "steps", self.steps, "up to", self.max_fraction))
        self.curve_btn = button("Run flipping curve", self.run_curve)
        self.cells_btn = button("Curves for every comparison cell", self.run_cell_curves,
                                "Each cell of the last comparison (Compare tab) with its own model and target:\n"
                                "AOPC per cell and order, to compare how faithful the maps are.")
        form.addRow(row(self.curve_btn, self.cells_btn))
        self.plot = CurvePlot()
        form.addRow(self.plot)
        self.aopc_table = read_only_table(["cell", "target"])
        self.aopc_table.setVisible(False)
        self.aopc_table.setMaximumHeight(140)
        form.addRow(self.aopc_table)

    def _options(self) -> tuple[list[str], dict]:
        orders = [k for k, cb in self.order_boxes.items() if cb.isChecked()]
        if not orders:
            raise UserError("tick at least one order (MoRF, LeRF or random).")
        return orders, {"baseline": self.baseline.currentText(), "region": self.region.value(),
                        "steps": self.steps.value(), "max_fraction": self.max_fraction.value()}

    def run_curve(self, *_):
        panel = self.panel
        try:
            name = chosen(self.relevance_layer, "no relevance layer yet; run the active configuration (Run tab) or "
                                                "another method first.")
            layer = panel.viewer.layers[name]
            rel = np.asarray(layer.metadata["xai_relevance"], dtype=np.float32)
            target = (layer.metadata.get("provenance") or {}).get("target", {}).get("index")
            orders, opts = self._options()
            req = panel.context()
            if rel.shape != tuple(req["volume"].shape):
                raise UserError(f"relevance layer '{name}' has shape {rel.shape} but the input has "
                                f"{tuple(req['volume'].shape)}; choose the input it explains.")
        except UserError as exc:
            panel.fail(str(exc))
            return

        def compute(model, scorer):
            from ...core.evaluation.flipping import flip_curve, flipped_mask

            curves = []
            for order in orders:
                if panel.should_stop():
                    raise Cancelled("cancelled by the user")
                curves.append(flip_curve(model, req["volume"], rel, order=order, scorer=scorer,
                                         should_stop=panel.should_stop, **opts))
            flipped = flipped_mask(rel, opts["max_fraction"], opts["region"], "morf")
            return name, curves, flipped, req["volume"].affine

        panel.start_scored(req, compute, f"flipping regions ({', '.join(orders)})", self._show_curves, target)

    def _show_curves(self, result) -> None:
        from ..._layers import upsert

        name, curves, flipped, affine = result
        self.last_curves = curves
        self.plot.set_curves(curves)
        c0 = curves[0]
        # label 2: another colour than the painted flip mask's label 1
        upsert(self.panel.viewer, [(2 * flipped.astype(np.uint8), {
            "name": f"flipped: top {100 * c0.fractions[-1]:.0f}% of regions · {name.removesuffix(' (+)')}",
            "affine": affine, "opacity": 0.45,
            "metadata": {META_KEY: {"kind": "flipped", "relevance": name, "region": c0.region,
                                    "fraction": c0.fractions[-1]}}}, "labels")])
        text = "; ".join(f"{ORDER_TEXT[c.order]}: AOPC {c.aopc:.4g}" for c in curves)
        self.panel.status.setText(f"target '{c0.target_name}', score {c0.scores[0]:.4g} before flipping; {text} "
                                  f"({len(c0.scores)} steps, regions of {c0.region} voxels, baseline {c0.baseline}).")

    def run_cell_curves(self, *_):
        """Flipping curves for every cell of the last comparison, each with the cell's model and target."""
        panel = self.panel
        try:
            if not panel.host.compare_tab.last_cells:
                raise UserError("run a comparison first (Compare tab), then compute its flipping curves.")
            req, cells, loaded = panel.host.compare_tab.last_cells
            orders, opts = self._options()
        except UserError as exc:
            panel.fail(str(exc))
            return
        req = dict(req, kwargs={"output_index": req["output_index"], **req["mask"]})
        if req["mask"]:
            req["kwargs"]["segmentation"] = True

        def work():
            from ...core.evaluation.flipping import Scorer, flip_curve

            scorers: dict = {}
            out = []
            for cell in cells:
                if panel.should_stop():
                    raise Cancelled("cancelled by the user")
                model, rel = loaded[cell.item.model], cell.relevance
                key = (cell.item.model, rel.target)
                if key not in scorers:
                    scorers[key] = Scorer(model, req["volume"], rel.target, **panel.explain_kwargs(model, req))
                curves = [flip_curve(model, req["volume"], rel.data.sum(axis=0), order=o, scorer=scorers[key],
                                     should_stop=panel.should_stop, **opts) for o in orders]
                out.append((cell.label, curves))
            return orders, out

        panel.start(work, f"flipping curves for {len(cells)} comparison cells", self._show_cell_curves)

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
        self.panel.status.setText(f"{len(rows)} cells; largest {ORDER_TEXT[first]} AOPC: '{best[0]}' "
                                  f"({best[1][0].aopc:.4g}). Compare AOPC only between cells with the same model "
                                  "and target.")
