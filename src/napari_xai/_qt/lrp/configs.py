"""The configuration manager of the LRP designer: create, duplicate, rename, delete, activate, load, save.

It owns the named configurations (``configs``) and which one *Run* uses (``active``); the other tabs read them
here and follow its signals: ``configs_changed`` (the list of names changed) and ``config_selected`` (another
configuration is shown, or its rules changed).
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QFileDialog, QGridLayout, QGroupBox, QInputDialog, QLabel

from ...core.errors import UserError
from ...core.lrp import LayerFilter, LrpConfig, default_config, load_configs, save_configs
from .._forms import button, checkbox, combo, double_spin, row

FILTER_TIP = (
    "Filter inside LRP (Joa et al.): at every rule layer but the last, the relevance is divided by its largest\n"
    "|value|; 'pass' zeroes values outside [α1, α2], 'clamp' clamps them into it; then it is scaled back.\n"
    "E.g. pass [0, 0.4] removes the top 60 % of the amplitude range, clamp [0, 0.2] flattens the top 80 %.")


class ConfigManager(QGroupBox):
    """Named LRP configurations; ``host`` is the designer (status line, the model's layers)."""

    configs_changed = Signal()
    config_selected = Signal()

    def __init__(self, host):
        super().__init__("Configurations")
        self.host = host
        self.configs: list[LrpConfig] = []
        self.active: str | None = None
        self._updating = False
        grid = QGridLayout(self)
        self.config_combo = combo()
        self.config_combo.currentTextChanged.connect(self._on_config_selected)
        self.active_label = QLabel("")
        grid.addWidget(self.config_combo, 0, 0, 1, 3)
        grid.addWidget(self.active_label, 0, 3, 1, 2)
        buttons = [("New", self._new_clicked), ("Duplicate", self.duplicate_config), ("Rename", self._rename_clicked),
                   ("Delete", self.delete_config), ("Activate", self.activate), ("Load…", self._load_clicked),
                   ("Save…", self._save_clicked)]
        self.config_buttons = {text: button(text, self._guarded(fn)) for text, fn in buttons}
        for i, b in enumerate(self.config_buttons.values()):
            grid.addWidget(b, 1 + i // 4, i % 4)
        self.zero_bias = checkbox("zero biases (conserving rules)", tip="Leave layer biases out of every rule; then "
                                  "rules with alpha - beta = 1 and small epsilon conserve relevance exactly.",
                                  slot=self._on_zero_bias)
        grid.addWidget(self.zero_bias, 2, 3)
        self.filter_kind = combo(["no filter", "pass", "clamp"], FILTER_TIP)
        self.filter_a1, self.filter_a2 = (double_spin(0.0, 1.0, v, 0.05) for v in (0.0, 1.0))
        for spin in (self.filter_a1, self.filter_a2):
            spin.setMinimumWidth(80)
            spin.valueChanged.connect(self._on_filter)
        self.filter_kind.currentTextChanged.connect(self._on_filter)
        grid.addLayout(row("filter inside LRP", self.filter_kind, "α1", self.filter_a1, "α2", self.filter_a2),
                       3, 0, 1, 4)

    def _guarded(self, fn):
        """A button's action: a user mistake becomes the designer's error line."""
        def run():
            try:
                fn()
            except UserError as exc:
                self.host.fail(str(exc))
        return run

    @property
    def config(self) -> LrpConfig | None:
        """The configuration shown (and edited) in the Design tab."""
        name = self.config_combo.currentText()
        return next((c for c in self.configs if c.name == name), None)

    def config_named(self, name: str) -> LrpConfig:
        for c in self.configs:
            if c.name == name:
                return c
        raise UserError(f"there is no configuration {name!r}.")

    def active_config(self) -> LrpConfig | None:
        return self.config_named(self.active) if self.active else None

    def _unique(self, base: str) -> str:
        names = {c.name for c in self.configs}
        if base not in names:
            return base
        i = 2
        while f"{base} ({i})" in names:
            i += 1
        return f"{base} ({i})"

    def _refresh(self, select: str | None = None) -> None:
        self.config_combo.blockSignals(True)
        self.config_combo.clear()
        self.config_combo.addItems([c.name for c in self.configs])
        if select is not None:
            self.config_combo.setCurrentText(select)
        self.config_combo.blockSignals(False)
        if self.active not in {c.name for c in self.configs}:
            self.active = self.configs[0].name if self.configs else None
        self.active_label.setText(f"active: {self.active}" if self.active else "no configuration")
        self.configs_changed.emit()
        self._on_config_selected()

    def new_config(self, name: str | None = None, from_layers: bool = True) -> LrpConfig:
        """Create a configuration: the γ | ε | 0 composite over the listed layers, or an empty one."""
        name = self._unique(name or "configuration")
        layers = self.host.layers
        cfg = default_config(layers, name) if from_layers and layers else LrpConfig(name=name)
        self.configs.append(cfg)
        if self.active is None:
            self.active = cfg.name
        self._refresh(cfg.name)
        return cfg

    def duplicate_config(self, name: str | None = None) -> LrpConfig:
        src = self.config
        if src is None:
            raise UserError("there is no configuration to duplicate.")
        cfg = src.copy(self._unique(name or f"{src.name} copy"))
        self.configs.append(cfg)
        self._refresh(cfg.name)
        return cfg

    def filtered_copies(self, kind: str, alphas) -> tuple[LrpConfig, list[str]]:
        """(active configuration, names of its copies with an in-LRP filter [0, α] for each α)."""
        base = self.active_config() or self.config
        if base is None:
            raise UserError("create a configuration first.")
        names = []
        for a in alphas:
            cfg = base.copy(self._unique(f"{base.name} · {a:g}-{kind}"))
            cfg.filter = LayerFilter(kind, 0.0, float(a))
            self.configs.append(cfg)
            names.append(cfg.name)
        self._refresh(base.name)
        return base, names

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
        self._refresh(name)

    def delete_config(self) -> None:
        cfg = self.config
        if cfg is None:
            return
        self.configs.remove(cfg)
        if not self.configs:
            self.configs.append(LrpConfig(name="configuration 1"))
        self._refresh(self.configs[0].name)

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
        self._refresh(configs[0].name)
        return configs

    def _new_clicked(self):
        name, ok = QInputDialog.getText(self, "New configuration", "name:", text=self._unique("configuration"))
        if ok and name.strip():
            self.new_config(name.strip())

    def _rename_clicked(self):
        if self.config is not None:
            name, ok = QInputDialog.getText(self, "Rename configuration", "name:", text=self.config.name)
            if ok:
                self.rename_config(name)

    def _load_clicked(self):
        path, _ = QFileDialog.getOpenFileName(self, "Load LRP configurations", "", "JSON (*.json)")
        if path:
            self.load_configs(path)

    def _save_clicked(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save LRP configurations", "lrp_configs.json", "JSON (*.json)")
        if path:
            self.host.status.setText(f"saved {self.save_configs(path)}")

    def _on_config_selected(self, *_):
        cfg = self.config
        self._updating = True
        self.zero_bias.setChecked(bool(cfg.zero_bias) if cfg else False)
        filt = cfg.filter if cfg else None
        self.filter_kind.setCurrentText(filt.kind if filt else "no filter")
        self.filter_a1.setValue(filt.alpha1 if filt else 0.0)
        self.filter_a2.setValue(filt.alpha2 if filt else 1.0)
        self._updating = False
        self.config_selected.emit()

    def set_filter(self, kind: str | None, alpha1: float = 0.0, alpha2: float = 1.0) -> None:
        """Set the shown configuration's in-LRP relevance filter (None: no filter)."""
        self.filter_a1.setValue(alpha1)
        self.filter_a2.setValue(alpha2)
        self.filter_kind.setCurrentText(kind or "no filter")
        self._on_filter()

    def _on_filter(self, *_):
        if self._updating or self.config is None:
            return
        kind = self.filter_kind.currentText()
        if kind == "no filter":
            self.config.filter = None
            return
        try:
            self.config.filter = LayerFilter(kind, self.filter_a1.value(), self.filter_a2.value())
        except UserError as exc:
            self.host.status.setText(f"error: {exc}")
            return
        self.host.status.setText(f"'{self.config.name}': {self.config.filter.label()} filter at every rule layer "
                                 "but the last.")

    def _on_zero_bias(self, on: bool) -> None:
        if not self._updating and self.config is not None:
            self.config.zero_bias = bool(on)
