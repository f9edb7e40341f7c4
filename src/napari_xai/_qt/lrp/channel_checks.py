"""Check tab, channels: rank a layer's channels by relevance, show their relevance, ablate them."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidgetItem,
)

from ...core.errors import UserError
from .._forms import read_only_table
from .common import META_KEY as LRP_KEY


class ChannelChecks:
    """Channel ablation of :class:`~.check_tab.CheckPanel`."""

    def _build_channel_box(self) -> QGroupBox:
        """The "Channel ablation" group."""
        box = QGroupBox("Channel ablation")
        form = QFormLayout(box)
        self.ablate_layer = QComboBox()
        self.ablate_layer.setToolTip("A layer with channels (from 'List layers' in the Design tab).")
        self.rank_btn = QPushButton("Rank channels")
        self.rank_btn.setToolTip("One LRP pass with the active configuration: relevance per channel of this layer.")
        self.rank_btn.clicked.connect(self.rank_channels)
        row = QHBoxLayout()
        row.addWidget(self.ablate_layer, 1)
        row.addWidget(self.rank_btn)
        form.addRow("layer", row)
        from ...core.atlas import BUILTIN_ATLASES

        self.channel_atlas = QComboBox()
        self.channel_atlas.addItems(["no atlas", *BUILTIN_ATLASES])
        self.channel_atlas.setToolTip(
            "Also name the atlas region each channel fires on for this input (network dissection: its top 0.5 %\n"
            "activations' best IoU with a region; 'napari-xai dissect' does this over a cohort). MNI inputs only.")
        form.addRow("regions", self.channel_atlas)
        self.channel_table = read_only_table(["ablate", "channel", "R+", "R−", "activation", "IoU · fires on"])
        self.channel_table.setMinimumHeight(190)
        self.channel_table.setWordWrap(False)  # long region names are cut at the end, the IoU before them stays
        self.channel_table.setTextElideMode(Qt.TextElideMode.ElideRight)
        head = self.channel_table.horizontalHeader()
        for col in range(5):  # numbers keep their width; the region name takes the rest
            head.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        form.addRow(self.channel_table)
        row = QHBoxLayout()
        self.show_channels_btn = QPushButton("Show relevance of ticked")
        self.show_channels_btn.clicked.connect(self.show_channels)
        self.ablate_btn = QPushButton("Ablate ticked")
        self.ablate_btn.clicked.connect(self.ablate)
        row.addWidget(self.show_channels_btn)
        row.addWidget(self.ablate_btn)
        form.addRow(row)
        self.ablation_label = QLabel("")
        self.ablation_label.setWordWrap(True)
        form.addRow(self.ablation_label)
        return box

    # ------------------------------------------------------------------ channel ablation
    def _ticked_channels(self) -> list[int]:
        out = []
        for r in range(self.channel_table.rowCount()):
            item = self.channel_table.item(r, 0)
            if item is not None and item.checkState() == Qt.CheckState.Checked:
                out.append(int(self.channel_table.item(r, 1).text()))
        return out

    def tick_channels(self, channels: list[int]) -> None:
        for r in range(self.channel_table.rowCount()):
            c = int(self.channel_table.item(r, 1).text())
            self.channel_table.item(r, 0).setCheckState(Qt.CheckState.Checked if c in channels else Qt.CheckState.Unchecked)

    def rank_channels(self, *_):
        try:
            layer = self.ablate_layer.currentText()
            if not layer:
                raise UserError("list the model's layers first (Design tab), then choose a layer with channels.")
            req = self._context()
            cfg = self.host.manager.active_config()
            cfg = cfg.copy() if cfg is not None else None
        except UserError as exc:
            self._fail(str(exc))
            return

        atlas_name = self.channel_atlas.currentText()

        def work():
            from ...core.evaluation.ablation import channel_relevance

            model, scorer = self._scorer(req)
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

        self._start(work, f"relevance per channel of '{layer}'", self._show_channels_table)

    def _show_channels_table(self, res: dict) -> None:
        self.last_channels = res
        rows = sorted(res["channels"], key=lambda c: -c["positive"])
        self.channel_table.setRowCount(len(rows))
        for r, c in enumerate(rows):
            tick = QTableWidgetItem("")
            tick.setFlags(tick.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            tick.setCheckState(Qt.CheckState.Unchecked)
            self.channel_table.setItem(r, 0, tick)
            region = (res.get("regions") or {}).get(c["channel"])
            where = "" if region is None else ("dead" if region.dead else f"{region.iou:.2f} {region.region}")
            for k, text in enumerate([str(c["channel"]), f"{c['positive']:.4g}", f"{c['negative']:.4g}",
                                      f"{c['activation']:.4g}", where], start=1):
                item = QTableWidgetItem(text)
                item.setToolTip(text)
                self.channel_table.setItem(r, k, item)
        total = sum(c["positive"] + c["negative"] for c in res["channels"])
        note = f" Regions: {res['regions_note']}" if res.get("regions_note") else ""
        self.status.setText(f"{len(rows)} channels of '{res['layer']}', sorted by positive relevance; "
                            f"their relevance sums to {total:.4g}. Tick channels to show or ablate them.{note}")

    def show_channels(self, *_):
        from ..._layers import signed_layers

        res = self.last_channels
        chans = self._ticked_channels()
        if res is None or not chans:
            self._fail("rank the channels of a layer and tick the ones to show.")
            return
        if res["volumes"] is None:
            self._fail(f"layer '{res['layer']}' has no spatial output to show.")
            return
        from ..._layers import upsert

        affine = self.host.request()["volume"].affine
        tuples = []
        for c in chans:
            tuples += signed_layers(res["volumes"][c], f"{res['layer']} · channel {c}", affine,
                                    {LRP_KEY: {"kind": "channel", "layer": res["layer"], "channel": c}})
            if res.get("activations") is not None:
                # the designer paper shows each neuron's activation beside its relevance (hidden at first)
                act = res["activations"][c]
                hi = float(np.abs(act).max()) or 1.0
                tuples.append((act, {"name": f"{res['layer']} · channel {c} activation", "affine": affine,
                                     "colormap": "magma", "contrast_limits": (0.0, hi), "visible": False,
                                     "metadata": {LRP_KEY: {"kind": "activation", "layer": res["layer"],
                                                            "channel": c}}}, "image"))
        upsert(self._viewer, tuples)
        self.status.setText(f"relevance of {len(chans)} channel(s) of '{res['layer']}' added as layers"
                            + (" (their activation maps too, hidden)." if res.get("activations") is not None else "."))

    def ablate(self, *_):
        try:
            layer = self.ablate_layer.currentText()
            chans = self._ticked_channels()
            if not layer or not chans:
                raise UserError("rank the channels of a layer and tick the ones to ablate.")
            req = self._context()
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            from ...core.evaluation.ablation import ablate

            model, scorer = self._scorer(req)
            return ablate(model, req["volume"], layer, chans, scorer=scorer)

        self._start(work, f"ablating {len(chans)} channel(s) of '{layer}'", self._show_ablation)

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
        self.status.setText("ablation done; the model itself is unchanged.")
