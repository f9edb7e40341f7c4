"""Check tab, randomization sanity check (Adebayo et al. 2018): maps after randomizing the model's layers."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSpinBox,
)

from ...core.errors import UserError
from .._forms import fill_table, read_only_table
from .common import (
    ACTIVE_CONFIG,
    CHECK_META_KEY as META_KEY,
    SANITY_HEADER_TIPS,
    SANITY_HEADERS,
)


class SanityChecks:
    """Randomization sanity check of :class:`~.check_tab.CheckPanel`."""

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
        self.sanity_exit_btn.clicked.connect(lambda: self.host.compare_tab.exit_grid())
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

    # ------------------------------------------------------------------ randomization sanity check
    def _sanity_method(self) -> tuple[str, dict, str]:
        """(registry method, its parameters, what it is called) of the 'map of' choice."""
        choice = self.sanity_method.currentText()
        if choice != ACTIVE_CONFIG:
            return choice, {}, choice
        cfg = self.host.manager.active_config()
        if cfg is None:
            raise UserError("no active LRP configuration; activate one in the Design tab, or choose a method.")
        cfg = cfg.copy()
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

            model = self.host.load_for_worker(req)
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
        self.host.compare_tab.grid.enter(tuples, three_d=self.sanity_3d.isChecked(), meta_key=META_KEY)
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
