"""Check tab, randomization sanity check (Adebayo et al. 2018): maps after randomizing the model's layers."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QFormLayout, QGroupBox

from ...core.errors import UserError
from .._forms import button, checkbox, combo, fill_table, label, read_only_table, row, spin
from .common import ACTIVE_CONFIG, CHECK_META_KEY as META_KEY, SANITY_HEADER_TIPS, SANITY_HEADERS

TIPS = {
    "box": "Adebayo et al. 2018: randomize the model's weights (on a copy) from the output end and explain\n"
           "again. A map that stays the same does not explain what the model learned.",
    "method": "What to explain at every step: the active LRP configuration (Design tab) or a method.\n"
              "Input, model, target and mask are those of the Design and Run tabs.",
    "mode": "cascading: randomize cumulatively from the output end (the paper's main test);\n"
            "independent: one layer at a time, the others keep their trained weights.",
    "layers": "Randomize only this many parametrised layers from the top (all = every one).",
    "seed": "Seed of the random weights (and of stochastic methods such as SmoothGrad).",
    "maps": "Add the original map and every step's map as new layers, side by side in napari's grid;\n"
            "'Exit grid' shows your layers again.",
    "common": "One colour limit for every map. A randomized model's score is often near 0, so conserving methods\n"
              "(LRP, integrated gradients) give much smaller maps: untick to scale each map to its own 99.99th\n"
              "percentile of |relevance| (the table's metrics do not depend on the scale).",
}


def sanity_layer_text(row: dict, mode: str) -> str:
    """The table's 'randomized' cell: the step's layer; '+ layer' when the layers above are random too."""
    if row["step"] == 0:
        return "original"
    return f"+ {row['layer']}" if mode == "cascading" and row["step"] > 1 else row["layer"]


def sanity_step_label(row: dict, mode: str) -> str:
    """Grid-cell title of a sanity step: its step and 'randomized' cell in the table."""
    return f"sanity {row['step']}: {sanity_layer_text(row, mode)}"


def sanity_table_rows(res) -> list[list[str]]:
    mode = res.provenance["mode"]
    return [[str(r["step"]), sanity_layer_text(r, mode)]
            + [f"{r[k]:.3f}" for k in ("spearman", "spearman_abs", "ssim", "top_overlap")]
            + [f"{r.get('target_score', float('nan')):.3g}", f"{r.get('target_probability', float('nan')):.3f}"]
            for r in res.rows]


class SanityBox(QGroupBox):
    """Randomization sanity check: the table of similarities per step, the verdict, the maps in a grid.
    ``panel`` is the Check tab."""

    def __init__(self, panel):
        super().__init__("Randomization sanity check")
        from ...core.evaluation.sanity import MODES
        from ...core.evaluation.similarity import VERDICT_THRESHOLD
        from ...core.methods.catalogue import all_methods

        self.panel = panel
        self.last_sanity: tuple | None = None  # (what was explained, input volume, SanityResult)
        self.sanity_verdict_info: dict | None = None
        self.setToolTip(TIPS["box"])
        form = QFormLayout(self)
        self.sanity_method = combo([ACTIVE_CONFIG] + [m.name for m in all_methods()], TIPS["method"])
        form.addRow("map of", self.sanity_method)
        self.sanity_mode = combo(list(MODES), TIPS["mode"])
        self.sanity_layers = spin(0, 9999, tip=TIPS["layers"])
        self.sanity_layers.setSpecialValueText("all")
        self.sanity_seed = spin(0, 2**31 - 1, tip=TIPS["seed"])
        form.addRow("mode", self.sanity_mode)
        form.addRow("layers from top", row((self.sanity_layers, 1), "seed", (self.sanity_seed, 1)))
        self.sanity_btn = button("Run sanity check", self.run_sanity)
        self.sanity_maps_btn = button("Show maps", self.show_sanity_maps, TIPS["maps"])
        self.sanity_exit_btn = button("Exit grid", lambda: panel.host.compare_tab.exit_grid())
        form.addRow(row(self.sanity_btn, self.sanity_maps_btn, self.sanity_exit_btn))
        self.sanity_3d = checkbox("3D")
        self.sanity_common = checkbox("one colour scale", True, TIPS["common"])
        form.addRow("maps", row(self.sanity_common, self.sanity_3d, stretch=1))
        self.sanity_table = read_only_table(SANITY_HEADERS)  # nothing elided; scrolls if narrow
        for c, tip in enumerate(SANITY_HEADER_TIPS):
            self.sanity_table.horizontalHeaderItem(c).setToolTip(tip)
        self.sanity_table.setMinimumHeight(280)  # a small network's steps without scrolling
        form.addRow(self.sanity_table)
        self.sanity_verdict = label("", tip=(
            f"Rule of thumb: the map fails when the larger of its two rank correlations with the original is\n"
            f">= {VERDICT_THRESHOLD:g} at any cascading step (independent mode: with the top layer alone random)."))
        form.addRow(self.sanity_verdict)

    def _sanity_method(self) -> tuple[str, dict, str]:
        """(registry method, its parameters, what it is called) of the 'map of' choice."""
        choice = self.sanity_method.currentText()
        if choice != ACTIVE_CONFIG:
            return choice, {}, choice
        cfg = self.panel.host.manager.active_config()
        if cfg is None:
            raise UserError("no active LRP configuration; activate one in the Design tab, or choose a method.")
        cfg = cfg.copy()
        return "lrp", {"config": cfg, "boundaries": False}, f"'{cfg.name}'"

    def run_sanity(self, *_):
        """The randomization test (core.evaluation.sanity.sanity_check) of the chosen map on the Design/Run tabs' request."""
        panel = self.panel
        try:
            req = panel.context()
            method, params, what = self._sanity_method()
            opts = {"mode": self.sanity_mode.currentText(), "seed": self.sanity_seed.value(),
                    "last": self.sanity_layers.value() or None}
        except UserError as exc:
            panel.fail(str(exc))
            return

        def work():
            import time

            from ...core.evaluation.sanity import sanity_check

            model = panel.host.load_for_worker(req)
            t0 = time.perf_counter()
            res = sanity_check(req["volume"], model, method, params=params, target=req["target"], keep_maps=True,
                               progress=panel.report, should_stop=panel.should_stop, **opts,
                               **panel.explain_kwargs(model, req))
            return what, req["volume"], res, time.perf_counter() - t0

        panel.start(work, f"randomization sanity check of {what} ({opts['mode']})", self._show_sanity)

    def _show_sanity(self, result) -> None:
        from ...core.evaluation.similarity import verdict

        what, volume, res, seconds = result
        self.last_sanity = (what, volume, res)
        mode = res.provenance["mode"]
        self.sanity_table.horizontalHeaderItem(1).setToolTip(
            SANITY_HEADER_TIPS[1] if mode == "cascading" else "independent: only this layer is random")
        fill_table(self.sanity_table, sanity_table_rows(res))
        v = self.sanity_verdict_info = verdict(res.rows, mode)
        self.sanity_verdict.setText(v["text"])
        self.sanity_verdict.setStyleSheet("color: #74c476;" if v["passes"] else "color: #fd8d3c;")
        target = res.provenance["target"]["name"]
        text = (f"{what} for '{target}': {len(res.rows) - 1} of {res.provenance['layers_in_model']} parametrised "
                f"layers randomized ({mode}, seed {res.provenance['seed']}) in {seconds:.1f} s; the model itself is "
                "unchanged. 'Show maps' puts the maps side by side.")
        if res.warnings:
            text += "\n⚠ " + "\n⚠ ".join(res.warnings)
        self.panel.status.setText(text)

    def show_sanity_maps(self, *_):
        """The original map and every step's map as new layers in napari's grid (one colour scale, or one per map)."""
        import dataclasses

        if self.last_sanity is None:
            self.panel.fail("run the sanity check first ('Run sanity check'), then show its maps.")
            return
        what, volume, res = self.last_sanity
        cells = []
        for r, m, rec in zip(res.rows, res.maps, res.step_provenance):
            rel = dataclasses.replace(res.original, data=np.asarray(m, np.float32), provenance=rec, warnings=[],
                                      intermediate={}, segmentation=None)
            cells.append((sanity_step_label(r, res.provenance["mode"]), rel))

        def tag(kw):
            kw["metadata"][META_KEY].update({"kind": "sanity", "step": int(kw["metadata"]["provenance"]["sanity"]["step"])})

        scale = self.panel.host.compare_tab.grid.show(volume, cells, self.sanity_common.isChecked(),
                                                      self.sanity_3d.isChecked(), META_KEY, tag, "map")
        self.panel.status.setText(f"{len(cells)} maps of {what} side by side (sanity 0 = the original); {scale} "
                                  "(hot: positive, cyan: negative). 'Exit grid' shows your layers again.")
