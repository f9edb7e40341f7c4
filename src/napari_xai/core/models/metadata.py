"""What a model expects and what its outputs mean: :class:`ModelSpec`, metadata parsing, output checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError
from ..input_space import InputSpace, from_metadata
from .bundle_config import MAX_CONFIG_DEPTH, check_config_size
from .sources import existing_file

NORMALIZATIONS = ("none", "zscore", "minmax")


KINDS = ("demo", "bundle", "python", "torchscript", "pickled")


_NORMALIZATION_ALIASES = {
    "none": "none",
    "": "none",
    "zscore": "zscore",
    "z-score": "zscore",
    "z_score": "zscore",
    "standardize": "zscore",
    "minmax": "minmax",
    "min-max": "minmax",
    "min_max": "minmax",
}


@dataclass
class ModelSpec:
    """What a model expects and what its outputs mean.

    Parameters
    ----------
    input_shape : tuple of 3 int or None
        Spatial grid (D, H, W) in voxels that the model expects; ``None``
        means any shape.
    channels : int or None
        Number of input channels; ``None`` means unknown (not checked).
    class_names : list of str
        One name per output score. Empty means unknown: see
        :meth:`LoadedModel.class_names_for`.
    normalization : str
        Intensity normalisation applied before the model: ``"none"``,
        ``"zscore"`` (per channel, mean 0, std 1) or ``"minmax"`` (per
        channel, to [0, 1]).
    space : InputSpace
        The rest of the declared input space: orientation, spacing, shape
        policy, intensity parameters, step order (see :attr:`input_space`).
    """

    input_shape: tuple[int, int, int] | None = None
    channels: int | None = None
    class_names: list[str] = field(default_factory=list)
    normalization: str = "none"
    space: InputSpace = field(default_factory=InputSpace)

    @property
    def input_space(self) -> InputSpace:
        """The whole declared :class:`~napari_xai.core.input_space.InputSpace` (shape, normalisation and
        channels from this spec; a bundle's ScaleIntensityRange stays a ``range`` normalisation)."""
        norm = self.normalization
        intensity = self.space.intensity
        if norm == "none" and self.space.normalization == "range":
            norm = "range"
        elif norm != self.space.normalization:
            intensity = ()
        return self.space.replace(shape=self.input_shape, normalization=norm, intensity=intensity,
                                  channels=self.channels)

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if len(shape) != 3 or min(shape) < 1:
                raise UserError(
                    f"model input shape must be three positive voxel counts (D, H, W), got {self.input_shape}."
                )
            self.input_shape = shape  # type: ignore[assignment]
        if self.channels is not None:
            self.channels = int(self.channels)
            if self.channels < 1:
                raise UserError(f"model channel count must be at least 1, got {self.channels}.")
        self.class_names = [str(c) for c in self.class_names]
        self.normalization = _normalization(self.normalization, "model spec")


def _normalization(value: Any, where: str) -> str:
    key = str(value if value is not None else "none").strip().lower()
    if key not in _NORMALIZATION_ALIASES:
        raise UserError(f"{where}: normalization must be one of {', '.join(NORMALIZATIONS)}, got {value!r}.")
    return _NORMALIZATION_ALIASES[key]






def parse_model_kwargs(model_kwargs: str | Mapping | None) -> dict[str, Any]:
    """Constructor keyword arguments from a dict, JSON text or a ``.json`` file path.

    ``None`` and blank text mean no arguments.

    Raises
    ------
    UserError
        If the text is not valid JSON or not a JSON object.
    """
    if model_kwargs is None:
        return {}
    if isinstance(model_kwargs, Mapping):
        return dict(model_kwargs)
    text = str(model_kwargs).strip()
    if not text:
        return {}
    if not text.startswith("{") and text.lower().endswith(".json"):
        p = existing_file(text, "model kwargs file")
        text = p.read_text(encoding="utf-8")
    try:
        value = check_config_size(json.loads(text), "--model-kwargs")
    except RecursionError:
        raise UserError(f"--model-kwargs nests deeper than {MAX_CONFIG_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--model-kwargs is not valid JSON ({exc.msg} at character {exc.pos}); write e.g. '{{\"in_channels\": 1}}'."
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"--model-kwargs must be a JSON object like '{{\"in_channels\": 1}}', got {type(value).__name__}."
        )
    return value


def _pick(section: Any, preferred: str) -> dict | None:
    if not isinstance(section, Mapping) or not section:
        return None
    item = section.get(preferred)
    if item is None:
        item = next(iter(section.values()))
    return item if isinstance(item, Mapping) else None


def _spatial_shape(value: Any, where: str, notes: list[str]) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: the input shape must be a list of three voxel counts, got {value!r}.")
    if any(not isinstance(v, int) or isinstance(v, bool) for v in value):
        notes.append(
            f"{where}: input shape {list(value)} is not fixed; volumes are given to the model at their own size"
        )
        return None
    if len(value) == 2:
        raise UserError(f"{where}: the model takes 2D input {list(value)}; napari-xai explains 3D models.")
    if len(value) != 3:
        raise UserError(f"{where}: the input shape must have three axes (D, H, W), got {list(value)}.")
    return tuple(value)  # type: ignore[return-value]


def _class_names_from_channel_def(channel_def: Any, where: str, notes: list[str]) -> list[str]:
    if not isinstance(channel_def, Mapping) or not channel_def:
        return []
    try:
        items = sorted((int(k), str(v)) for k, v in channel_def.items())
    except (TypeError, ValueError):
        notes.append(f"{where}: channel_def keys are not class indices; class names were not read")
        return []
    if [i for i, _ in items] != list(range(len(items))):
        notes.append(f"{where}: channel_def does not number classes 0..n-1; class names were not read")
        return []
    return [name for _, name in items]


def spec_from_metadata(meta: Mapping, where: str) -> tuple[ModelSpec, list[str]]:
    """Build a :class:`ModelSpec` from MONAI bundle or napari-xai metadata.

    See the module docstring for the keys read. ``where`` names the file in
    error messages.

    Returns
    -------
    spec : ModelSpec
    notes : list of str
        Remarks for :attr:`LoadedModel.notes` (e.g. a non-fixed input shape).
    """
    spec, notes, _ = parse_metadata(meta, where)
    return spec, notes


def parse_metadata(meta: Mapping, where: str) -> tuple[ModelSpec, list[str], bool]:
    """:func:`spec_from_metadata` plus whether a normalisation was declared."""
    notes: list[str] = []
    fmt = meta.get("network_data_format") if isinstance(meta.get("network_data_format"), Mapping) else {}
    inp = _pick(fmt.get("inputs"), "image") or {}
    out = _pick(fmt.get("outputs"), "pred") or {}
    shape_value = inp.get("spatial_shape")
    channels = inp.get("num_channels")
    names = _class_names_from_channel_def(out.get("channel_def"), where, notes)
    normalization: Any = "none"
    layers = [meta]
    if isinstance(meta.get("napari_xai"), Mapping):
        layers.append(meta["napari_xai"])
    declared_norm = False
    for layer in layers:
        if "input_shape" in layer:
            shape_value = layer["input_shape"]
        if "channels" in layer:
            channels = layer["channels"]
        if "class_names" in layer:
            value = layer["class_names"]
            if not isinstance(value, (list, tuple)):
                raise UserError(f"{where}: class_names must be a list of names, got {value!r}.")
            names = [str(v) for v in value]
        if "normalization" in layer:
            normalization = layer["normalization"]
            declared_norm = True
    shape = _spatial_shape(shape_value, where, notes)
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)):
        raise UserError(f"{where}: the channel count must be an integer, got {channels!r}.")
    spec = ModelSpec(
        input_shape=shape,
        channels=channels,
        class_names=names,
        normalization=_normalization(normalization, where),
        space=from_metadata(meta, where),
    )
    return spec, notes, declared_norm


