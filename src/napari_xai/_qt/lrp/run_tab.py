"""The Run tab of the LRP designer: target, mask, point picking, one run of the active configuration and its readouts."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import UserError
from ...core.lrp import LrpConfig
from ..._layers import intermediate_layer_data, signed_layers
from ...core.segmentation import Ray
from .common import MASK_SOURCES, fill_table, read_only_table

class RunTab:
    """Run tab of :class:`~.designer.LrpDesignerWidget`."""

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

    def _show_run(self, model, req, cfg: LrpConfig, rel) -> None:
        from ..._layers import upsert

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
        from ...core.evaluation.metrics import mask_report

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
