"""The Run tab of the LRP designer: target, mask, point picking, one run of the active configuration and its readouts."""

from __future__ import annotations

from typing import Any

import numpy as np
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ..._layers import array_on_grid, intermediate_layer_data, point_on_grid, signed_layers
from ...core.errors import UserError
from ...core.lrp import LrpConfig
from ...core.segmentation import Ray
from .._forms import button, checkbox, chosen, combo, fill_combo, fill_table, group_form, label, read_only_table
from .._forms import row, spin
from .common import MASK_SOURCES, META_KEY, volume_from_layers

PREDICTED = "predicted"


def layer_meta(rel, extra: dict | None = None) -> dict:
    """Metadata of a layer made from a relevance result, tagged as the designer's."""
    return {"affine": rel.affine, "nifti_header": rel.header, "provenance": rel.provenance,
            "warnings": list(rel.warnings), META_KEY: dict(extra or {})}


def readout_rows(rel, req) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """(table rows, readouts) of a run: conservation, boundary sums, mask, channel shares, ground truth."""
    from ...core.evaluation.metrics import mask_report

    rows: list[tuple[str, str]] = []
    out: dict[str, Any] = {}
    params = rel.provenance["params"]
    cons = params.get("conservation")
    if cons:
        out["conservation"] = cons
        rows += [("relevance at the input", f"{cons['input']:.5g}"),
                 ("relevance injected at the output", f"{cons['output']:.5g}"),
                 ("ratio in / out", f"{cons['ratio']:.4f}" + ("" if cons["expected"] else " (rules do not conserve)"))]
    rows += [(f"Σ relevance at {k}", f"{v:.5g}") for k, v in params.get("intermediate_sums", {}).items()]
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
        rows += [(f"{s['name']}: share of + / − relevance", f"{s['positive_share']:.1%} / {s['negative_share']:.1%}")
                 for s in shares]
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
    return rows, out


