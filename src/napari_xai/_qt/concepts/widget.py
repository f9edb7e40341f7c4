"""Concepts dock widget (Plugins › napari-xai › Concepts): the top concepts of a layer, shown and compared.

Composes the settings form (:mod:`.form`), the concept table (:mod:`.table`), the layer views (:mod:`.view`)
and the reference crops of a cohort run (:mod:`.references`). The work is
:func:`napari_xai.core.concepts.top_concepts` in a worker thread with progress and Cancel; layers are touched
only on the main thread (the worker's ``returned`` callback, clicks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import Container, Label, ProgressBar, PushButton
from qtpy.QtWidgets import QSizePolicy

from ...core.errors import Cancelled, UserError
from .._jobs import Job, fail, report_error, show_progress
from .._layout import into_scroll_area
from ..model_picker import cached_model
from .form import ConceptSettings
from .table import ConceptTable
from .view import Grid, compare_tuples, show_concept

if TYPE_CHECKING:  # pragma: no cover
    import napari


def conv_layers(model, volume) -> tuple[list[str], str]:
    """The layers CRP accepts on this volume and the core's default among them (the ``layer`` Param's policy)."""
    from ...core.explain import prepare
    from ...core.methods.crp import concept_layer_options

    return concept_layer_options(model.module, prepare(volume, model).x)


class ConceptsWidget(Container):
    """The Concepts dock widget."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        super().__init__(labels=True)
        self._viewer = napari_viewer
        from .. import lod

        lod.install(napari_viewer)  # concept layers cropped to where they show in 3D
        self._model_cache: dict[tuple, Any] = {}
        self.result = None  # the last ConceptResult
        self._anatomy = None  # the volume of the last result (stored order), for the grid
        self.settings = ConceptSettings(napari_viewer)
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(label="result", value="")
        self.message = ""  # the status text, unwrapped
        # the whole width, without a label column; lines are wrapped by _set_status instead of widening the form
        self.status.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.table = ConceptTable()
        self.compare_btn = PushButton(text="Compare", tooltip="the selected concepts side by side, one colour scale")
        self.exit_btn = PushButton(text="Exit grid", enabled=False)
        self.refs_btn = PushButton(text="Open references…",
                                   tooltip="a concept's reference crops from a cohort run folder "
                                           "(napari-xai concepts SUBJECTS.csv --refs N)")
        self.grid = Grid(napari_viewer)
        run_row = Container(layout="horizontal", widgets=[self.run_btn, self.cancel_btn], labels=False)
        view_row = Container(layout="horizontal", widgets=[self.compare_btn, self.exit_btn], labels=False)
        self.extend([*self.settings.widgets(), run_row, self.progress])
        for qt in (self.status.native, self.table, view_row.native, self.refs_btn.native):  # after the form
            self.native.layout().addWidget(qt)
        scroll = into_scroll_area(self.native)  # the form scrolls: the dock fits a laptop screen
        scroll.widget().layout().setStretchFactor(self.table, 10)  # a taller dock shows more concepts
        self.settings.layer.native.setMinimumContentsLength(3)  # beside its List button, within the dock's width
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)
        self.settings.list_btn.changed.connect(self.list_layers)
        self.compare_btn.changed.connect(lambda *_: self.compare())
        self.exit_btn.changed.connect(lambda *_: self.exit_grid())
        self.refs_btn.changed.connect(lambda *_: self.open_references())
        self.table.cellClicked.connect(lambda row, _col: self.show(self.table.channel_at(row)))
        for ev in ("inserted", "removed", "reordered"):
            getattr(napari_viewer.layers.events, ev).connect(lambda *_: self.settings.refresh())
        self.job = Job(self.native, self._show_progress)
        self._progress = self.job.progress  # [fraction, message], written by the worker

    @property
    def busy(self) -> bool:
        return self.job.busy

    # ------------------------------------------------------------ work
    def _model(self, req: dict):
        return cached_model(self._model_cache, req["source"], req["extra"], trust=req["trust"])

    def list_layers(self, *_):
        """Load the model (in a worker) and offer its conv layers, the core's default selected."""
        try:
            req = {**self.settings.model_request(), "volume": self.settings.volume()}
        except UserError as exc:
            self._fail(str(exc))
            return
        self._start(lambda: self._listed(req), "listing the model's layers…")

    def _listed(self, req: dict):
        key, model = self._model(req)
        names, default = conv_layers(model, req["volume"])
        return "layers", key, model, names, default

    def run(self, *_):
        try:
            req = self.settings.request()
        except UserError as exc:
            self._fail(str(exc))
            return
        self._start(lambda: self._concepts(req), "running…")

    def _concepts(self, req: dict):
        from ...core.concepts import top_concepts

        self._progress[:] = [0.0, "loading model"]
        key, model = self._model(req)
        if self.job.should_stop():
            raise Cancelled("cancelled by the user")
        names, default = conv_layers(model, req["volume"])
        res = top_concepts(model, req["volume"], layer=req["layer"], target=req["target"], k=req["k"],
                           method=req["method"], config=req["config"], atlas=req["atlas"],
                           progress=self.job.report, should_stop=self.job.should_stop)
        return "concepts", key, model, names, default, res, req["volume"]

    def _start(self, job, text: str) -> None:
        if self.job.busy:
            return

        def work():  # errors are returned, not raised: the main thread decides what the user sees
            try:
                return "ok", job()
            except Exception as exc:  # noqa: BLE001 - handed to _on_error on the main thread
                return "error", exc

        self.run_btn.enabled = self.settings.list_btn.enabled = False
        self.cancel_btn.enabled = True
        self._set_status(text)
        self.job.start(work, returned=self._on_outcome, errored=self._on_error, finished=self._on_finished)

    def cancel(self, *_):
        self.job.cancel()
        self._set_status("cancelling…")

    def _show_progress(self):
        show_progress(self.progress, self._progress)

    def _on_outcome(self, outcome):
        status, payload = outcome
        if status != "ok":
            self._on_error(payload)
            return
        kind, key, model, names, default = payload[:5]
        self._model_cache = {key: model}
        self.settings.set_layers(names, default)
        self.settings.set_classes(list(model.spec.class_names or []))
        if kind == "layers":
            self._set_status(f"{len(names)} conv layers; the default is the last: {default}.")
            return
        res, volume = payload[5:]
        self.result, self._anatomy = res, volume.data[0]
        self.grid.exit()
        self.table.fill(res)
        self._progress[:] = [1.0, "done"]
        self._show_progress()
        total = sum(c.share for c in res.concepts)
        text = (f"{len(res.concepts)} concepts of {res.layer} for '{res.target_name}' ({res.method}): "
                f"{100 * total:.0f} % of the layer's relevance. Click a row to show it; select several to compare.")
        if res.atlas:
            text += f" Regions: {res.atlas}."
        if res.warnings:
            text += "\n⚠ " + "\n⚠ ".join(res.warnings)
        self._set_status(text)

    def _on_error(self, exc):
        cancelled = report_error(exc, self._set_status)
        self._progress[:] = [0.0 if cancelled else self._progress[0], "cancelled" if cancelled else "failed"]
        self._show_progress()

    def _on_finished(self):
        self.run_btn.enabled = self.settings.list_btn.enabled = True
        self.cancel_btn.enabled = False

    def _set_status(self, text: str) -> None:
        """Show ``text`` (kept whole in ``message``) wrapped to the dock's width by hand: a word-wrapped label
        in the scrolling form gets one line's height and is overdrawn by the table."""
        import textwrap

        self.message = text
        label = self.status.native
        chars = max(24, int(max(label.width(), 240) / max(label.fontMetrics().averageCharWidth(), 1)) - 2)
        self.status.value = "\n".join(textwrap.fill(line, chars) for line in str(text).split("\n"))

    def _fail(self, message: str) -> None:
        fail(self._set_status, message)

    # ------------------------------------------------------------ views
    def show(self, channel: int) -> list:
        """Show one concept's conditional heatmap as ± relevance layers (leaves the grid first)."""
        if self.result is None:
            return []
        self.exit_grid()
        concept = self.result.concept(channel)
        layers = show_concept(self._viewer, self.result, concept)
        self._set_status(f"{concept.label} ({100 * concept.share:.1f} % of the layer's relevance).")
        return layers

    def compare(self, channels: list[int] | None = None) -> list:
        """The selected concepts side by side in napari's grid mode, with one colour scale for all."""
        channels = list(channels if channels is not None else self.table.selected_channels())
        if self.result is None or len(channels) < 2:
            self._fail("select two or more concepts in the table (Ctrl- or Shift-click), then press Compare.")
            return []
        tuples, limit = compare_tuples(self.result, channels, self._anatomy)
        layers = self.grid.enter(tuples)
        self.exit_btn.enabled = True
        self._set_status((f"{len(channels)} concepts side by side; colour limit 0…{limit:.3g} for all "
                         "(hot: positive, cyan: negative relevance). 'Exit grid' goes back."))
        return layers

    def exit_grid(self) -> None:
        self.grid.exit()
        self.exit_btn.enabled = False

    def open_references(self, folder: str | None = None, channel: int | None = None) -> list:
        from .references import open_references

        return open_references(self, folder, channel)
