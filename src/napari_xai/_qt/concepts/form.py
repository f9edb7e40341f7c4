"""The Concepts dock's settings: image layer, model (with the trust opt-in), layer, k, LRP rules, target, atlas.

Magicgui widgets only; :meth:`ConceptSettings.request` reads them into one checked
request (every field checked before any work starts), and the parent dock runs it.
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox

from ...core.atlas import builtin_atlas_names
from ...core.concepts import DEFAULT_K, DEFAULT_RULES
from ...core.errors import UserError
from ...core.methods.crp import CRP_RULES
from ..model_picker import TRUST_TIP, ModelPicker, file_text

#: The layer choice before the model's layers are listed: the core's default (the last Conv layer with a 3D output).
AUTO_LAYER = "auto (last conv layer)"
PREDICTED = "predicted"
NO_ATLAS = "none"


def default_atlas() -> str:
    """The atlas the Atlas dock starts with (the first built-in atlas), for naming concepts."""
    return builtin_atlas_names()[0]


class ConceptSettings:
    """The form's widgets (``widgets()`` in display order) and their reading into a request."""

    def __init__(self, viewer: Any):
        self._viewer = viewer
        self._layer_names: list[str] = []
        self._class_names: list[str] = []
        self.image = ComboBox(label="image", choices=self._image_choices,
                              tooltip="the volume (a 3D image layer) whose concepts to find")
        self.picker = ModelPicker(with_kwargs=True)
        # the picker's one-line trust text is wider than a dock: a short box and the risk wrapped below it
        self.picker.trust.text = "trust model code"
        self.trust_note = Label(value=TRUST_TIP[0].upper() + TRUST_TIP[1:] + ".")
        self.trust_note.native.setWordWrap(True)
        self.layer = ComboBox(label="layer", choices=self._layer_choices, value=AUTO_LAYER,
                              tooltip="the model layer whose channels are the concepts ('List' reads the model's "
                                      "conv layers; default: the last one, as on the command line)")
        self.list_btn = PushButton(text="List", tooltip="load the model and list its conv layers")
        self.k = SpinBox(label="concepts (k)", value=DEFAULT_K, min=1, max=256,
                         tooltip="how many of the layer's most relevant channels to show")
        self.rules = ComboBox(label="LRP rules", choices=list(CRP_RULES), value=DEFAULT_RULES,
                              tooltip="the LRP composite or rule the concepts are conditioned under; "
                                      "'lrp' = a configuration from the LRP designer")
        self.config = FileEdit(label="LRP config", mode="r", filter="*.json",
                               tooltip="with rules 'lrp': a configuration JSON saved by the LRP designer "
                                       "(empty: gamma | epsilon | 0)")
        self.target = ComboBox(label="target", choices=lambda _w: [PREDICTED, *self._class_names], value=PREDICTED,
                               tooltip="the class whose evidence is split into concepts")
        self.atlas = ComboBox(label="atlas", choices=[NO_ATLAS, *builtin_atlas_names()], value=default_atlas(),
                              tooltip="name each concept by the atlas regions holding most of its positive "
                                      "relevance (MNI-space volumes)")
        self.layer.label = ""
        self.list_btn.native.setMaximumWidth(44)  # the row fits the dock's width
        self.layer_row = Container(layout="horizontal", widgets=[self.layer, self.list_btn], labels=False,
                                   label="layer")
        self.layer_row.margins = (0, 0, 0, 0)
        self.picker.source.changed.connect(self._on_source)
        self.rules.changed.connect(self._on_rules)
        self._on_source()
        self._on_rules()

    def widgets(self) -> list:
        p = self.picker
        return [self.image, p.source, p.path, p.class_name, p.weights, p.kwargs, p.trust, self.trust_note,
                self.layer_row, self.k,
                self.rules, self.config, self.target, self.atlas]

    # ------------------------------------------------------------ choices
    def _image_choices(self, *_):
        from ..._layers import is_input_volume

        return [layer.name for layer in self._viewer.layers if is_input_volume(layer)]

    def _layer_choices(self, *_):
        return [AUTO_LAYER, *self._layer_names]

    def refresh(self) -> None:
        """Re-read the image layers (after layers were added or removed)."""
        self.image.reset_choices()

    def _on_source(self, *_):
        self.picker.update_visibility()
        self.picker.trust.visible = self.trust_note.visible = self.picker.kind != "demo"  # the demo runs no file
        self.set_layers([], None)  # another model: its layers are listed again
        if self.picker.kind == "demo":
            from ...core.demo import CLASS_NAMES

            self.set_classes(list(CLASS_NAMES))

    def _on_rules(self, *_):
        self.config.visible = self.rules.value == "lrp"

    def set_layers(self, names: list[str], default: str | None) -> None:
        """Offer the model's conv layers; select ``default`` (the core's choice) unless the user chose one."""
        current = self.layer.value
        self._layer_names[:] = list(names)
        self.layer.reset_choices()
        if current in self.layer.choices and current != AUTO_LAYER:
            self.layer.value = current
        else:
            self.layer.value = default if default in self.layer.choices else AUTO_LAYER

    def set_classes(self, names: list[str]) -> None:
        current = self.target.value
        self._class_names[:] = [str(n) for n in names]
        self.target.reset_choices()
        self.target.value = current if current in self.target.choices else PREDICTED

    # ------------------------------------------------------------ reading
    def volume(self):
        """The chosen image layer as a Volume in its file's voxel order and affine."""
        from ..._layers import volume_from_layers

        name = self.image.value
        if not name or name not in self._viewer.layers:
            raise UserError("choose an image layer (a 3D volume: open a NIfTI file or File › Open Sample › napari-xai).")
        return volume_from_layers([self._viewer.layers[name]])

    def model_request(self) -> dict:
        """What loading the model needs: ``source``, ``extra`` (weights, kwargs) and ``trust``."""
        source, extra = self.picker.model_source()
        if self.picker.kind == "torchscript":
            raise UserError("concepts need the model's layers, which TorchScript hides; load it as a .py file "
                            "with weights (Python file + weights) or as a MONAI bundle.")
        return {"source": source, "extra": extra, "trust": bool(self.picker.trust.value)}

    def request(self) -> dict:
        """Every setting, checked: raises :class:`UserError` with one line for the first problem."""
        rules = self.rules.value
        config = file_text(self.config) if rules == "lrp" else ""
        if config and not config.lower().endswith(".json"):
            raise UserError(f"the LRP configuration '{config}' is not a .json file from the LRP designer.")
        layer = self.layer.value
        return {
            **self.model_request(),
            "volume": self.volume(),
            "image": self.image.value,
            "layer": None if layer in (AUTO_LAYER, None) else str(layer),
            "k": int(self.k.value),
            "method": rules,
            "config": config or None,
            "target": None if self.target.value == PREDICTED else self.target.value,
            "atlas": None if self.atlas.value == NO_ATLAS else self.atlas.value,
        }
