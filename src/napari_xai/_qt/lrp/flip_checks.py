"""Check tab, flipping: painted voxels flipped to a baseline, flipping curves (MoRF/LeRF/random) with AOPC."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
)

from ..._layers import array_on_grid
from ...core.errors import Cancelled, UserError
from ...core.evaluation.flipping import BASELINES
from .._forms import fill_table, read_only_table
from .common import (
    CELL_COLOURS,
    CHECK_META_KEY as META_KEY,
    ORDER_SHORT,
    ORDER_TEXT,
    is_segmentation,
)
from .curve_plot import CurvePlot


class FlipChecks:
    """Voxel flipping of :class:`~.check_tab.CheckPanel`."""

    def _build_flip_box(self) -> QGroupBox:
        """The "Flip painted voxels" group."""
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
        return box

    def _build_curve_box(self) -> QGroupBox:
        """The "Flipping curve" group."""
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
        return box

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
            if not self.host.compare_tab.last_cells:
                raise UserError("run a comparison first (Compare tab), then compute its flipping curves.")
            req, cells, loaded = self.host.compare_tab.last_cells
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
