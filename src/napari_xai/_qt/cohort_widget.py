"""Cohort dock widget: one model and method over a cohort CSV; the mean map as ± layers and the region table.

Thin by design: the subjects run through :func:`napari_xai.core.cohort_run.run_local`
(the same task and reduction as ``napari-xai cohort``) in a worker thread, one
subject after another, with progress and Cancel (finished subjects are kept,
so Run again resumes). Layers are touched only in the ``returned`` callback.
For process pools, Dask clusters and job arrays use the command line
(docs/cohort.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
)
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem

from ..core.errors import Cancelled, UserError
from ..core.methods.catalogue import all_methods, get_method
from ._jobs import Job, fail, report_error
from ._layout import into_scroll_area
from .model_picker import ModelPicker

if TYPE_CHECKING:  # pragma: no cover
    import napari

TABLE_ROWS = 12


class CohortWidget(Container):
    """The Cohort dock widget (Plugins › napari-xai › Cohort)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self.job = Job(self.native, self._show_progress, interval_ms=150)
        self.job.progress = [0, 0, 0]  # done, failed, total
        self.last_result = None

        self.csv = FileEdit(label="cohort CSV", mode="r", filter="*.csv *.tsv", tooltip="columns id, path, covariates")
        self.out = FileEdit(label="output folder", mode="d", tooltip="maps/, rows/ and the tables go here")
        self.picker = ModelPicker()  # source, path, class, weights, trust
        self.source, self.path, self.class_name = self.picker.source, self.picker.path, self.picker.class_name
        self.weights, self.trust = self.picker.weights, self.picker.trust
        self.method = ComboBox(label="method", choices=[m.name for m in all_methods()], value="integrated-gradients")
        self.target = LineEdit(label="target", value="", tooltip="class index or name (empty: each subject's prediction)")
        self.atlas = LineEdit(label="atlas", value="", tooltip="atlas name or file for the region table, e.g. harvard-oxford")
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="subjects", min=0, max=100, value=0)
        self.status = Label(label="result", value="")
        self.status.native.setWordWrap(True)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["region (mean map)", "positive sum", "mean"])
        self.table.setMinimumHeight(60)
        self.table.setMaximumHeight(200)
        buttons = Container(layout="horizontal", widgets=[self.run_btn, self.cancel_btn], labels=False)
        self.extend([self.csv, self.out, self.source, self.path, self.class_name, self.weights, self.trust,
                     self.method, self.target, self.atlas, buttons, self.progress, self.status])
        self.native.layout().addWidget(self.table)
        self.table.setVisible(False)  # shown with an atlas
        into_scroll_area(self.native)  # the form scrolls: the dock fits a laptop screen
        self.source.changed.connect(self._on_source)
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)
        self._on_source()

    def _on_source(self, *_):
        self.picker.update_visibility()

    def _model_args(self) -> dict:
        source, extra = self.picker.model_source()
        return {"source": source, **({"weights": extra["weights"]} if "weights" in extra else {})}

    # ---------------------------------------------------------------- run
    def run(self, *_):
        if self.job.busy:
            return
        try:
            from ..core.cohort import read_subjects

            table = str(self.csv.value) if self.csv.value else ""
            if not table or table == "." or not Path(table).is_file():
                raise UserError("choose the cohort CSV (columns id, path and covariates).")
            out = str(self.out.value) if self.out.value else ""
            if not out or out == ".":
                raise UserError("choose an output folder.")
            if Path(out).exists() and not Path(out).is_dir():
                raise UserError(f"the output folder {out} is a file; choose a folder.")
            subjects = read_subjects(table)
            model_args = self._model_args()
            method = get_method(self.method.value).name
            atlas = self.atlas.value.strip() or None
            target = self.target.value.strip() or None
        except UserError as exc:
            fail(self._set_status, str(exc))
            return
        trust = bool(self.trust.value)
        progress = self.job.progress
        progress[:] = [0, 0, len(subjects)]

        def work():
            from ..core import atlas as at
            from ..core.cohort_run import RunConfig, run_local
            from ..core.models import load_model
            from ..core.volumes import load_nifti

            grid_atlas = at.load_atlas(atlas) if atlas else None
            model = load_model(model_args["source"], weights=model_args.get("weights"), trust=trust)
            if self.job.should_stop():
                raise Cancelled("cancelled by the user")
            cfg = RunConfig(model=model_args["source"], weights=model_args.get("weights"), trust=trust,
                            model_sha256=model.sha256, method=method, target=target, atlas=atlas,
                            outdir=str(Path(out).resolve()), command="napari-xai Cohort widget")

            def on_row(row):
                progress[0] += 1
                progress[1] += row.get("status") == "failed"

            res = run_local(subjects, cfg, model, on_row=on_row, should_stop=self.job.should_stop)
            mean_path = Path(out) / "mean_relevance.nii.gz"
            if not mean_path.exists() or res["mean_over"] == 0:
                raise UserError(f"no subject was explained; see {Path(out) / 'failures.csv'}.")
            mean = load_nifti(mean_path)
            template = next((load_nifti(s.paths[0]) for s in subjects
                             if (Path(out) / "maps" / f"{s.id}.nii.gz").exists()), None)
            regions = []
            if grid_atlas is not None:
                grid = at.atlas_on_grid(grid_atlas, mean.shape, mean.affine)
                regions = at.region_table(grid, mean.data[0], sort_by="pos_sum").rows[:TABLE_ROWS]
            return res, mean, template, regions

        self._set_running(True)
        self.status.value = "running…"
        self.job.start(work, returned=self._on_returned, errored=self._on_error, finished=self._on_finished)

    def cancel(self, *_):
        self.job.cancel()
        self.status.value = "cancelling after the current subject…"

    @property
    def busy(self) -> bool:
        return self.job.busy

    def _set_running(self, on: bool) -> None:
        self.run_btn.enabled = not on
        self.cancel_btn.enabled = on

    def _show_progress(self):
        done, failed, total = self.job.progress
        self.progress.value = int(round(100 * done / total)) if total else 0
        self.progress.label = f"{done}/{total} subjects" + (f", {failed} failed" if failed else "")

    def _on_returned(self, result):
        from .._layers import signed_layers, upsert

        res, mean, template, regions = result
        tuples = []
        if template is not None:
            tuples.append((template.data[0], {"name": "cohort template", "affine": template.affine,
                                              "colormap": "gray", "metadata": {"affine": template.affine}}, "image"))
        meta = {"nifti_header": mean.header, "provenance": {"kind": "cohort-mean-relevance", "subjects": res["mean_over"]},
                "xai_cohort": {"subjects": res["mean_over"], "failed": len(res["failures"])}}
        tuples += signed_layers(mean.data[0], f"cohort mean · {self.method.value}", mean.affine, meta)
        upsert(self._viewer, tuples)
        self.table.setRowCount(len(regions))
        self.table.setVisible(bool(regions))
        for i, r in enumerate(regions):
            for j, v in enumerate((r["region"], f"{r['pos_sum']:.4g}", f"{r['mean']:.4g}")):
                self.table.setItem(i, j, QTableWidgetItem(v))
        self.last_result = res
        failed = len(res["failures"])
        self.status.value = (f"{res['ok']} of {res['subjects']} subjects explained ({res['reused']} reused); "
                             f"mean map over {res['mean_over']}" + (f"; {failed} failed (failures.csv)" if failed else ""))
        self.progress.value = 100

    def _on_error(self, exc):
        if report_error(exc, self._set_status):
            self.progress.value = 0
            if isinstance(exc, Cancelled):
                self.status.value = "cancelled; finished subjects are kept, Run again resumes."

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _on_finished(self):
        self._show_progress()
        self._set_running(False)
