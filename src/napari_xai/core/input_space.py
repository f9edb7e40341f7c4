"""A model's input space, declared as data: voxel order, voxel size, grid, intensities and channels.

A model sees a voxel array, not the world: the same scan stored RAS, LAS or PIR
is a different input to it. :class:`InputSpace` says what the model was trained
on, so that :mod:`geometry` can bring any input there with MONAI's transforms
and take maps back with their inverse.

Where a model's input space comes from (see ``docs/models.md``):

* the demo model and any ``metadata.json``: the keys ``orientation``
  (axis codes such as ``"RAS"``), ``spacing`` (mm, one number or three),
  ``shape_policy`` and the existing ``input_shape``, ``normalization`` and
  ``channels`` (top level or in a ``napari_xai`` section);
* a MONAI bundle: its ``preprocessing`` transforms in ``configs/inference.json``,
  read as data by :func:`from_transforms` (nothing in the config is run);
* a Python file or TorchScript: the caller's options (``--model-orientation``,
  ``--model-spacing``, ``--input-shape``, ``--normalization``).

Nothing declared means "as stored": the input is fed in its own voxel order and
size, and :func:`explain` says so in a warning.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import UserError

#: How the spatial shape is reached: MONAI Resize, ResizeWithPadOrCrop (centre), CropForeground's box then
#: ResizeWithPadOrCrop, SpatialPad only, CenterSpatialCrop only.
SHAPE_POLICIES = ("resize", "crop-pad", "crop-pad-foreground", "pad", "crop")
#: Intensity normalisations: none, NormalizeIntensity (zscore), ScaleIntensity to [0, 1] (minmax),
#: ScaleIntensityRange with declared a_min/a_max/b_min/b_max/clip (range).
INTENSITIES = ("none", "zscore", "minmax", "range")
#: Order in which the steps are applied unless a bundle lists them otherwise.
DEFAULT_ORDER = ("orientation", "spacing", "shape", "intensity")
#: Axis labels of the world frame (nibabel / NIfTI RAS+ convention).
AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
#: The value that means "as stored" for orientation or spacing.
AS_STORED = "stored"


@dataclass(frozen=True)
class InputSpace:
    """What a model expects its input to be; ``None`` fields mean "as stored" / any.

    Parameters
    ----------
    orientation : str or None
        Axis codes of the voxel order, e.g. ``"RAS"`` (first axis points Right, ...).
    spacing : tuple of 3 float or None
        Voxel edge lengths in mm.
    shape : tuple of 3 int or None
        Spatial grid in voxels.
    shape_policy : str
        How ``shape`` is reached, one of :data:`SHAPE_POLICIES`.
    normalization : str
        One of :data:`INTENSITIES`.
    intensity : tuple of (name, value) pairs
        Parameters of the normalisation (``a_min``... for ``range``, ``nonzero`` for ``zscore``).
    channels : int or None
        Input channels.
    order : tuple of str
        The order of the steps (``orientation``, ``spacing``, ``shape``, ``intensity``).
    skipped : tuple of str
        Declared steps that could not be read or are not known, each a sentence; they are not
        applied, and every result says so in a warning.
    source : str
        Where the declaration was read (``"demo metadata"``, ``"bundle preprocessing"``...).
    """

    orientation: str | None = None
    spacing: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None
    shape_policy: str = "resize"
    normalization: str = "none"
    intensity: tuple[tuple[str, Any], ...] = ()
    channels: int | None = None
    order: tuple[str, ...] = DEFAULT_ORDER
    skipped: tuple[str, ...] = ()
    source: str = "nothing declared"

    def __post_init__(self) -> None:
        if self.orientation is not None:
            object.__setattr__(self, "orientation", parse_orientation(self.orientation))
        if self.spacing is not None:
            object.__setattr__(self, "spacing", parse_spacing(self.spacing))
        if self.shape is not None:
            object.__setattr__(self, "shape", parse_shape(self.shape))
        if self.shape_policy not in SHAPE_POLICIES:
            raise UserError(f"shape policy {self.shape_policy!r} is not one of {', '.join(SHAPE_POLICIES)}.")
        if self.normalization not in INTENSITIES:
            raise UserError(f"normalization {self.normalization!r} is not one of {', '.join(INTENSITIES)}.")
        if sorted(self.order) != sorted(DEFAULT_ORDER):
            raise UserError(f"input space order {self.order} must list {', '.join(DEFAULT_ORDER)} once each.")

    def replace(self, **changes: Any) -> "InputSpace":
        return dataclasses.replace(self, **changes)

    @property
    def params(self) -> dict:
        return dict(self.intensity)

    def to_record(self) -> dict:
        """JSON-ready description (the sidecar's ``input_space.declared``)."""
        return {
            "orientation": self.orientation,
            "spacing_mm": list(self.spacing) if self.spacing else None,
            "shape": list(self.shape) if self.shape else None,
            "shape_policy": self.shape_policy,
            "normalization": self.normalization,
            "intensity": self.params,
            "channels": self.channels,
            "order": list(self.order),
            "skipped": list(self.skipped),
            "source": self.source,
        }


def parse_orientation(value: Any) -> str:
    """Upper-case axis codes (``"ras"`` -> ``"RAS"``), one letter of each of L/R, A/P, S/I."""
    text = str(value).strip().upper()
    ok = len(text) == 3 and all(sum(c in pair for c in text) == 1 for pair in AXIS_LABELS)
    if not ok:
        raise UserError(
            f"orientation {value!r} must be three axis codes, one of L/R, one of A/P and one of S/I "
            "in voxel-axis order, e.g. RAS, LAS or PIR."
        )
    return text


def three_values(value: Any, cast: type, scalars: tuple[type, ...]) -> list:
    """``value`` as a list of ``cast`` numbers: ``"1,1,2"`` or ``"1x1x2"``, one number (a string or one of
    ``scalars``, not bool) for all three axes, or a sequence; ``[]`` when it cannot be read."""
    try:
        if isinstance(value, str):
            parts = [cast(v) for v in value.replace("x", ",").split(",") if v.strip()]
        elif isinstance(value, scalars) and not isinstance(value, bool):
            parts = [cast(value)]
        else:
            parts = [cast(v) for v in value]
    except (TypeError, ValueError):
        return []
    return parts * 3 if len(parts) == 1 else parts


def parse_spacing(value: Any) -> tuple[float, float, float]:
    """Voxel size in mm from ``2``, ``"2"``, ``"1,1,2"`` or a sequence of three positive numbers."""
    parts = three_values(value, float, (int, float))
    if len(parts) != 3 or not all(p > 0 and p < float("inf") for p in parts):
        raise UserError(f"spacing {value!r} must be one or three positive voxel sizes in mm, e.g. 2 or 1,1,2.5.")
    return tuple(parts)  # type: ignore[return-value]


def parse_shape(value: Any) -> tuple[int, int, int]:
    """A grid shape from ``"64,64,64"``, ``64`` or a sequence of three positive ints."""
    parts = three_values(value, int, (int,))
    if len(parts) != 3 or min(parts) < 1:
        raise UserError(f"input shape {value!r} must be three positive integers, e.g. 64,64,64.")
    return tuple(parts)  # type: ignore[return-value]


def _as_stored(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in (AS_STORED, "as stored", "none", "")


def resolve(declared: InputSpace, *, orientation: Any = None, spacing: Any = None, shape: Any = None,
            normalization: str | None = None) -> tuple[InputSpace, dict]:
    """The input space of one run: the model's declaration with the caller's overrides.

    ``None`` keeps the declared value; ``"stored"`` asks for "as stored". Returns the space and
    where each of orientation, spacing, shape and normalisation came from (``options``, the
    declaration's source, or ``nothing declared``).
    """
    changes: dict[str, Any] = {}
    origin = {}
    for key, value in (("orientation", orientation), ("spacing", spacing)):
        if value is None:
            origin[key] = declared.source if getattr(declared, key) is not None else "nothing declared"
        else:
            changes[key] = None if _as_stored(value) else value
            origin[key] = "options"
    if shape is not None:
        changes["shape"] = parse_shape(shape)
        origin["shape"] = "options"
    else:
        origin["shape"] = declared.source if declared.shape is not None else "nothing declared"
    if normalization is not None:
        if normalization not in ("none", "zscore", "minmax"):
            raise UserError(f"unknown normalisation {normalization!r}; use one of none, zscore, minmax.")
        changes["normalization"] = normalization
        changes["intensity"] = ()
        origin["normalization"] = "options"
    else:
        origin["normalization"] = declared.source if declared.normalization != "none" else "nothing declared"
    return (declared.replace(**changes) if changes else declared), origin


def from_metadata(meta: Mapping, where: str, base: InputSpace | None = None) -> InputSpace:
    """Orientation, spacing and shape policy from metadata keys (top level, then a ``napari_xai`` section)."""
    space = base or InputSpace()
    changes: dict[str, Any] = {}
    layers = [meta] + ([meta["napari_xai"]] if isinstance(meta.get("napari_xai"), Mapping) else [])
    for layer in layers:
        for key in ("orientation", "spacing", "shape_policy"):
            if key in layer:
                changes[key] = layer[key]
    if not changes:
        return space
    try:
        return space.replace(source=where, **changes)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------
# MONAI bundle preprocessing, read as data
# ---------------------------------------------------------------------------

#: Transforms that load or retype the data: the plugin does this itself, so they are recognised and skipped.
SKIPPED_TRANSFORMS = frozenset(
    n + s
    for n in ("LoadImage", "EnsureChannelFirst", "AddChannel", "EnsureType", "ToTensor", "ToNumpy", "CastToType",
              "Identity", "ToDevice", "ToMetaTensor", "FromMetaTensor", "SaveImage", "DataStats", "SqueezeDim",
              "CopyItems", "DeleteItems", "SelectItems")
    for s in ("", "d")
)
#: Transforms read into an :class:`InputSpace` (dictionary and array versions).
READ_TRANSFORMS = frozenset(
    n + s
    for n in ("Orientation", "Spacing", "Resize", "ResizeWithPadOrCrop", "SpatialPad", "CenterSpatialCrop",
              "CropForeground", "ScaleIntensity", "ScaleIntensityRange", "NormalizeIntensity")
    for s in ("", "d")
)


def _short_name(target: Any) -> str | None:
    return target.strip().rsplit(".", 1)[-1] if isinstance(target, str) and target.strip() else None


def from_transforms(preprocessing: Any, where: str, read_value: Callable[[Any, str], Any]) -> tuple[InputSpace, list[str]]:
    """An :class:`InputSpace` from a bundle's ``preprocessing`` (a ``Compose`` or a list of transforms).

    Nothing is instantiated or evaluated: each transform is recognised by its ``_target_`` name
    (see :data:`READ_TRANSFORMS`, :data:`SKIPPED_TRANSFORMS`) and its arguments are read with
    ``read_value(value, where)``, which resolves ``@`` references and raises ``ValueError`` for
    anything that would run code (``$`` expressions, ``%`` macros). A transform that is unknown,
    or whose arguments cannot be read, is listed in :attr:`InputSpace.skipped` by name.

    Returns the space and notes for :attr:`LoadedModel.notes`.
    """
    notes: list[str] = []
    skipped: list[str] = []
    node = preprocessing
    try:
        node = read_value(node, where) if isinstance(node, str) else node
    except ValueError as exc:
        return InputSpace(skipped=(f"{where} could not be read as data ({exc}); no preprocessing step is applied",),
                          source="bundle preprocessing"), notes
    items: Any = node
    if isinstance(node, Mapping):
        name = _short_name(node.get("_target_"))
        if name == "Compose":
            items = node.get("transforms", [])
            if isinstance(items, str):
                try:
                    items = read_value(items, f"{where}.transforms")
                except ValueError as exc:
                    return InputSpace(skipped=(f"{where}.transforms could not be read as data ({exc}); "
                                               "no preprocessing step is applied",),
                                      source="bundle preprocessing"), notes
        else:
            items = [node]
    if not isinstance(items, list):
        return InputSpace(skipped=(f"{where} is not a Compose or a list of transforms; no preprocessing step is applied",),
                          source="bundle preprocessing"), notes

    fields: dict[str, Any] = {}
    order: list[str] = []
    foreground = False
    pad = crop = None

    def mark(kind: str) -> None:
        if kind not in order:
            order.append(kind)

    for i, item in enumerate(items):
        here = f"{where}[{i}]"
        if isinstance(item, str):
            try:
                item = read_value(item, here)
            except ValueError as exc:
                skipped.append(f"preprocessing step {i} ({item[:40]!r}) could not be read as data ({exc}); it is not applied")
                continue
        name = _short_name(item.get("_target_")) if isinstance(item, Mapping) else None
        if name is None:
            skipped.append(f"preprocessing step {i} is not a transform definition; it is not applied")
            continue
        if name in SKIPPED_TRANSFORMS:
            continue
        if name not in READ_TRANSFORMS:
            skipped.append(f"preprocessing transform '{name}' is not one napari-xai knows; it is not applied")
            continue
        try:
            args = {str(k): read_value(v, f"{here}.{k}") for k, v in item.items() if not str(k).startswith("_")}
        except ValueError as exc:
            skipped.append(f"preprocessing transform '{name}' has arguments that are code ({exc}); it is not applied")
            continue
        base = name[:-1] if name.endswith("d") and name[:-1] in READ_TRANSFORMS else name
        try:
            if base == "Orientation":
                fields["orientation"] = parse_orientation(args.get("axcodes"))
                mark("orientation")
            elif base == "Spacing":
                fields["spacing"] = parse_spacing(args.get("pixdim"))
                mark("spacing")
            elif base == "Resize":
                fields["shape"], fields["shape_policy"] = parse_shape(args.get("spatial_size")), "resize"
                mark("shape")
            elif base == "ResizeWithPadOrCrop":
                fields["shape"] = parse_shape(args.get("spatial_size"))
                fields["shape_policy"] = "crop-pad-foreground" if foreground else "crop-pad"
                mark("shape")
            elif base == "SpatialPad":
                pad = parse_shape(args.get("spatial_size"))
                mark("shape")
            elif base == "CenterSpatialCrop":
                crop = parse_shape(args.get("roi_size"))
                mark("shape")
            elif base == "CropForeground":
                foreground = True
                mark("shape")
            elif base == "ScaleIntensity":
                fields["normalization"] = "minmax"
                fields["intensity"] = (("channel_wise", bool(args.get("channel_wise", False))),)
                if (args.get("minv", 0.0), args.get("maxv", 1.0)) != (0.0, 1.0):
                    fields["normalization"] = "range"  # to [minv, maxv]: a range from the data's own min/max
                    fields["intensity"] = (("minv", float(args.get("minv", 0.0))), ("maxv", float(args.get("maxv", 1.0))),
                                           ("channel_wise", bool(args.get("channel_wise", False))))
                mark("intensity")
            elif base == "ScaleIntensityRange":
                keys = ("a_min", "a_max", "b_min", "b_max")
                vals = tuple((k, float(args[k])) for k in keys if args.get(k) is not None)
                if len(vals) < 2 or "a_min" not in args or "a_max" not in args:
                    raise UserError("a_min and a_max are needed")
                fields["normalization"] = "range"
                fields["intensity"] = vals + (("clip", bool(args.get("clip", False))),)
                mark("intensity")
            elif base == "NormalizeIntensity":
                if args.get("subtrahend") is not None or args.get("divisor") is not None:
                    raise UserError("a fixed subtrahend/divisor is not supported")
                fields["normalization"] = "zscore"
                fields["intensity"] = (("nonzero", bool(args.get("nonzero", False))),
                                       ("channel_wise", bool(args.get("channel_wise", False))))
                mark("intensity")
        except (UserError, TypeError, ValueError) as exc:
            skipped.append(f"preprocessing transform '{name}' has arguments napari-xai cannot use ({exc}); it is not applied")
    if "shape" not in fields and (pad or crop):
        if pad and crop and pad == crop:
            fields["shape"], fields["shape_policy"] = pad, "crop-pad"
        elif pad and not crop:
            fields["shape"], fields["shape_policy"] = pad, "pad"
        elif crop and not pad:
            fields["shape"], fields["shape_policy"] = crop, "crop"
        else:
            skipped.append(f"SpatialPad to {pad} and CenterSpatialCrop to {crop} differ; neither is applied")
    elif foreground and "shape" not in fields:
        skipped.append("CropForeground without a ResizeWithPadOrCrop after it is not applied")
    full_order = tuple(order) + tuple(k for k in DEFAULT_ORDER if k not in order)
    read = [k for k in ("orientation", "spacing", "shape", "normalization") if k in fields]
    if read:
        notes.append(f"input space read from the bundle's preprocessing transforms: {', '.join(read)}")
    for s in skipped:
        notes.append(s)
    return InputSpace(order=full_order, skipped=tuple(skipped), source="bundle preprocessing", **fields), notes


def orientation_warning(stored: str) -> str:
    """The warning of a run whose model declares no orientation."""
    return f"model orientation unknown; the input is stored {stored} and was fed as stored"
