"""The explain pipeline: volume -> model grid -> attribution method -> volume grid.

:func:`explain` is the one call every adapter (CLI, widget, scripts) uses.
"""

from __future__ import annotations

import os

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from . import geometry
from .errors import UserError
from .provenance import file_hashes, now_iso, package_versions
from .methods.registry import RunContext
from .methods.catalogue import get_method
from .prediction import (  # noqa: F401  - forward, predict, predict_cached, model_error: used from here too
    forward,
    is_remembered,
    known_classes,
    label_facts,
    model_error,
    model_fault,
    note_classifier,
    predict,
    predict_cached,
    prediction_key,
    remember_prediction,
)
from .volumes import Volume

NORMALIZATIONS = ("none", "zscore", "minmax")


@dataclass
class Relevance:
    """Relevance (C, i, j, k) on the input volume's grid, with how it was made."""

    data: np.ndarray
    affine: np.ndarray
    method: str
    target: int
    target_name: str
    predicted: int
    probabilities: dict[str, float]
    provenance: dict
    warnings: list[str] = field(default_factory=list)
    header: object | None = None
    #: Predicted labels (i, j, k) uint16 on the volume grid, for segmentation models.
    segmentation: np.ndarray | None = None
    #: The target mask (i, j, k) bool on the volume grid, for segmentation models.
    mask: np.ndarray | None = None
    #: Channel-summed relevance (i, j, k) at intermediate layers (LRP configurations), or each attention gate's
    #: coefficients (attention-gates), on the volume grid.
    intermediate: dict[str, np.ndarray] = field(default_factory=dict)

    def channel_shares(self, names: list[str] | None = None) -> list[dict]:
        """Each channel's share of the positive and negative relevance (see :func:`metrics.channel_shares`)."""
        from .evaluation.metrics import channel_shares

        return channel_shares(self.data, names)

    @property
    def label(self) -> str:
        """Short name used for layers and files: ``model · method · target``."""
        model = self.provenance.get("model", {}).get("name", "model")
        return f"{model} · {self.method} · {self.target_name}"


def normalize(data: np.ndarray, mode: str) -> np.ndarray:
    """Intensity normalisation per channel of (C, i, j, k) data: none, zscore or minmax (MONAI's
    ``NormalizeIntensity`` / ``ScaleIntensity``, channel-wise; a constant channel becomes 0)."""
    if mode not in NORMALIZATIONS:
        raise UserError(f"unknown normalisation {mode!r}; use one of {', '.join(NORMALIZATIONS)}.")
    out = np.array(data, dtype=np.float32, copy=True)
    if mode == "none":
        return out
    import torch
    from monai.transforms import NormalizeIntensity, ScaleIntensity

    t = NormalizeIntensity(channel_wise=True) if mode == "zscore" else ScaleIntensity(minv=0.0, maxv=1.0, channel_wise=True)
    return np.asarray(t(torch.from_numpy(out)), dtype=np.float32)


def resolve_target(target: int | str | None, class_names: list[str], predicted: int) -> int:
    """Class index from ``None``/"predicted", an index (int or digits) or a class name."""
    n = len(class_names)
    if target is None or (isinstance(target, str) and target.strip().lower() in ("", "predicted", "pred")):
        return int(predicted)
    if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.strip().lstrip("-").isdigit()):
        idx = int(target)
        if not 0 <= idx < n:
            raise UserError(f"target {idx} is out of range: the model has {n} classes (0..{n - 1}: {', '.join(class_names)}).")
        return idx
    lowered = [c.lower() for c in class_names]
    key = str(target).strip().lower()
    if key in lowered:
        return lowered.index(key)
    raise UserError(f"unknown target class {target!r}; the model's classes are: {', '.join(class_names)}.")