def check_output(scores: Any, batch: int | None = None) -> torch.Tensor:
    """Check that a model output is classifier scores of shape (N, classes).

    Parameters
    ----------
    scores : Any
        What the model returned.
    batch : int, optional
        Expected N (the input's batch size).

    Returns
    -------
    torch.Tensor
        ``scores`` itself.

    Raises
    ------
    UserError
        For tuples, lists, dicts, non-floating tensors, segmentation-shaped
        or otherwise non-(N, classes) outputs, and non-finite scores.
    """
    later = ("napari-xai needs class scores (N, classes) here; explain a segmentation model (a logit map) with "
             "--segmentation (in napari: 'segmentation model'), a model returning a tuple with --output-index")
    if isinstance(scores, (tuple, list)):
        shapes = ", ".join(str(tuple(s.shape)) if isinstance(s, torch.Tensor) else type(s).__name__ for s in scores[:4])
        raise UserError(f"model output is a {type(scores).__name__} ({shapes}); {later}.")
    if isinstance(scores, Mapping):
        raise UserError(f"model output is a dict with keys {', '.join(map(str, list(scores)[:4]))}; {later}.")
    if not isinstance(scores, torch.Tensor):
        raise UserError(f"model output is a {type(scores).__name__}, not a tensor; {later}.")
    shape = tuple(scores.shape)
    if scores.ndim != 2:
        raise UserError(f"model output has shape {shape}; {later}.")
    if batch is not None and shape[0] != batch:
        raise UserError(f"model output has shape {shape} for a batch of {batch}; {later}.")
    if shape[1] < 1:
        raise UserError(f"model output has shape {shape}: no class scores.")
    if not torch.is_floating_point(scores):
        raise UserError(
            f"model output has integer type {scores.dtype} (labels?); napari-xai needs class scores or logits."
        )
    if not bool(torch.isfinite(scores.detach()).all()):
        raise UserError(
            f"model output of shape {shape} contains NaN or Inf; check the input volume and its normalization."
        )
    return scores
