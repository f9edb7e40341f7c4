"""Explain dock widget: pick input layer(s), a model and a method, press Run.

Thin by design: the method parameters are generated from the registry, the
work is :func:`napari_xai.core.explain.explain` in a worker thread, and layers
are only touched on the main thread (in the worker's ``returned`` callback).
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    Select,
    SpinBox,
)
from qtpy.QtCore import QTimer

from ..core.errors import Cancelled, UserError
from ..core.methods.registry import Param
from ..core.methods.catalogue import all_methods, get_method
from . import lod
from ._jobs import fail, report_error, show_progress, start_worker
from .model_picker import SOURCES, ModelPicker, cached_model
from ._layout import into_scroll_area

if TYPE_CHECKING:  # pragma: no cover
    import napari

log = logging.getLogger(__name__)

AUTO = "auto"
#: Sources whose input space (orientation, spacing) the user states; bundles and the demo declare their own.
SPACE_SOURCES = ("python", "torchscript")
AS_STORED = "as stored"


def model_space_kwargs(orientation: str, spacing: str) -> dict:
    """``explain`` keyword arguments from the widget's 'model orientation' and 'model spacing' fields: only what
    the user set (blank or 'as stored' = not passed, the input is fed as stored). Raises :class:`UserError`."""
    out: dict = {}
    code = (orientation or "").strip().upper()
    if code and code != AS_STORED.upper():
        pairs = ({"L", "R"}, {"A", "P"}, {"S", "I"})
        if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in pairs):
            raise UserError(f"model orientation '{orientation.strip()}' is not three axis codes with one of L/R, "
                            "A/P and S/I each (e.g. RAS, LPS, PIR); leave it blank for 'as stored'.")
        out["model_orientation"] = code
    text = (spacing or "").strip()
    if text and text.lower() != AS_STORED:
        try:
            values = [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            values = []
        if len(values) not in (1, 3) or not all(np.isfinite(v) and v > 0 for v in values):
            raise UserError(f"model spacing '{text}' must be one positive number of mm or three (e.g. 1 or 1,1,2); "
                            "leave it blank for 'as stored'.")
        out["model_spacing"] = values[0] if len(values) == 1 else tuple(values)
    return out


def layer_options(model: Any, volume: Any, space: dict) -> dict:
    """For each layer policy of the registry (``Param.layers`` of every ``"layer"`` parameter): the valid names
    and the default on ``model``'s input made from ``volume`` as :func:`explain` makes it (worker thread)."""
    from ..core.explain import prepare

    policies = {p.layers for m in all_methods() for p in m.params if p.type == "layer" and p.layers is not None}
    if not policies or getattr(model, "is_scripted", False):
        return {}
    x = prepare(volume, model, **space).x
    return {policy: policy(model.module, x) for policy in policies}


def layer_choices(p: Param, options: dict) -> list[tuple[str, str]]:
    """The layer dropdown of ``p``: auto (naming the layer the method uses then, once a model ran) and the names."""
    names, default = options.get(p.layers, ([], None))
    return [(f"{AUTO} ({default})" if default else AUTO, AUTO), *((n, n) for n in names)]


def _param_widget(p: Param, options: dict | None = None):
    label = p.name
    tip = p.help
    if p.type == "layer":
        options = options if options is not None else {}
        w = ComboBox(label=label, choices=lambda _w: layer_choices(p, options), value=AUTO, tooltip=tip)
    elif p.choices:
        w = ComboBox(label=label, choices=list(p.choices), value=p.default, tooltip=tip)
    elif p.type is bool:
        w = CheckBox(label=label, value=bool(p.default), tooltip=tip)
    elif p.type is int and p.default is not None:
        w = SpinBox(
            label=label,
            value=p.default,
            min=int(p.minimum) if p.minimum is not None else -(2**31),
            max=int(p.maximum) if p.maximum is not None else 2**31 - 1,
            tooltip=tip,
        )
    elif p.type is float and p.default is not None:
        w = FloatSpinBox(
            label=label,
            value=p.default,
            min=p.minimum if p.minimum is not None else -1e12,
            max=p.maximum if p.maximum is not None else 1e12,
            step=0.01 if abs(p.default) < 1 else 1.0,
            tooltip=tip,
        )
        w.native.setDecimals(6)
    else:
        value = "" if p.default is None else (",".join(map(str, p.default)) if isinstance(p.default, tuple) else str(p.default))
        w = LineEdit(label=label, value=value, tooltip=tip + ("  (empty = auto)" if p.default is None else ""))
    w.name = p.name
    return w


