"""Check tab, channels: rank a layer's channels by relevance, show their relevance, ablate them."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFormLayout, QGroupBox, QHeaderView, QTableWidgetItem

from ...core.errors import UserError
from .._forms import button, check_state, checkable, chosen, combo, fill_combo, label, read_only_table, row
from .common import META_KEY as LRP_KEY

ATLAS_TIP = ("Also name the atlas region each channel fires on for this input (network dissection: its top 0.5 %\n"
             "activations' best IoU with a region; 'napari-xai dissect' does this over a cohort). MNI inputs only.")


def channel_cells(c: dict, region) -> list[str]:
    """Channel, R+, R−, activation and where it fires (atlas region and IoU, 'dead', or nothing)."""
    where = "" if region is None else ("dead" if region.dead else f"{region.iou:.2f} {region.region}")
    return [str(c["channel"]), f"{c['positive']:.4g}", f"{c['negative']:.4g}", f"{c['activation']:.4g}", where]


class ChannelBox(QGroupBox):
    """"Channel ablation": a layer's channels ranked by positive relevance (LRP with the active configuration);
    ticked channels are shown as layers or set to zero. ``panel`` is the Check tab."""

    def __init__(self, panel):
        super().__init__("Channel ablation")
        from ...core.atlas import BUILTIN_ATLASES

        self.panel = panel
        self.last_channels: dict | None = None
        self.last_ablation: dict | None = None
        form = QFormLayout(self)
        self.ablate_layer = combo(tip="A layer with channels (from 'List layers' in the Design tab).")
        self.rank_btn = button("Rank channels", self.rank_channels,
                               "One LRP pass with the active configuration: relevance per channel of this layer.")
        form.addRow("layer", row((self.ablate_layer, 1), self.rank_btn))
        self.channel_atlas = combo(["no atlas", *BUILTIN_ATLASES], ATLAS_TIP)
        form.addRow("regions", self.channel_atlas)
        self.channel_table = read_only_table(["ablate", "channel", "R+", "R−", "activation", "IoU · fires on"])
        self.channel_table.setMinimumHeight(190)
        self.channel_table.setWordWrap(False)  # long region names are cut at the end, the IoU before them stays
        self.channel_table.setTextElideMode(Qt.TextElideMode.ElideRight)
        head = self.channel_table.horizontalHeader()
        for col in range(5):  # numbers keep their width; the region name takes the rest
            head.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        form.addRow(self.channel_table)
        self.show_channels_btn = button("Show relevance of ticked", self.show_channels)
        self.ablate_btn = button("Ablate ticked", self.ablate)
        form.addRow(row(self.show_channels_btn, self.ablate_btn))
        self.ablation_label = label("")
        form.addRow(self.ablation_label)

    def set_layers(self, layers) -> None:
        """Layers with channels, after the designer listed them."""
        fill_combo(self.ablate_layer, [l.name for l in layers if l.output_shape and len(l.output_shape) >= 2
                                       and l.kind in ("rule", "pass", "gradient", "sum")])

    # ------------------------------------------------------------------ ticks
    def _ticked_channels(self) -> list[int]:
        t = self.channel_table
        return [int(t.item(r, 1).text()) for r in range(t.rowCount())
                if t.item(r, 0) is not None and t.item(r, 0).checkState() == Qt.CheckState.Checked]

    def tick_channels(self, channels: list[int]) -> None:
        for r in range(self.channel_table.rowCount()):
            c = int(self.channel_table.item(r, 1).text())
            self.channel_table.item(r, 0).setCheckState(check_state(c in channels))

    # ------------------------------------------------------------------ ranking
    def rank_channels(self, *_):
        panel = self.panel
        try:
            layer = chosen(self.ablate_layer, "list the model's layers first (Design tab), then choose a layer with "
                                              "channels.")
            req = panel.context()
            cfg = panel.host.manager.active_config()
            cfg = cfg.copy() if cfg is not None else None
        except UserError as exc:
            panel.fail(str(exc))
            return
        atlas_name = self.channel_atlas.currentText()

        def compute(model, scorer):
            from ...core.evaluation.ablation import channel_relevance

            res = channel_relevance(model, req["volume"], layer, config=cfg, scorer=scorer)
            if atlas_name != "no atlas":
                from ...core.atlas import load_atlas
                from ...core.dissect import dissect

                try:
                    found = dissect(model, [req["volume"]], load_atlas(atlas_name), layer)
                    res["regions"] = {r.channel: r for r in found.rows}
                except UserError as exc:  # e.g. a dense layer, or an input outside the atlas: the ranking stands
                    res["regions_note"] = str(exc)
            return res

        panel.start_scored(req, compute, f"relevance per channel of '{layer}'", self._show_channels_table)

    def _show_channels_table(self, res: dict) -> None:
        self.last_channels = res
        rows = sorted(res["channels"], key=lambda c: -c["positive"])
        self.channel_table.setRowCount(len(rows))
        for r, c in enumerate(rows):
            self.channel_table.setItem(r, 0, checkable(QTableWidgetItem(""), False))
            for k, text in enumerate(channel_cells(c, (res.get("regions") or {}).get(c["channel"])), start=1):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.channel_table.setItem(r, k, item)
        total = sum(c["positive"] + c["negative"] for c in res["channels"])
        note = f" Regions: {res['regions_note']}" if res.get("regions_note") else ""
        self.panel.status.setText(f"{len(rows)} channels of '{res['layer']}', sorted by positive relevance; "
                                  f"their relevance sums to {total:.4g}. Tick channels to show or ablate them.{note}")

    def show_channels(self, *_):
        from ..._layers import signed_layers, upsert

        res, chans, panel = self.last_channels, self._ticked_channels(), self.panel
        if res is None or not chans:
            panel.fail("rank the channels of a layer and tick the ones to show.")
            return
        if res["volumes"] is None:
            panel.fail(f"layer '{res['layer']}' has no spatial output to show.")
            return
        affine = panel.host.request()["volume"].affine
        tuples = []
        for c in chans:
            tag = {"layer": res["layer"], "channel": c}
            tuples += signed_layers(res["volumes"][c], f"{res['layer']} · channel {c}", affine,
                                    {LRP_KEY: {"kind": "channel", **tag}})
            if res.get("activations") is not None:
                # the designer paper shows each neuron's activation beside its relevance (hidden at first)
                act = res["activations"][c]
                tuples.append((act, {"name": f"{res['layer']} · channel {c} activation", "affine": affine,
                                     "colormap": "magma", "contrast_limits": (0.0, float(np.abs(act).max()) or 1.0),
                                     "visible": False, "metadata": {LRP_KEY: {"kind": "activation", **tag}}}, "image"))
        upsert(panel.viewer, tuples)
        panel.status.setText(f"relevance of {len(chans)} channel(s) of '{res['layer']}' added as layers"
                             + (" (their activation maps too, hidden)." if res.get("activations") is not None else "."))

    # ------------------------------------------------------------------ ablation
    def ablate(self, *_):
        panel = self.panel
        try:
            layer = self.ablate_layer.currentText()
            chans = self._ticked_channels()
            if not layer or not chans:
                raise UserError("rank the channels of a layer and tick the ones to ablate.")
            req = panel.context()
        except UserError as exc:
            panel.fail(str(exc))
            return

        def compute(model, scorer):
            from ...core.evaluation.ablation import ablate

            return ablate(model, req["volume"], layer, chans, scorer=scorer)

        panel.start_scored(req, compute, f"ablating {len(chans)} channel(s) of '{layer}'", self._show_ablation)

    def _show_ablation(self, res: dict) -> None:
        self.last_ablation = res
        names, t = res["names"], res["target"]
        b, a = res["before"], res["after"]
        probs = ""
        if not np.isnan(b["probabilities"][0]):
            probs = f"; p({names[t]}) {b['probabilities'][t]:.3f} → {a['probabilities'][t]:.3f}"
        self.ablation_label.setText(
            f"channels {', '.join(map(str, res['channels']))} of '{res['layer']}' set to zero: '{names[t]}' logit "
            f"{b['logits'][t]:.4g} → {a['logits'][t]:.4g} (Δ {res['delta']:+.4g}){probs}; predicted "
            f"{names[b['predicted']]} → {names[a['predicted']]}.")
        self.panel.status.setText("ablation done; the model itself is unchanged.")