class RunTab(QWidget):
    """Run tab of the designer (``host``): what to explain, *Run active configuration*, the readouts."""

    def __init__(self, host):
        super().__init__()
        self.host = host
        self.point: tuple[int, int, int] | Ray | None = None
        self.last_result = None
        self.readouts: dict[str, Any] = {}
        self._picking = False
        lay = QVBoxLayout(self)
        lay.addWidget(self._build_target_box())
        self.run_btn = button("Run active configuration", self.run)
        self.cancel_btn = button("Cancel", host.cancel, enabled=False)
        lay.addLayout(row(self.run_btn, self.cancel_btn))
        self.readout_table = read_only_table(["readout", "value"])
        lay.addWidget(self.readout_table, 1)

    def _build_target_box(self):
        box, form = group_form("Target")
        self.target = combo([PREDICTED])
        self.mask_source = combo(MASK_SOURCES, "Segmentation models: explain the sum of the target class's logits "
                                               "inside this mask.")
        self.mask_layer = combo()
        self.pick_btn = button("Pick point (click on the component)", self._on_pick_toggled, checkable=True)
        self.point_label = label("no point")
        self.truth_layer = combo(tip="Ground-truth Labels layer: relevance mass, rank accuracy, inclusivity.")
        self.output_index = spin(0, 15, tip="Models that return several outputs (a tuple, e.g. deep supervision):\n"
                                            "which one to explain. 0 = the first. 'List layers' finds how many there are.")
        self.boundaries = checkbox("relevance at segment boundaries", True)
        form.addRow("target class", self.target)
        form.addRow("mask (segmentation)", self.mask_source)
        form.addRow("mask layer", self.mask_layer)
        form.addRow("point", row(self.pick_btn, self.point_label))
        form.addRow("ground truth", self.truth_layer)
        form.addRow("model output (tuple)", self.output_index)
        form.addRow(self.boundaries)
        return box

    # ------------------------------------------------------------------ choices
    def set_label_choices(self, labels: list[str]) -> None:
        for c in (self.mask_layer, self.truth_layer):
            fill_combo(c, [""] + labels)
        if not self.truth_layer.currentText():
            gt = [n for n in labels if "ground truth" in n.lower()]
            if gt:
                self.truth_layer.setCurrentText(gt[0])

    def set_classes(self, names: list[str]) -> None:
        fill_combo(self.target, [PREDICTED, *names], keep=self.target.currentText())

    def classes(self) -> list[str]:
        return [self.target.itemText(i) for i in range(1, self.target.count())]

    # ------------------------------------------------------------------ the request
    def _mask_args(self, volume) -> dict:
        src = self.mask_source.currentText()
        if src == "Labels layer":
            name = chosen(self.mask_layer, "choose the mask's Labels layer, or use the predicted region.")
            return {"mask": array_on_grid(self.host._viewer.layers[name], volume)}  # the input file's voxel order
        if src == "component at point":
            if self.point is None:
                raise UserError("pick a point first (press 'Pick point' and click on the component).")
            return {"point": point_on_grid(self.point, volume)}
        return {}

    def request(self) -> dict:
        host = self.host
        volume = volume_from_layers(host._viewer, host.input_names())
        source, extra = host.model_source()
        target = None if self.target.currentText() == PREDICTED else self.target.currentText()
        truth = None
        if self.truth_layer.currentText():
            truth = array_on_grid(host._viewer.layers[self.truth_layer.currentText()], volume)
        return {"volume": volume, "source": source, "extra": extra, "target": target, "mask": self._mask_args(volume),
                "truth": truth, "boundaries": self.boundaries.isChecked(), "output_index": self.output_index.value()}

    # ------------------------------------------------------------------ point picking
    def _on_pick_toggled(self, on: bool) -> None:
        self._picking = bool(on)
        self.host.status.setText("click the component to explain (2D: the voxel; 3D: the first voxel of the target's "
                                 "predicted region along the view ray)" if on else "")

    def on_click(self, viewer, event):
        """The viewer's mouse callback: while picking, a click sets the point (2D) or the view ray (3D)."""
        if not self._picking:
            return
        names = self.host.input_names()
        if not names:
            return
        layer = self.host._viewer.layers[names[0]]
        world = np.asarray(event.position, dtype=float)
        pos = np.asarray(layer.world_to_data(world), dtype=float)[-3:]
        direction = getattr(event, "view_direction", None)
        if self.host._viewer.dims.ndisplay == 3 and direction is not None:
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
            self.point_label.setText(f"ray through ({', '.join(f'{v:.0f}' for v in point.origin)})")
        else:
            self.point = None if point is None else tuple(int(v) for v in point)
            self.point_label.setText("no point" if point is None else f"voxel {self.point}")
        if point is not None:
            self.mask_source.setCurrentText("component at point")

    # ------------------------------------------------------------------ run
    def run(self, *_):
        """Explain with the active configuration (worker thread); layers appear when it returns."""
        host = self.host
        if host.busy:
            return
        try:
            cfg = host.manager.active_config()
            if cfg is None:
                raise UserError("create and activate a configuration first.")
            req = self.request()
            cfg = cfg.copy()
        except UserError as exc:
            host.fail(str(exc))
            return

        def work():
            model = host.load_for_worker(req)
            return model, req, cfg, host.explain(model, req, cfg)

        host.start(work, f"running '{cfg.name}'", lambda result: self._show_run(*result))

    def _show_run(self, model, req, cfg: LrpConfig, rel) -> None:
        from ..._layers import upsert

        self.host.set_classes(list(rel.provenance["model"]["class_names"]))
        base = f"{model.name} · {cfg.name}"
        names = req["volume"].name.split("+") if req["volume"].name else []
        tuples: list[tuple] = []
        channels = rel.data.shape[0]
        for c in range(channels):
            lab = base if channels == 1 else f"{base} [{names[c] if c < len(names) else f'ch {c}'}]"
            tuples += signed_layers(rel.data[c], lab, rel.affine, layer_meta(rel, {"kind": "relevance", "channel": c}))
        if channels > 1:
            tuples += signed_layers(rel.data.sum(axis=0), f"{base} [Σ channels]", rel.affine,
                                    layer_meta(rel, {"kind": "relevance", "channel": "sum"}))
        tuples += intermediate_layer_data(rel, base, layer_meta(rel, {"kind": "intermediate"}))
        if rel.segmentation is not None:
            tuples.append((rel.segmentation, {"name": f"{model.name} · predicted segmentation", "affine": rel.affine,
                                              "opacity": 0.4, "metadata": {**layer_meta(rel, {"kind": "segmentation"}),
                                                                           "affine": rel.affine}}, "labels"))
        upsert(self.host._viewer, tuples)
        self.last_result = rel
        rows, self.readouts = readout_rows(rel, req)
        fill_table(self.readout_table, [list(r) for r in rows])
        self.host.status.setText(self._summary(rel, cfg))

    @staticmethod
    def _summary(rel, cfg: LrpConfig) -> str:
        text = f"explained '{rel.target_name}' with '{cfg.name}'"
        cons = rel.provenance["params"].get("conservation")
        if cons:
            text += f"; relevance in/out = {cons['input']:.4g} / {cons['output']:.4g} (ratio {cons['ratio']:.3f})"
        if rel.warnings:
            from napari.utils.notifications import show_warning

            for w in rel.warnings:
                show_warning(f"napari-xai: {w}")
            text += "\n⚠ " + "\n⚠ ".join(rel.warnings)
        return text