@dataclass
class ModelInput:
    """One input brought into a model's input space: the tensor, the grid (to take maps back) and the record."""

    x: Any  # torch.Tensor (1, C, D, H, W) on the model's device
    grid: geometry.ModelGrid
    space: Any  # input_space.InputSpace applied
    origin: dict  # where orientation / spacing / shape / normalization came from
    stored: str  # the input's own axis codes, e.g. "PIR"
    warnings: list[str] = field(default_factory=list)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    def record(self, volume: Volume) -> dict:
        """The sidecar's ``input_space`` section: what was declared, what the input was, every step."""
        return {
            "applied": self.space.to_record(),
            "from": dict(self.origin),
            "stored": {"orientation": self.stored,
                       "spacing_mm": [round(float(v), 6) for v in geometry.voxel_sizes(volume.affine)],
                       "shape": list(volume.shape)},
            "steps": [dict(s) for s in self.grid.steps],
            "model_grid": {"shape": list(self.grid.shape), "affine": np.asarray(self.grid.affine).tolist(),
                           "orientation": geometry.axcodes(self.grid.affine)},
        }


def prepare(volume: Volume, model: Any, normalization: str | None = None, input_shape=None, *,
            model_orientation: str | None = None, model_spacing=None) -> ModelInput:
    """Bring ``volume`` into ``model``'s input space (see :mod:`input_space`) with MONAI's transforms.

    ``None`` arguments take the model's declaration (else "as stored"); ``"stored"`` asks for the
    input as stored even if the model declares otherwise.
    """
    import torch

    from .input_space import orientation_warning, resolve

    spec = model.spec
    if spec.channels is not None and volume.channels != spec.channels:
        raise UserError(
            f"the model expects {spec.channels} channel(s) but the input has {volume.channels}; "
            f"select {spec.channels} image layer(s) / file(s) of one grid."
        )
    declared = spec.input_space if hasattr(spec, "input_space") else None
    if declared is None:  # a spec-like object without a declared space (duck-typed test doubles)
        from .input_space import InputSpace

        declared = InputSpace(shape=getattr(spec, "input_shape", None),
                              normalization=getattr(spec, "normalization", "none") or "none")
    space, origin = resolve(declared, orientation=model_orientation, spacing=model_spacing, shape=input_shape,
                            normalization=normalization)
    stored = geometry.axcodes(volume.affine)
    warnings = list(space.skipped)
    if space.orientation is None:
        warnings.append(orientation_warning(stored))
    from .volumes import check_fits

    # the grid tensor, its gradient and the relevance, before any of them is allocated
    planned = tuple(space.shape) if space.shape else tuple(volume.shape)
    check_fits(float(np.prod([float(s) for s in planned])) * volume.channels * 4 * 3,
               f"the model grid {planned}", hint="give a smaller --input-shape (or model input size)")
    grid = geometry.ModelGrid(space, volume.affine, volume.shape)
    data = grid.apply(volume.model_copy(), copy=False)
    x = torch.from_numpy(np.ascontiguousarray(data))[None].to(model.device)
    return ModelInput(x=x, grid=grid, space=space, origin=origin, stored=stored, warnings=warnings)


def prepare_input(volume: Volume, model: Any, normalization: str | None = None, input_shape=None, **space):
    """The model-space input tensor (1, C, D, H, W), whether it was resampled, the model shape and the
    normalisation (see :func:`prepare`; ``space`` takes ``model_orientation`` and ``model_spacing``)."""
    mi = prepare(volume, model, normalization, input_shape, **space)
    return mi.x, mi.grid.resampled, mi.grid.shape, mi.space.normalization


def same_target_kwargs(rel: Any, kwargs: dict) -> dict:
    """:func:`explain` keyword arguments that keep ``rel``'s target for other inputs or models: a segmentation
    result's mask is fixed (a point or predicted region could pick another one after a change)."""
    if getattr(rel, "mask", None) is None:
        return dict(kwargs)
    kw = {k: v for k, v in kwargs.items() if k != "point"}
    return {**kw, "segmentation": True, "mask": rel.mask}