class ExplainWidget(Container):
    """The Explain dock widget (Plugins › napari-xai › Explain)."""

    def __init__(self, napari_viewer: "napari.viewer.Viewer"):
        # napari passes the viewer by this parameter *name* (an annotation under
        # ``from __future__ import annotations`` is a string napari does not match)
        super().__init__(labels=True)
        viewer = self._viewer = napari_viewer
        lod.install(viewer)  # relevance layers cropped to where they show in 3D
        self._model_cache: dict[tuple, Any] = {}
        self._worker = None
        self._loaded = None
        self._expected_sha = None  # model hash of a result whose settings were loaded (use_settings)
        self._cancel = threading.Event()
        self._progress = [0.0, ""]
        self._layer_options: dict = {}  # Param.layers -> (names, default) for the last model and input
        self._options_key: tuple | None = None
        self.last_result = None

        self.inputs = Select(label="input layer(s)", choices=self._image_choices, tooltip="several layers of one grid become channels, in order")
        self.inputs.native.setMaximumHeight(90)
        self.picker = ModelPicker(with_kwargs=True)  # source, path, class, weights, kwargs, trust
        self.source, self.path, self.class_name = self.picker.source, self.picker.path, self.picker.class_name
        self.weights, self.kwargs, self.trust = self.picker.weights, self.picker.kwargs, self.picker.trust
        self.model_orientation = LineEdit(label="model orientation", value="",
                                          tooltip="axis codes the model was trained in, e.g. RAS (blank = as stored)")
        self.model_spacing = LineEdit(label="model spacing (mm)", value="",
                                      tooltip="voxel size the model was trained at: one number or three, e.g. 1 or "
                                              "1,1,2 (blank = as stored)")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.method = ComboBox(label="method", choices=[m.name for m in all_methods()], value="integrated-gradients")
        self.params = Container(labels=True, name="params")
        self._class_names: list[str] = []
        self.target = ComboBox(label="target", choices=lambda _w: ["predicted", *self._class_names], value="predicted")
        self.segmentation = CheckBox(
            text="segmentation model (logits in a mask)",
            value=False,
            tooltip="for models returning a map (N, C, D, H, W): explain the target's logits summed inside a mask",
        )
        self.mask = ComboBox(
            label="mask",
            choices=self._mask_choices,
            tooltip="where the target class's logits are summed: its predicted region, or a Labels layer (non-zero)",
        )
        self.settings_from = ComboBox(label="settings of", choices=self._result_choices,
                                      tooltip="a relevance layer (made here or opened with its sidecar): its model, "
                                              "method, parameters and target fill this widget, to make it again")
        self.settings_btn = PushButton(text="Use its settings")
        self.run_btn = PushButton(text="Run")
        self.cancel_btn = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(label="result", value="")
        self.status.native.setWordWrap(True)
        buttons = Container(layout="horizontal", widgets=[self.run_btn, self.cancel_btn], labels=False)
        again = Container(layout="horizontal", widgets=[self.settings_from, self.settings_btn], labels=True)
        self.extend(
            [self.inputs, self.source, self.path, self.class_name, self.weights, self.kwargs, self.model_orientation,
             self.model_spacing, self.trust, self.device,
             self.method, self.params, self.target, self.segmentation, self.mask, buttons, self.progress, self.status,
             again]
        )
        self.source.changed.connect(self._on_source)
        self.segmentation.changed.connect(lambda *_: setattr(self.mask, "visible", bool(self.segmentation.value)))
        self.mask.visible = False
        self.method.changed.connect(self._rebuild_params)
        self.run_btn.changed.connect(self.run)
        self.settings_btn.changed.connect(lambda *_: self.use_settings())
        self.cancel_btn.changed.connect(self.cancel)
        for ev in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, ev).connect(self._refresh_layers)
        self._timer = QTimer()
        self._timer.setInterval(100)
        self._timer.timeout.connect(self._show_progress)
        self._on_source()
        self._rebuild_params()
        self._refresh_layers()
        into_scroll_area(self.native)  # the form scrolls: the dock fits a laptop screen

    # ---------------------------------------------------------------- choices
    def _image_choices(self, *_):
        """Volumes only: 3D scans, never a relevance map, cluster or filtered layer made from one."""
        from .._layers import is_input_volume

        return [layer.name for layer in self._viewer.layers if is_input_volume(layer)]

    def _mask_choices(self, *_):
        from napari.layers import Labels

        return ["predicted region"] + [
            layer.name for layer in self._viewer.layers
            if isinstance(layer, Labels) and np.asarray(layer.data).ndim == 3 and "xai_segmentation" not in layer.metadata
        ]

    def _result_choices(self, *_):
        from ..core.reproduce import relevance_record

        seen = {}
        for layer in self._viewer.layers:
            record = layer.metadata.get("provenance") if hasattr(layer, "metadata") else None
            record = relevance_record(record) if isinstance(record, dict) else None
            if isinstance(record, dict) and record.get("kind") in (None, "relevance") and "method" in record:
                seen.setdefault(id(record), layer.name)  # the (+) and (−) layers share one record
        return list(seen.values())

    def _refresh_layers(self, *_):
        before = list(self.inputs.value or [])
        self.inputs.reset_choices()
        self.mask.reset_choices()
        self.settings_from.reset_choices()
        if not before and self.inputs.choices:
            self.inputs.value = [self.inputs.choices[0]]

    def _on_source(self, *_):
        kind = self.picker.kind
        self.picker.update_visibility()
        self.model_orientation.visible = self.model_spacing.visible = kind in SPACE_SOURCES
        if kind == "demo":
            try:
                from ..core.models import load_model

                self._set_classes(load_model("demo", device="cpu").spec.class_names)
            except Exception as exc:  # the demo should always load; say so if not
                log.warning("demo model unavailable: %s", exc)

    def _set_classes(self, names: list[str]) -> None:
        current = self.target.value
        self._class_names = list(names)
        self.target.reset_choices()
        self.target.value = current if current in self.target.choices else "predicted"

    def _rebuild_params(self, *_):
        self.params.clear()
        entry = get_method(self.method.value)
        for p in entry.params:
            self.params.append(_param_widget(p, self._layer_options))

    def use_settings(self, layer_name: str | None = None) -> None:
        """Fill the widget from a relevance layer's provenance record: model, method, parameters, target."""
        from ..core.reproduce import explain_arguments, relevance_record

        name = layer_name or self.settings_from.value
        try:
            if not name or name not in self._viewer.layers:
                raise UserError("choose a relevance layer (made here, or opened with its .json sidecar) in 'settings of'.")
            record = self._viewer.layers[name].metadata.get("provenance")
            if not isinstance(record, dict):
                raise UserError(f"layer '{name}' has no provenance record; open the relevance file with its .json sidecar.")
            args = explain_arguments(record)
            record = relevance_record(record)
            model = record.get("model") or {}
            kind, src = model.get("kind"), str(model.get("source") or "")
            if kind not in ("demo", "bundle", "python", "torchscript"):
                raise UserError(f"the record's model ({kind or 'unknown'}: {src}) cannot be chosen here; use "
                                "'napari-xai reproduce' on its sidecar.")
        except UserError as exc:
            self._fail(str(exc))
            return
        self.source.value = next(k for k, v in SOURCES.items() if v == kind)
        if kind == "python":
            path, cls = src.rsplit(":", 1)
            self.path.value, self.class_name.value = path, cls
            self.weights.value = model.get("weights") or ""
            self.kwargs.value = json.dumps(model.get("model_kwargs") or {})
        elif kind != "demo":
            self.path.value = src
        self.method.value = args["method"]  # rebuilds the parameter widgets
        notes = []
        for w in self.params:
            value = args["params"].get(w.name)
            if value is None:
                continue
            if hasattr(value, "to_dict"):  # an LRP configuration: only a file can go into the field
                recorded = (record.get("params") or {}).get("config")
                w.value = recorded or ""
                if not recorded:
                    notes.append("the LRP configuration was not a file: pick its JSON in 'config'")
                continue
            p = get_method(args["method"]).param(w.name)
            if p.type == "layer" and value not in w.choices:  # layer names are offered once a model ran
                names, default = self._layer_options.get(p.layers, ([], None))
                self._layer_options[p.layers] = ([*names, str(value)], default)
                w.reset_choices()
            w.value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        self._set_classes(list(model.get("class_names") or self._class_names))
        target = (record.get("target") or {}).get("name")
        if target in self.target.choices:
            self.target.value = target
        self.segmentation.value = bool(args.get("segmentation"))
        if args.get("segmentation") and (record.get("segmentation") or {}).get("mask") == "mask":
            notes.append("choose the mask layer it used")
        self._expected_sha = model.get("sha256")
        self.status.value = (f"settings of '{name}' loaded ({args['method']}, target {target}); press Run to make it "
                             "again" + ("; " + "; ".join(notes) if notes else "") + ".")

    # ---------------------------------------------------------------- inputs
    def model_source(self) -> tuple[str, dict]:
        return self.picker.model_source()

    def collect_params(self) -> dict:
        out = {}
        for w in self.params:
            value = w.value
            if isinstance(value, str) and (value.strip() == "" or value == AUTO):
                continue
            out[w.name] = value
        return out

    def gather_volume(self):
        from .._layers import volume_from_layers

        names = list(self.inputs.value or [])
        if not names:
            raise UserError("select at least one input image layer (open a NIfTI file or File › Open Sample › napari-xai).")
        for name in names:
            layer = self._viewer.layers[name]
            data = np.asarray(layer.data)
            if data.ndim == 2:
                raise UserError(f"layer '{name}' is 2D; napari-xai explains 3D volumes.")
            if data.ndim == 4 and getattr(layer, "rgb", False):
                raise UserError(f"layer '{name}' is an RGB image; napari-xai explains 3D volumes.")
        # the files' own voxel order and affine (a PIR scan shown transposed is explained as stored)
        return volume_from_layers([self._viewer.layers[name] for name in names])

    # ---------------------------------------------------------------- run
    def run(self, *_):
        if self._worker is not None:
            return
        try:
            volume = self.gather_volume()
            source, extra = self.model_source()
            method = self.method.value
            params = self.collect_params()
            get_method(method).parse(params)
            space = (model_space_kwargs(self.model_orientation.value, self.model_spacing.value)
                     if SOURCES[self.source.value] in SPACE_SOURCES else {})
        except UserError as exc:
            self._fail(str(exc))
            return
        seg_kwargs: dict = {}
        if self.segmentation.value:
            seg_kwargs["segmentation"] = True
            if self.mask.value and self.mask.value != "predicted region":
                from .._layers import array_on_grid

                mask = array_on_grid(self._viewer.layers[self.mask.value], volume)  # on the file's voxel order
                if mask.shape != volume.shape:
                    self._fail(f"mask layer '{self.mask.value}' has shape {mask.shape} but the input has {volume.shape}.")
                    return
                seg_kwargs["mask"] = mask != 0
        device = None if self.device.value == "auto" else self.device.value
        target = None if self.target.value == "predicted" else self.target.value
        trust = bool(self.trust.value)
        self._cancel.clear()
        self._loaded = None  # set by the worker once this run's model loaded
        self._progress[:] = [0.0, "loading model"]

        def work():
            # Errors are returned, not raised: the main thread decides what the user sees.
            try:
                return "ok", guarded()
            except Exception as exc:  # noqa: BLE001 - handed to _on_error on the main thread
                return "error", exc

        def guarded():
            from ..core.explain import explain

            key, model = cached_model(self._model_cache, source, extra, device=device, trust=trust)
            self._loaded = model  # read on the main thread after the worker ends (class names after an error)
            if self._cancel.is_set():
                raise Cancelled("cancelled by the user")
            rel = explain(
                volume, model, method, params=params, target=target,
                progress=lambda f, m: self._progress.__setitem__(slice(None), [f, m]),
                should_stop=self._cancel.is_set,
                **seg_kwargs,
                **space,
            )
            options_key = (key, volume.shape, json.dumps(space, sort_keys=True, default=str))
            options = None if options_key == self._options_key else layer_options(model, volume, space)
            return key, model, rel, (options_key, options)

        self.run_btn.enabled = False
        self.cancel_btn.enabled = True
        self.status.value = "running…"
        self._timer.start()
        self._worker = start_worker(work, returned=self._on_outcome, errored=self._on_error, finished=self._on_finished)

    def cancel(self, *_):
        self._cancel.set()
        self.status.value = "cancelling…"

    @property
    def busy(self) -> bool:
        return self._worker is not None

    def _show_progress(self):
        show_progress(self.progress, self._progress)

    def _on_outcome(self, outcome):
        status, payload = outcome
        if status == "ok":
            self._on_returned(payload)
            return
        # the model loaded but the run failed (e.g. "choose a target class"): offer its classes as targets
        names = list(getattr(getattr(self._loaded, "spec", None), "class_names", None) or [])
        if names:
            self._set_classes(names)
        self._on_error(payload)

    def _on_returned(self, result):
        from .._layers import anatomy_style, intermediate_layer_data, relevance_layer_data, upsert

        key, model, rel, (options_key, options) = result
        self._model_cache = {key: model}
        self._set_classes(list(rel.provenance["model"]["class_names"]))
        if options is not None:
            self._options_key = options_key
            self._update_layer_choices(options)
        tuples = [t for c in range(rel.data.shape[0]) for t in relevance_layer_data(rel, channel=c)]
        # LRP segment boundaries, attention gates: hidden layers, switched on in the layer list
        tuples += intermediate_layer_data(rel, meta={"xai_explain": {"kind": "intermediate"}})
        if getattr(rel, "segmentation", None) is not None:
            tuples.append((
                rel.segmentation,
                {"name": f"{rel.provenance['model']['name']} · predicted segmentation", "affine": rel.affine,
                 "opacity": 0.4, "metadata": {"affine": rel.affine, "nifti_header": rel.header, "xai_segmentation": True,
                                              "provenance": rel.provenance}},
                "labels",
            ))
        upsert(self._viewer, tuples)
        for name in list(self.inputs.value or []):  # the anatomy under the relevance: readable in 3D
            if name in self._viewer.layers:
                anatomy_style(self._viewer.layers[name])
        self.last_result = rel
        probs = ", ".join(f"{k}: {v:.1%}" for k, v in rel.probabilities.items())
        text = f"predicted {rel.provenance['prediction']['name']} ({probs}); explained '{rel.target_name}'"
        if rel.warnings:
            from napari.utils.notifications import show_warning

            for w in rel.warnings:
                show_warning(f"napari-xai: {w}")
            text += "\n⚠ " + "\n⚠ ".join(rel.warnings)
        if self._expected_sha and rel.provenance["model"].get("sha256") != self._expected_sha:
            text += "\n⚠ the model files differ from those of the result whose settings were loaded (SHA-256)"
        self._expected_sha = None
        self.status.value = text
        self._timer.stop()  # the last step's message must not outlive the run
        self._progress[:] = [1.0, "done"]
        self._show_progress()

    def _update_layer_choices(self, options: dict) -> None:
        """The layer dropdowns offer what the methods accept on the model and input of the last run."""
        self._layer_options.clear()
        self._layer_options.update(options)  # the dropdowns' choices read this dict
        for w in self.params:
            if isinstance(w, ComboBox) and get_method(self.method.value).param(w.name).type == "layer":
                current = w.value
                w.reset_choices()
                w.value = current if current in w.choices else AUTO

    def _on_error(self, exc):
        self._timer.stop()
        cancelled = report_error(exc, self._set_status)
        self._progress[:] = [0.0 if cancelled else self._progress[0], "cancelled" if cancelled else "failed"]
        self._show_progress()

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _fail(self, message: str):
        fail(self._set_status, message)

    def _on_finished(self):
        self._timer.stop()
        self._worker = None
        self.run_btn.enabled = True
        self.cancel_btn.enabled = False
