"""The configuration manager of the LRP designer: create, duplicate, rename, delete, activate, sweep, load, save."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QPushButton,
)

from ...core.errors import UserError
from ...core.lrp import LrpConfig, default_config, load_configs, save_configs


class ConfigManager:
    """Named LRP configurations of :class:`~.designer.LrpDesignerWidget`."""

    # ------------------------------------------------------------------ configurations
    def _build_config_box(self) -> QGroupBox:
        """The configuration manager: the named configurations, their buttons, zero biases, the filter inside LRP."""
        box = QGroupBox("Configurations")
        grid = QGridLayout(box)
        self.config_combo = QComboBox()
        self.config_combo.currentTextChanged.connect(self._on_config_selected)
        self.active_label = QLabel("")
        grid.addWidget(self.config_combo, 0, 0, 1, 3)
        grid.addWidget(self.active_label, 0, 3, 1, 2)
        buttons = [("New", self._new_clicked), ("Duplicate", self._duplicate_clicked), ("Rename", self._rename_clicked),
                   ("Delete", self.delete_config), ("Activate", self.activate), ("Load…", self._load_clicked),
                   ("Save…", self._save_clicked)]
        self.config_buttons = {}
        for i, (text, fn) in enumerate(buttons):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, f=fn: f())
            self.config_buttons[text] = b
            grid.addWidget(b, 1 + i // 4, i % 4)
        self.zero_bias = QCheckBox("zero biases (conserving rules)")
        self.zero_bias.setToolTip("Leave layer biases out of every rule; then rules with alpha - beta = 1 and small "
                                  "epsilon conserve relevance exactly.")
        self.zero_bias.toggled.connect(self._on_zero_bias)
        grid.addWidget(self.zero_bias, 2, 3)
        frow = QHBoxLayout()
        self.filter_kind = QComboBox()
        self.filter_kind.addItems(["no filter", "pass", "clamp"])
        self.filter_kind.setToolTip(
            "Filter inside LRP (Joa et al.): at every rule layer but the last, the relevance is divided by its largest\n"
            "|value|; 'pass' zeroes values outside [α1, α2], 'clamp' clamps them into it; then it is scaled back.\n"
            "E.g. pass [0, 0.4] removes the top 60 % of the amplitude range, clamp [0, 0.2] flattens the top 80 %.")
        self.filter_a1, self.filter_a2 = QDoubleSpinBox(), QDoubleSpinBox()
        for spin, value in ((self.filter_a1, 0.0), (self.filter_a2, 1.0)):
            spin.setRange(0.0, 1.0)
            spin.setSingleStep(0.05)
            spin.setDecimals(2)
            spin.setMinimumWidth(80)
            spin.setValue(value)
            spin.valueChanged.connect(self._on_filter)
        self.filter_kind.currentTextChanged.connect(self._on_filter)
        frow.addWidget(QLabel("filter inside LRP"))
        frow.addWidget(self.filter_kind)
        frow.addWidget(QLabel("α1"))
        frow.addWidget(self.filter_a1)
        frow.addWidget(QLabel("α2"))
        frow.addWidget(self.filter_a2)
        grid.addLayout(frow, 3, 0, 1, 4)

        return box

    @property
    def config(self) -> LrpConfig | None:
        name = self.config_combo.currentText()
        for c in self.configs:
            if c.name == name:
                return c
        return None

    def config_named(self, name: str) -> LrpConfig:
        for c in self.configs:
            if c.name == name:
                return c
        raise UserError(f"there is no configuration {name!r}.")

    def _unique(self, base: str) -> str:
        names = {c.name for c in self.configs}
        if base not in names:
            return base
        i = 2
        while f"{base} ({i})" in names:
            i += 1
        return f"{base} ({i})"

    def _refresh_configs(self, select: str | None = None) -> None:
        self.config_combo.blockSignals(True)
        self.config_combo.clear()
        self.config_combo.addItems([c.name for c in self.configs])
        if select is not None:
            self.config_combo.setCurrentText(select)
        self.config_combo.blockSignals(False)
        if self.active not in {c.name for c in self.configs}:
            self.active = self.configs[0].name if self.configs else None
        self.active_label.setText(f"active: {self.active}" if self.active else "no configuration")
        self._refresh_compare_list()
        self._on_config_selected()

    def new_config(self, name: str | None = None, from_layers: bool = True) -> LrpConfig:
        """Create a configuration: the γ | ε | 0 composite over the listed layers, or an empty one."""
        name = self._unique(name or "configuration")
        if from_layers and self.layers:
            cfg = default_config(self.layers, name)
        else:
            cfg = LrpConfig(name=name)
        self.configs.append(cfg)
        if self.active is None:
            self.active = cfg.name
        self._refresh_configs(cfg.name)
        return cfg

    def duplicate_config(self, name: str | None = None) -> LrpConfig:
        src = self.config
        if src is None:
            raise UserError("there is no configuration to duplicate.")
        cfg = src.copy(self._unique(name or f"{src.name} copy"))
        self.configs.append(cfg)
        self._refresh_configs(cfg.name)
        return cfg

    def sweep_filter(self, kind: str = "pass", alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)) -> list[str]:
        """Copies of the active configuration with an in-LRP filter [0, α] for each α, ticked for comparison.

        With the original (no filter) and a ground truth in the Run tab, the
        Compare tab's table then shows how the readouts change with α (the α
        sweep of Joa et al.). Returns the compare-list labels of the sweep.
        """
        from ...core.lrp import LayerFilter

        base = self.config_named(self.active) if self.active else self.config
        if base is None:
            raise UserError("create a configuration first.")
        names = []
        for a in alphas:
            cfg = base.copy(self._unique(f"{base.name} · {a:g}-{kind}"))
            cfg.filter = LayerFilter(kind, 0.0, float(a))
            self.configs.append(cfg)
            names.append(cfg.name)
        self._refresh_configs(base.name)
        labels = [f"config: {base.name}"] + [f"config: {n}" for n in names]
        self._tick(self.compare_list, labels)
        self.status.setText(f"{len(names)} filtered copies of '{base.name}' added and ticked with it; press "
                            "'Compare in grid'.")
        return labels

    def _sweep_clicked(self):
        try:
            self.sweep_filter(self.sweep_kind.currentText())
        except UserError as exc:
            self._fail(str(exc))

    def rename_config(self, name: str) -> None:
        cfg = self.config
        name = name.strip()
        if cfg is None or not name:
            return
        if name != cfg.name and name in {c.name for c in self.configs}:
            raise UserError(f"a configuration named {name!r} exists already.")
        if self.active == cfg.name:
            self.active = name
        cfg.name = name
        self._refresh_configs(name)

    def delete_config(self) -> None:
        cfg = self.config
        if cfg is None:
            return
        self.configs.remove(cfg)
        if not self.configs:
            self.configs.append(LrpConfig(name="configuration 1"))
        self._refresh_configs(self.configs[0].name)

    def activate(self, name: str | None = None) -> None:
        """Make a configuration the active one (the one 'Run' uses)."""
        name = name or self.config_combo.currentText()
        self.config_named(name)
        self.active = name
        self.active_label.setText(f"active: {name}")

    def save_configs(self, path: str | Path) -> Path:
        return save_configs(path, self.configs, self.active)

    def load_configs(self, path: str | Path, replace: bool = False) -> list[LrpConfig]:
        configs, active = load_configs(path)
        if replace:
            self.configs = []
        for c in configs:
            c.name = self._unique(c.name)
            self.configs.append(c)
        if active and replace:
            self.active = active
        self._refresh_configs(configs[0].name)
        return configs

    def _new_clicked(self):
        name, ok = QInputDialog.getText(self, "New configuration", "name:", text=self._unique("configuration"))
        if ok and name.strip():
            self.new_config(name.strip())

    def _duplicate_clicked(self):
        try:
            self.duplicate_config()
        except UserError as exc:
            self._fail(str(exc))

    def _rename_clicked(self):
        cfg = self.config
        if cfg is None:
            return
        name, ok = QInputDialog.getText(self, "Rename configuration", "name:", text=cfg.name)
        if ok:
            try:
                self.rename_config(name)
            except UserError as exc:
                self._fail(str(exc))

    def _load_clicked(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load LRP configurations", "", "JSON (*.json)")
        if path:
            try:
                self.load_configs(path)
            except UserError as exc:
                self._fail(str(exc))

    def _save_clicked(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save LRP configurations", "lrp_configs.json", "JSON (*.json)")
        if path:
            try:
                self.status.setText(f"saved {self.save_configs(path)}")
            except UserError as exc:
                self._fail(str(exc))

    def _on_config_selected(self, *_):
        cfg = self.config
        self._updating = True
        self.zero_bias.setChecked(bool(cfg.zero_bias) if cfg else False)
        filt = cfg.filter if cfg else None
        self.filter_kind.setCurrentText(filt.kind if filt else "no filter")
        self.filter_a1.setValue(filt.alpha1 if filt else 0.0)
        self.filter_a2.setValue(filt.alpha2 if filt else 1.0)
        self._updating = False
        self._fill_segment_table()
        if self.layers:
            self._fill_layer_table()

    def set_filter(self, kind: str | None, alpha1: float = 0.0, alpha2: float = 1.0) -> None:
        """Set the active configuration's in-LRP relevance filter (None: no filter)."""
        self.filter_a1.setValue(alpha1)
        self.filter_a2.setValue(alpha2)
        self.filter_kind.setCurrentText(kind or "no filter")
        self._on_filter()

    def _on_filter(self, *_):
        from ...core.lrp import LayerFilter

        if self._updating or self.config is None:
            return
        kind = self.filter_kind.currentText()
        if kind == "no filter":
            self.config.filter = None
            return
        try:
            self.config.filter = LayerFilter(kind, self.filter_a1.value(), self.filter_a2.value())
        except UserError as exc:
            self.status.setText(f"error: {exc}")
            return
        self.status.setText(f"'{self.config.name}': {self.config.filter.label()} filter at every rule layer but the last.")

    def _on_zero_bias(self, on: bool) -> None:
        if not self._updating and self.config is not None:
            self.config.zero_bias = bool(on)