def _absolute_source(source: str) -> str:
    """The model source with its file part made absolute (``net.py:Net``, a bundle folder, a file), if it exists."""
    from .models import source_file

    if source.strip().lower() == "demo":
        return "demo"  # the built-in demo, even when a folder called "demo" exists here
    path, rest = source_file(source)
    return os.path.abspath(path) + rest if path and os.path.exists(path) else source


def parse_shape(value) -> tuple[int, int, int]:
    """A model grid shape from ``"64,64,64"``, ``64`` or a sequence of three positive ints."""
    from .input_space import parse_shape as _parse

    return _parse(value)


def _seed(seed: int, device: Any) -> None:
    """Seed torch's generators for stochastic methods: all of them (``torch.manual_seed``) when the model runs
    on an accelerator, only the CPU one when it runs on the CPU.

    ``torch.manual_seed`` also queues a seed for every accelerator type not yet initialised, recording a stack
    trace for each (0.1-0.4 ms per call, a few per cent of a 20 ms Grad-CAM); with the model on the CPU no
    accelerator draws the method's random numbers.
    """
    import torch

    if getattr(device, "type", "cpu") == "cpu":
        torch.random.default_generator.manual_seed(int(seed))
    else:
        torch.manual_seed(int(seed))


def _explicit_index(target: Any) -> int | None:
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        return int(target)
    if isinstance(target, str) and target.strip().isdigit():
        return int(target)
    return None


@dataclass(frozen=True)
class Target:
    """What an explanation is taken of: the module to explain (wrapped for tuple / segmentation outputs), the class
    probabilities, the class names, the predicted and the explained class, and the segmentation mask (or None)."""

    module: Any
    probs: np.ndarray
    names: list
    predicted: int
    target: int
    segmentation: Any = None

    def __iter__(self):  # unpacks like the former (module, probs, names, predicted, target, segmentation) tuple
        return iter((self.module, self.probs, self.names, self.predicted, self.target, self.segmentation))


def prepare_target(model, x, volume, target, segmentation, mask, point, output_index, connectivity, ctx,
                   grid=None, key: tuple | None = None) -> Target:
    """The :class:`Target` of an explanation of ``model`` on the prepared input ``x`` (``key``: its prediction key)."""
    import torch

    from .models import check_output
    from .segmentation import (
        SegmentationScores,
        default_target,
        is_segmentation_output,
        pick_output,
        predicted_labels,
        resolve_mask,
    )

    raw = predict_cached(model.module, x, key)
    is_tuple = isinstance(raw, (tuple, list))
    out = pick_output(raw, output_index, ctx.warn) if is_tuple else raw
    wants_seg = bool(segmentation) or mask is not None or point is not None
    if is_segmentation_output(out) and out.shape[0] == x.shape[0]:
        if not wants_seg:
            raise UserError(
                f"model output has shape {tuple(out.shape)}: a segmentation map, not class scores (N, classes); "
                "explain it as a segmentation (CLI: --segmentation, optionally --mask LABELS.nii.gz) to explain "
                "the sum of a class's logits inside a mask."
            )
        finite, labels = label_facts(out, predicted_labels)
        if not finite:
            raise UserError(f"model output of shape {tuple(out.shape)} contains NaN or Inf; check the input and its normalization.")
        channels = int(out.shape[1])
        names = model.class_names_for(channels)
        try:
            predicted = default_target(labels, channels)
        except UserError:
            if target is None or (isinstance(target, str) and target.strip().lower() in ("", "predicted", "pred")):
                raise
            predicted = 0
        tgt = resolve_target(target, names, predicted)
        maps = {} if grid is None else {"to_grid": grid.to_model, "to_volume": lambda lab: grid.to_volume(lab, labels=True)}
        seg = resolve_mask(out, tgt, volume.shape, mask=mask, point=point, connectivity=connectivity, names=names,
                           labels=labels, **maps)
        counts = np.asarray(seg.class_voxels, dtype=float)
        fractions = counts / max(float(labels.size), 1.0)
        if channels == 1:
            probs = fractions
        else:
            probs = fractions / max(float(fractions.sum()), 1e-12)
        module = SegmentationScores(model.module, torch.from_numpy(seg.mask).to(x.device), output_index)
        return Target(module, probs, names, predicted, tgt, seg)
    if wants_seg:
        raise UserError(
            f"a mask, a point or --segmentation applies to segmentation models, but this model returns class scores "
            f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}; leave them out."
        )
    scores = check_output(out)
    if scores.shape[1] == 1:
        probs = torch.sigmoid(scores)[0]
    else:
        probs = torch.softmax(scores.float(), dim=1)[0]
    probs = probs.detach().cpu().numpy().astype(float)
    names = model.class_names_for(len(probs))
    predicted = int(np.argmax(probs))
    tgt = resolve_target(target, names, predicted)
    module = SegmentationScores(model.module, None, output_index) if is_tuple else model.module
    if not is_tuple and out.shape[0] == 1:
        note_classifier(model.module, x, len(probs))
    return Target(module, probs, names, predicted, tgt, None)


