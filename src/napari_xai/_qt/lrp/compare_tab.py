"""The Compare tab of the LRP designer: configurations x targets x models side by side in napari's grid mode."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ...core.errors import Cancelled, UserError
from ...core.compare import cell_limits, common_limit
from .common import META_KEY, fill_table, is_segmentation, read_only_table

class CompareTab:
    """Compare tab of :class:`~.designer.LrpDesignerWidget`."""

    def _build_compare(self) -> QWidget:
        page = QWidget()
        lay = QVBoxLayout(page)
        intro = QLabel("Every ticked configuration/method runs for every ticked target and model "
                       "on the same input; one grid cell each, one colour scale for all.")
        intro.setWordWrap(True)
        lay.addWidget(intro)
        self.compare_list = QListWidget()
        self.compare_list.setToolTip("LRP configurations of this designer and the registry's methods.")
        lay.addWidget(QLabel("configurations and methods"))
        lay.addWidget(self.compare_list, 3)
        axes = QHBoxLayout()
        tcol, mcol = QVBoxLayout(), QVBoxLayout()
        tcol.addWidget(QLabel("targets"))
        self.compare_targets = QListWidget()
        self.compare_targets.setToolTip("Classes to explain; 'predicted' is each model's own prediction.")
        tcol.addWidget(self.compare_targets)
        mcol.addWidget(QLabel("models"))
        self.compare_models = QListWidget()
        self.compare_models.setToolTip("Models to compare; none = the model of the Design tab.\n"
                                       "Choose a model in the Design tab and press 'Add model'.")
        mcol.addWidget(self.compare_models)
        mrow = QHBoxLayout()
        self.add_model_btn = QPushButton("Add model")
        self.add_model_btn.setToolTip("Add the Design tab's model source to the comparison.")
        self.add_model_btn.clicked.connect(self._add_model_clicked)
        self.remove_model_btn = QPushButton("Remove")
        self.remove_model_btn.clicked.connect(self._remove_model_clicked)
        mrow.addWidget(self.add_model_btn)
        mrow.addWidget(self.remove_model_btn)
        mcol.addLayout(mrow)
        axes.addLayout(tcol)
        axes.addLayout(mcol)
        lay.addLayout(axes, 2)
        self._compare_sources: dict[str, tuple[str, dict]] = {}
        self._set_compare_targets([])
        opts = QHBoxLayout()
        self.compare_3d = QCheckBox("3D view")
        self.compare_3d.setChecked(True)
        self.compare_common = QCheckBox("one colour scale for all cells")
        self.compare_common.setChecked(True)
        self.compare_common.setToolTip("Untick when methods with different units meet (e.g. occlusion and LRP):\n"
                                       "then each cell is scaled to its own 99.99th percentile of |relevance|.")
        opts.addWidget(self.compare_3d)
        opts.addWidget(self.compare_common)
        lay.addLayout(opts)
        row = QHBoxLayout()
        self.compare_btn = QPushButton("Compare in grid")
        self.compare_btn.clicked.connect(lambda: self.compare())
        self.save_png_btn = QPushButton("Save PNG…")
        self.save_png_btn.clicked.connect(self._save_png_clicked)
        self.exit_grid_btn = QPushButton("Exit grid")
        self.exit_grid_btn.clicked.connect(self.exit_grid)
        row.addWidget(self.compare_btn)
        row.addWidget(self.save_png_btn)
        row.addWidget(self.exit_grid_btn)
        lay.addLayout(row)
        srow = QHBoxLayout()
        self.sweep_btn = QPushButton("Add α sweep of the active configuration")
        self.sweep_btn.setToolTip("Copies of the active configuration with a [0, α] filter inside LRP for α = 0.2, 0.4, "
                                  "0.6, 0.8, ticked with the original (Joa et al.'s α sweep).")
        self.sweep_btn.clicked.connect(self._sweep_clicked)
        self.sweep_kind = QComboBox()
        self.sweep_kind.addItems(["pass", "clamp"])
        srow.addWidget(self.sweep_btn, 1)
        srow.addWidget(self.sweep_kind)
        lay.addLayout(srow)
        self.cell_table = read_only_table(["cell", "Σ relevance", "mass in GT", "rank acc.", "D(R,GT)", "D(R,x)"])
        self.cell_table.setToolTip("Per cell: the relevance sum and, with a ground truth chosen in the Run tab, the mask "
                                   "readouts (relevance mass, rank accuracy, inclusivity).")
        lay.addWidget(self.cell_table, 1)
        return page

    def compare(self, items: list[str] | None = None, targets: list[str] | None = None,
                models: list[str] | None = None):
        """Run every configuration/method for every target and model on the same input; show them in napari's grid.

        ``items`` are labels of the compare list (``config: <name>`` or
        ``method: <name>``), ``targets`` class names or "predicted", ``models``
        keys of the models list; each defaults to the ticked entries (no model
        ticked: the Design tab's model).
        """
        from ...core.compare import plan

        if self._worker is not None:
            return
        items = items if items is not None else self._checked(self.compare_list)
        targets = targets if targets is not None else self._checked(self.compare_targets)
        models = models if models is not None else self._checked(self.compare_models)
        try:
            if not items:
                raise UserError("tick at least one configuration or method in the compare list.")
            whats = []
            for it in items:
                kind, _, name = it.partition(": ")
                if kind == "config":
                    self.config_named(name)
                elif kind == "method":
                    from ...core.methods.catalogue import get_method

                    name = get_method(name).name
                else:
                    raise UserError(f"unknown compare item {it!r}.")
                whats.append((kind, name))
            configs = {c.name: c.copy() for c in self.configs}
            if models:
                unknown = [m for m in models if m not in self._compare_sources]
                if unknown:
                    raise UserError(f"model {unknown[0]!r} is not in the models list; add it with 'Add model'.")
                sources = {m: self._compare_sources[m] for m in models}
            else:
                sources = {"": self.model_source()}
            # each model explains its own class of a ticked name; a model that does not name it (e.g. a
            # randomised copy) explains the name's position among the Design tab model's classes, with a note
            classes = [self.target.itemText(i) for i in range(1, self.target.count())]
            plan_items = plan(whats, [None if t == "predicted" else t for t in targets or [None]], list(sources))
            req = self._request()
        except UserError as exc:
            self._fail(str(exc))
            return

        def work():
            from ...core.compare import run_comparison

            loaded = {}
            for key, (source, extra) in sources.items():
                if self._cancel.is_set():
                    raise Cancelled("cancelled by the user")
                self._progress[:] = [0.0, f"loading {key or 'the model'}"]
                loaded[key] = self._load_for_worker({"source": source, "extra": extra})
            first = next(iter(loaded.values()))
            seg = bool(req["mask"]) or is_segmentation(first, self._prepare(req, first), req["output_index"])
            cells = run_comparison(
                req["volume"], plan_items, loaded, configs, classes=classes,
                progress=lambda f, m: self._progress.__setitem__(slice(None), [f, m]),
                should_stop=self._cancel.is_set, segmentation=seg, output_index=req["output_index"], **req["mask"],
            )
            self.last_cells = (req, cells, loaded)  # for the Check tab's per-cell flipping curves
            return "compare", (req, [(c.label, c.relevance) for c in cells])

        self._start(work, f"comparing {len(plan_items)} cells")

    @staticmethod
    def _prepare(req, model):
        from ...core.explain import prepare_input

        return prepare_input(req["volume"], model)[0]

    def add_compare_model(self) -> str:
        """Add the Design tab's model source to the comparison's models list (ticked); returns its key."""
        from ...core.compare import model_name

        source, extra = self.model_source()
        same = [k for k, v in self._compare_sources.items() if v == (source, extra)]
        key = same[0] if same else model_name(source, extra.get("weights"), list(self._compare_sources))
        if key not in self._compare_sources:
            self._compare_sources[key] = (source, dict(extra))
            item = QListWidgetItem(key)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setToolTip(source)
            self.compare_models.addItem(item)
        for i in range(self.compare_models.count()):
            it = self.compare_models.item(i)
            if it.text() == key:
                it.setCheckState(Qt.CheckState.Checked)
        return key

    def _add_model_clicked(self):
        try:
            key = self.add_compare_model()
        except UserError as exc:
            self._fail(str(exc))
        else:
            self.status.setText(f"model '{key}' added to the comparison.")

    def _remove_model_clicked(self):
        for it in self.compare_models.selectedItems():
            self._compare_sources.pop(it.text(), None)
            self.compare_models.takeItem(self.compare_models.row(it))

    def _set_compare_targets(self, names: list[str]) -> None:
        checked = set(self._checked(self.compare_targets)) if hasattr(self, "compare_targets") else set()
        self.compare_targets.clear()
        for text in ["predicted", *names]:
            item = QListWidgetItem(text)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = text in checked or (not (checked & {"predicted", *names}) and text == "predicted")
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.compare_targets.addItem(item)

    # ------------------------------------------------------------------ comparison
    def _refresh_compare_list(self) -> None:
        from ...core.methods.catalogue import all_methods

        checked = set(self._checked(self.compare_list))
        self.compare_list.clear()
        labels = [f"config: {c.name}" for c in self.configs]
        labels += [f"method: {m.name}" for m in all_methods()]
        for text in labels:
            item = QListWidgetItem(text)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = text in checked or (not checked and text.startswith("config: "))
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.compare_list.addItem(item)

    @staticmethod
    def _checked(widget: QListWidget) -> list[str]:
        return [widget.item(i).text() for i in range(widget.count())
                if widget.item(i).checkState() == Qt.CheckState.Checked]

    @staticmethod
    def _tick(widget: QListWidget, names: list[str]) -> None:
        for i in range(widget.count()):
            it = widget.item(i)
            it.setCheckState(Qt.CheckState.Checked if it.text() in names else Qt.CheckState.Unchecked)

    def set_compare_items(self, items: list[str], targets: list[str] | None = None,
                          models: list[str] | None = None) -> None:
        """Tick these compare-list entries (and, if given, these targets and models)."""
        self._tick(self.compare_list, items)
        if targets is not None:
            self._tick(self.compare_targets, targets)
        if models is not None:
            self._tick(self.compare_models, models)

    def enter_grid(self, tuples: list[tuple], three_d: bool, meta_key: str = META_KEY) -> list:
        """Add these grid layers (``_layers.comparison_layer_data``) and switch napari's grid on.

        The earlier grid layers tagged ``kind`` = the new ones' kind under
        ``meta_key`` go; every other layer is hidden while the grid is on
        (their visibility is restored by :meth:`exit_grid`), never changed otherwise.
        """
        from ..._layers import show_grid

        viewer = self._viewer
        kinds = {kw["metadata"].get(meta_key, {}).get("kind") for _, kw, _ in tuples} - {None}
        for layer in [l for l in viewer.layers if l.metadata.get(meta_key, {}).get("kind") in kinds]:
            viewer.layers.remove(layer)
        if self._grid_state is None:
            self._grid_state = {"visible": {l.name: l.visible for l in viewer.layers},
                                "ndisplay": viewer.dims.ndisplay, "stride": viewer.canvas.grid.stride}
        for layer in viewer.layers:
            layer.visible = False
        return show_grid(viewer, tuples, three_d=three_d)

    def _show_comparison(self, req, results: list) -> None:
        from ..._layers import comparison_layer_data, faint_cells

        maps = [rel.data.sum(axis=0) for _, rel in results]
        common = self.compare_common.isChecked()
        limit = common_limit(maps) if common else cell_limits(maps)
        tuples = comparison_layer_data(req["volume"].data[0], results, limit, META_KEY)
        self.enter_grid(tuples, three_d=self.compare_3d.isChecked())
        self.last_comparison = results
        self._fill_cell_table(req, results)
        scale = f"colour limit 0…{limit:.3g} for all" if common else "each cell scaled to its own 99.99th percentile"
        faint = faint_cells(tuples, META_KEY)
        if faint:
            scale += f" ({', '.join(faint)}: too faint at this scale; uncheck 'one colour scale' to see them)"
        self.status.setText(f"{len(results)} cells side by side; {scale} (hot: positive, cyan: negative relevance).")

    def _fill_cell_table(self, req, results: list) -> None:
        """One row per comparison cell: relevance sum and, with a ground truth, the mask readouts."""
        from ...core.evaluation.metrics import MASK_READOUTS, mask_report

        self.cell_readouts = []
        texts = []
        for label, rel in results:
            row = {"cell": label, "sum": float(rel.data.sum())}
            if req.get("truth") is not None:
                try:
                    rep = mask_report(rel.data, req["truth"], image=req["volume"].data)
                except UserError:
                    rep = None
                if rep is not None:
                    row.update({k: rep[k] for k in MASK_READOUTS})
            self.cell_readouts.append(row)
            texts.append([label, f"{row['sum']:.4g}"] + [f"{row[k]:.3f}" if k in row else "–" for k in MASK_READOUTS])
        fill_table(self.cell_table, texts)

    def exit_grid(self) -> None:
        viewer = self._viewer
        viewer.canvas.grid.enabled = False
        state = self._grid_state or {}
        for layer in viewer.layers:
            if layer.name in state.get("visible", {}):
                layer.visible = state["visible"][layer.name]
        if "ndisplay" in state:
            viewer.dims.ndisplay = state["ndisplay"]
            viewer.canvas.grid.stride = state["stride"]
        self._grid_state = None

    def save_comparison(self, path: str | Path) -> Path:
        """Save the comparison grid (canvas) as one PNG figure."""
        if not self.last_comparison:
            raise UserError("run a comparison first ('Compare in grid').")
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise UserError(f"{path.name} must end in .png.")
        self._viewer.screenshot(str(path), canvas_only=True, flash=False)
        return path

    def _save_png_clicked(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save comparison", "lrp_comparison.png", "PNG (*.png)")
        if path:
            try:
                self.status.setText(f"saved {self.save_comparison(path)}")
            except UserError as exc:
                self._fail(str(exc))
