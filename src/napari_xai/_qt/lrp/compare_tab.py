"""The Compare tab of the LRP designer: configurations x targets x models side by side in napari's grid mode."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QLabel, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

from ...core.errors import Cancelled, UserError
from .._forms import button, checkable, checkbox, checked_texts, combo, fill_checklist, fill_table, label
from .._forms import read_only_table, row, tick
from .common import is_segmentation
from .grid import GridMode

CELL_HEADERS = ["cell", "Σ relevance", "mass in GT", "rank acc.", "D(R,GT)", "D(R,x)"]


def check_list(tip: str) -> QListWidget:
    lst = QListWidget()
    lst.setToolTip(tip)
    return lst


def cell_rows(req, results: list) -> tuple[list[dict], list[list[str]]]:
    """Per comparison cell: the relevance sum and, with a ground truth, the mask readouts (rows, table texts)."""
    from ...core.evaluation.metrics import MASK_READOUTS, mask_report

    readouts, texts = [], []
    for name, rel in results:
        r = {"cell": name, "sum": float(rel.data.sum())}
        if req.get("truth") is not None:
            try:
                r.update({k: v for k, v in mask_report(rel.data, req["truth"], image=req["volume"].data).items()
                          if k in MASK_READOUTS})
            except UserError:
                pass
        readouts.append(r)
        texts.append([name, f"{r['sum']:.4g}"] + [f"{r[k]:.3f}" if k in r else "–" for k in MASK_READOUTS])
    return readouts, texts


class CompareTab(QWidget):
    """Compare tab of the designer (``host``): the three lists, *Compare in grid*, the α sweep, the cell table."""

    def __init__(self, host):
        super().__init__()
        self.host = host
        self.grid = GridMode(host._viewer)
        self.last_comparison: list = []
        self.last_cells: tuple | None = None  # (request, core.compare cells, loaded models) of the last comparison
        self.cell_readouts: list[dict] = []
        self._compare_sources: dict[str, tuple[str, dict]] = {}
        lay = QVBoxLayout(self)
        lay.addWidget(label("Every ticked configuration/method runs for every ticked target and model "
                            "on the same input; one grid cell each, one colour scale for all."))
        self.compare_list = check_list("LRP configurations of this designer and the registry's methods.")
        lay.addWidget(QLabel("configurations and methods"))
        lay.addWidget(self.compare_list, 3)
        lay.addLayout(self._build_axes(), 2)
        self.compare_3d = checkbox("3D view", True)
        self.compare_common = checkbox("one colour scale for all cells", True,
                                       "Untick when methods with different units meet (e.g. occlusion and LRP):\n"
                                       "then each cell is scaled to its own 99.99th percentile of |relevance|.")
        lay.addLayout(row(self.compare_3d, self.compare_common))
        self.compare_btn = button("Compare in grid", self.compare)
        self.save_png_btn = button("Save PNG…", self._save_png_clicked)
        self.exit_grid_btn = button("Exit grid", self.exit_grid)
        lay.addLayout(row(self.compare_btn, self.save_png_btn, self.exit_grid_btn))
        self.sweep_btn = button("Add α sweep of the active configuration", self._sweep_clicked,
                                "Copies of the active configuration with a [0, α] filter inside LRP for α = 0.2, 0.4, "
                                "0.6, 0.8, ticked with the original (Joa et al.'s α sweep).")
        self.sweep_kind = combo(["pass", "clamp"])
        lay.addLayout(row((self.sweep_btn, 1), self.sweep_kind))
        self.cell_table = read_only_table(CELL_HEADERS)
        self.cell_table.setToolTip("Per cell: the relevance sum and, with a ground truth chosen in the Run tab, the "
                                   "mask readouts (relevance mass, rank accuracy, inclusivity).")
        lay.addWidget(self.cell_table, 1)

    def _build_axes(self):
        self.compare_targets = check_list("Classes to explain; 'predicted' is each model's own prediction.")
        self.set_targets([])
        self.compare_models = check_list("Models to compare; none = the model of the Design tab.\n"
                                         "Choose a model in the Design tab and press 'Add model'.")
        self.add_model_btn = button("Add model", self._add_model_clicked,
                                    "Add the Design tab's model source to the comparison.")
        self.remove_model_btn = button("Remove", self._remove_model_clicked)
        tcol, mcol = QVBoxLayout(), QVBoxLayout()
        tcol.addWidget(QLabel("targets"))
        tcol.addWidget(self.compare_targets)
        mcol.addWidget(QLabel("models"))
        mcol.addWidget(self.compare_models)
        mcol.addLayout(row(self.add_model_btn, self.remove_model_btn))
        return row(tcol, mcol)

    # ------------------------------------------------------------------ the lists
    def refresh_list(self) -> None:
        """The designer's configurations and the registry's methods (configurations ticked at first)."""
        from ...core.methods.catalogue import all_methods

        ticked = set(checked_texts(self.compare_list))
        labels = [f"config: {c.name}" for c in self.host.manager.configs] + [f"method: {m.name}" for m in all_methods()]
        fill_checklist(self.compare_list, labels, lambda t: t in ticked or (not ticked and t.startswith("config: ")))

    def set_targets(self, names: list[str]) -> None:
        ticked = set(checked_texts(self.compare_targets))
        some = bool(ticked & {"predicted", *names})
        fill_checklist(self.compare_targets, ["predicted", *names],
                       lambda t: t in ticked or (not some and t == "predicted"))

    def set_compare_items(self, items: list[str], targets: list[str] | None = None,
                          models: list[str] | None = None) -> None:
        """Tick these compare-list entries (and, if given, these targets and models)."""
        tick(self.compare_list, items)
        if targets is not None:
            tick(self.compare_targets, targets)
        if models is not None:
            tick(self.compare_models, models)

    def add_compare_model(self) -> str:
        """Add the Design tab's model source to the comparison's models list (ticked); returns its key."""
        from ...core.compare import model_name

        source, extra = self.host.model_source()
        same = [k for k, v in self._compare_sources.items() if v == (source, extra)]
        key = same[0] if same else model_name(source, extra.get("weights"), list(self._compare_sources))
        if key not in self._compare_sources:
            self._compare_sources[key] = (source, dict(extra))
            item = checkable(QListWidgetItem(key), False, source)
            self.compare_models.addItem(item)
        tick(self.compare_models, set(checked_texts(self.compare_models)) | {key})
        return key

    def _add_model_clicked(self):
        try:
            key = self.add_compare_model()
        except UserError as exc:
            self.host.fail(str(exc))
        else:
            self.host.status.setText(f"model '{key}' added to the comparison.")

    def _remove_model_clicked(self):
        for it in self.compare_models.selectedItems():
            self._compare_sources.pop(it.text(), None)
            self.compare_models.takeItem(self.compare_models.row(it))

    def sweep_filter(self, kind: str = "pass", alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)) -> list[str]:
        """Copies of the active configuration with an in-LRP filter [0, α] for each α, ticked for comparison.

        With the original (no filter) and a ground truth in the Run tab, the
        table then shows how the readouts change with α (the α sweep of Joa et
        al.). Returns the compare-list labels of the sweep.
        """
        base, names = self.host.manager.filtered_copies(kind, alphas)
        labels = [f"config: {base.name}"] + [f"config: {n}" for n in names]
        tick(self.compare_list, labels)
        self.host.status.setText(f"{len(names)} filtered copies of '{base.name}' added and ticked with it; press "
                                 "'Compare in grid'.")
        return labels

    def _sweep_clicked(self):
        try:
            self.sweep_filter(self.sweep_kind.currentText())
        except UserError as exc:
            self.host.fail(str(exc))

    # ------------------------------------------------------------------ comparison
    def _plan(self, items, targets, models):
        """(what to run, model sources, configurations, plan) of a comparison; UserError on a bad choice."""
        from ...core.compare import plan
        from ...core.methods.catalogue import get_method

        if not items:
            raise UserError("tick at least one configuration or method in the compare list.")
        whats = []
        for it in items:
            kind, _, name = it.partition(": ")
            if kind == "config":
                self.host.manager.config_named(name)
            elif kind == "method":
                name = get_method(name).name
            else:
                raise UserError(f"unknown compare item {it!r}.")
            whats.append((kind, name))
        unknown = [m for m in models if m not in self._compare_sources]
        if unknown:
            raise UserError(f"model {unknown[0]!r} is not in the models list; add it with 'Add model'.")
        sources = {m: self._compare_sources[m] for m in models} if models else {"": self.host.model_source()}
        configs = {c.name: c.copy() for c in self.host.manager.configs}
        return sources, configs, plan(whats, [None if t == "predicted" else t for t in targets or [None]],
                                      list(sources))

    def compare(self, items: list[str] | None = None, targets: list[str] | None = None,
                models: list[str] | None = None):
        """Run every configuration/method for every target and model on the same input; show them in napari's grid.

        ``items`` are labels of the compare list (``config: <name>`` or
        ``method: <name>``), ``targets`` class names or "predicted", ``models``
        keys of the models list; each defaults to the ticked entries (no model
        ticked: the Design tab's model).
        """
        host = self.host
        if host.busy:
            return
        try:
            sources, configs, plan_items = self._plan(
                items if items is not None else checked_texts(self.compare_list),
                targets if targets is not None else checked_texts(self.compare_targets),
                models if models is not None else checked_texts(self.compare_models))
            # each model explains its own class of a ticked name; a model that does not name it (e.g. a
            # randomised copy) explains the name's position among the Design tab model's classes, with a note
            classes = host.run_tab.classes()
            req = host.request()
        except UserError as exc:
            host.fail(str(exc))
            return

        def work():
            from ...core.compare import run_comparison
            from ...core.explain import prepare_input

            loaded = {}
            for key, (source, extra) in sources.items():
                if host.job.should_stop():
                    raise Cancelled("cancelled by the user")
                host.job.report(0.0, f"loading {key or 'the model'}")
                loaded[key] = host.load_for_worker({"source": source, "extra": extra})
            first = next(iter(loaded.values()))
            seg = bool(req["mask"]) or is_segmentation(first, prepare_input(req["volume"], first)[0],
                                                       req["output_index"])
            cells = run_comparison(req["volume"], plan_items, loaded, configs, classes=classes, progress=host.job.report,
                                   should_stop=host.job.should_stop, segmentation=seg, output_index=req["output_index"],
                                   **req["mask"])
            self.last_cells = (req, cells, loaded)  # for the Check tab's per-cell flipping curves
            return req, [(c.label, c.relevance) for c in cells]

        host.start(work, f"comparing {len(plan_items)} cells", lambda result: self._show_comparison(*result))

    def _show_comparison(self, req, results: list) -> None:
        scale = self.grid.show(req["volume"], results, self.compare_common.isChecked(), self.compare_3d.isChecked())
        self.last_comparison = results
        self.cell_readouts, texts = cell_rows(req, results)
        fill_table(self.cell_table, texts)
        self.host.status.setText(f"{len(results)} cells side by side; {scale} (hot: positive, cyan: negative "
                                 "relevance).")

    def exit_grid(self) -> None:
        self.grid.exit()

    def save_comparison(self, path: str | Path) -> Path:
        """Save the comparison grid (canvas) as one PNG figure."""
        if not self.last_comparison:
            raise UserError("run a comparison first ('Compare in grid').")
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise UserError(f"{path.name} must end in .png.")
        self.host._viewer.screenshot(str(path), canvas_only=True, flash=False)
        return path

    def _save_png_clicked(self):
        path, _ = QFileDialog.getSaveFileName(self, "Save comparison", "lrp_comparison.png", "PNG (*.png)")
        if path:
            try:
                self.host.status.setText(f"saved {self.save_comparison(path)}")
            except UserError as exc:
                self.host.fail(str(exc))