def explain(
    volume: Volume,
    model: Any,
    method: str,
    params: dict | None = None,
    target: int | str | None = None,
    normalization: str | None = None,
    input_shape=None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    seed: int = 0,
    *,
    segmentation: bool = False,
    mask: np.ndarray | None = None,
    point: tuple[int, int, int] | Any | None = None,
    output_index: int = 0,
    connectivity: int = 26,
    model_orientation: str | None = None,
    model_spacing: float | tuple[float, float, float] | str | None = None,
) -> Relevance:
    """Explain ``model``'s decision on ``volume`` with attribution ``method``.

    Parameters
    ----------
    volume : Volume
        Input (C, i, j, k) with its affine.
    model : LoadedModel
        From :func:`napari_xai.core.models.load_model`.
    method : str
        A registry name, e.g. ``"integrated-gradients"``; see ``napari-xai methods``.
    params : dict, optional
        Method parameters (strings are converted); defaults fill the rest.
    target : int or str, optional
        Class index or name; ``None`` or ``"predicted"`` explains the predicted class.
    normalization : str, optional
        Overrides the model's declared intensity normalisation (none, zscore, minmax).
    input_shape : tuple of 3 ints or str, optional
        Overrides the model grid (spatial shape the model expects); the volume is
        brought to it with the model's shape policy (default: MONAI ``Resize``,
        trilinear) and the relevance mapped back.
    progress, should_stop : callable, optional
        Progress callback ``(fraction, message)`` and cancellation check.
    seed : int
        Seed for stochastic methods (SmoothGrad noise), recorded in the provenance.
    segmentation : bool
        The model returns a logit map (N, C, D, H, W): explain the sum of the
        target class's logits inside a mask (default: its predicted region).
        Implied by ``mask`` or ``point``. Without it a map output is an error.
    mask : np.ndarray, optional
        Target mask (i, j, k) on the volume grid, non-zero = inside (e.g. a Labels layer).
    point : tuple of 3 int or segmentation.Ray, optional
        Voxel (i, j, k) on the volume grid: the target mask is the connected
        component of the predicted target region that contains it. A ``Ray``
        (a click in a 3D view, voxel coordinates) takes the first voxel of that
        region along the ray.
    output_index : int
        Which output to explain when the model returns a tuple (deep
        supervision); the first by default, with a warning.
    connectivity : int
        6, 18 or 26: neighbourhood of the connected component for ``point``.
    model_orientation : str, optional
        Axis codes (e.g. ``"RAS"``) of the voxel order the model was trained on;
        the input is reoriented to it (MONAI ``Orientation``) and the relevance
        back. ``None``: the model's declaration, else as stored (with a warning);
        ``"stored"``: as stored.
    model_spacing : float or 3 floats or str, optional
        Voxel size in mm the model was trained on (MONAI ``Spacing``, inverted
        for the relevance). ``None``: the model's declaration, else as stored;
        ``"stored"``: as stored.

    Returns
    -------
    Relevance
        Raw relevance on the input's voxel grid (no smoothing or normalisation).
        For segmentation models also the predicted labels and the target mask.
    """
    entry = get_method(method)
    parsed = entry.parse(params)
    if entry.needs_module and model.is_scripted:
        raise UserError(
            f"method '{entry.name}' needs an eager nn.Module, but the model is TorchScript; "
            "use saliency, input-x-gradient, integrated-gradients, smoothgrad or occlusion, "
            "or load the model as a .py file with weights."
        )
    ctx = RunContext(progress=progress, should_stop=should_stop, is_scripted=bool(model.is_scripted))
    for w in volume.warnings:
        ctx.warn(w)
    ctx.step(0.0, "preparing input")
    mi = prepare(volume, model, normalization, input_shape, model_orientation=model_orientation,
                 model_spacing=model_spacing)
    for w in mi.warnings:
        ctx.warn(w)
    x, grid = mi.x, mi.grid
    resampled, model_shape, norm_mode = grid.resampled, grid.shape, mi.space.normalization
    ctx.grid_affine = grid.affine
    version = x._version
    # The prediction (class probabilities for the record) needs a forward pass. For a model already seen to
    # return class scores and an explicit class index, and for methods whose map does not depend on the target,
    # the method runs first and its own pass on this input gives the prediction (ctx.scores; a method without
    # such a pass is followed by the usual prediction); otherwise the prediction comes first, as its errors must
    # come before any method work. The input is hashed once (the key of the remembered predictions).
    n_known, idx = known_classes(model.module, x), _explicit_index(target)
    key = None if getattr(model.module, "training", False) else prediction_key(model.module, x)
    method_first = False
    if key is not None and (entry.target_independent or (
            n_known is not None and idx is not None and 0 <= idx < n_known and not segmentation and mask is None
            and point is None)):
        method_first = not is_remembered(model.module, key)  # remembered: no pass needed either way
    if not method_first:
        t = prepare_target(model, x, volume, target, segmentation, mask, point, output_index, connectivity, ctx,
                           grid=grid, key=key)
        # a map that ignores the target needs no target wrapper (segmentation mask, tuple output)
        module, tgt, label = (model.module if entry.target_independent else t.module), t.target, t.names[t.target]
        if x._version != version:
            raise UserError(f"model {model.name} changed its input (shape {tuple(x.shape)}) in place during the "
                            "prediction; make forward() work on a copy (x = x.clone()).")
    elif entry.target_independent:
        module, tgt, label = model.module, (idx if idx is not None else 0), "the input"
        ctx.capture_input = x
    else:
        module, tgt, label = model.module, idx, model.class_names_for(n_known)[idx]
        ctx.capture_input = x
    ctx.step(0.02, f"explaining '{label}' with {entry.name}")
    _seed(seed, x.device)
    try:
        out = entry.fn(module, x, tgt, parsed, ctx)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as exc:
        if not model_fault(exc, model.module):
            raise
        raise model_error(exc, model.module, x) from None
    if method_first:
        ctx.capture_input = None
        if ctx.scores is not None:
            remember_prediction(model.module, key, ctx.scores)
        t = prepare_target(model, x, volume, target, segmentation, mask, point, output_index, connectivity, ctx,
                           grid=grid, key=key)
        tgt = t.target
        if x._version != version:
            raise UserError(f"model {model.name} changed its input (shape {tuple(x.shape)}) in place during the "
                            "prediction; make forward() work on a copy (x = x.clone()).")
    probs, names, predicted, seg = t.probs, t.names, t.predicted, t.segmentation
    arrays = (out.used or {}).pop("_arrays", {}) if isinstance(out.used, dict) else {}
    # back through the inverse of the same MONAI transforms: maps of per-voxel values (attention coefficients)
    # are interpolated; relevance also keeps its total (scaled by the ratio of voxel volumes)
    additive = not arrays.get("per_voxel")
    rel = out.relevance.detach().float().cpu().numpy()[0]
    if rel.shape[0] != volume.channels:
        # single-map methods (e.g. CAM) give one map for all channels
        rel = np.repeat(rel[:1], volume.channels, axis=0)
    rel = grid.to_volume(rel, additive=additive, copy=False).astype(np.float32, copy=False)
    if not np.isfinite(rel).all():
        ctx.warn("the relevance contains NaN/Inf values (numerical overflow in the method); they were set to 0.")
        rel = np.nan_to_num(rel, nan=0.0, posinf=0.0, neginf=0.0)
    intermediate = {
        k: grid.to_volume(np.asarray(v, dtype=np.float32), additive=additive).astype(np.float32)
        for k, v in (arrays.get("intermediate") or {}).items()
    }
    seg_labels = seg_mask = None
    if seg is not None:
        seg_labels = grid.to_volume(seg.labels.astype(np.uint16), labels=True)
        seg_mask = grid.to_volume(seg.mask.astype(np.uint8), labels=True).astype(bool)
    ctx.step(1.0, "done")
    params_rec = {**parsed, **(out.used or {})}
    files = (volume.source or "").split(";") if volume.source else []
    provenance = {
        "kind": "relevance",
        "created": now_iso(),
        "input": {
            "name": volume.name,
            "files": files,
            "absolute": [os.path.abspath(f) if os.path.exists(f) else f for f in files],
            "sha256": file_hashes(files),
            "shape": list(volume.shape),
            "channels": volume.channels,
            "affine": np.asarray(volume.affine).tolist(),
        },
        "model": {
            "name": model.name,
            "source": model.source,
            "kind": model.kind,
            "sha256": model.sha256,
            "class_names": names,
            "input_shape": list(model_shape),
            "normalization": norm_mode,
            "device": str(model.device),
            "notes": list(getattr(model, "notes", None) or []),
            "source_absolute": _absolute_source(str(model.source)),
            "weights": getattr(model, "weights", None),
            "model_kwargs": dict(getattr(model, "model_kwargs", None) or {}),
            "files": dict(getattr(model, "files", None) or {}),
        },
        "grid": {"resampled": bool(resampled), "model_shape": list(model_shape)},
        "input_space": mi.record(volume),
        "method": entry.name,
        "params": params_rec,
        "seed": seed,
        "target": {"index": tgt, "name": names[tgt], "requested": target if target is not None else "predicted"},
        "prediction": {
            "index": predicted,
            "name": names[predicted],
            "probabilities": {n: float(p) for n, p in zip(names, probs)},
        },
        "relevance": {"sum": float(rel.sum()), "max_abs": max(float(rel.max()), -float(rel.min())) if rel.size else 0.0},
        "output_index": int(output_index),
        "warnings": list(ctx.warnings),
        "versions": package_versions(),
    }
    if seg is not None:
        provenance["segmentation"] = seg.record()
        provenance["prediction"]["meaning"] = "fraction of predicted voxels per class"
    if intermediate:
        provenance["intermediate"] = sorted(intermediate)
    return Relevance(
        data=rel,
        affine=np.asarray(volume.affine, dtype=float),
        method=entry.name,
        target=tgt,
        target_name=names[tgt],
        predicted=predicted,
        probabilities={n: float(p) for n, p in zip(names, probs)},
        provenance=provenance,
        warnings=list(ctx.warnings),
        header=volume.header,
        segmentation=seg_labels,
        mask=seg_mask,
        intermediate=intermediate,
    )
