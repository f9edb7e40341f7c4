"""Turn core results into napari layer data, and update layers in place.

Relevance is shown as two layers over the anatomy: positive relevance in
red-yellow (:data:`POS_COLORMAP`) and negative relevance in blue-cyan, both with additive blending and
MIP rendering, so zero is transparent in 2D and in 3D and both signs stay
visible (a single diverging colormap with white at zero renders as an opaque
box in 3D). Both layers carry the full signed map in their metadata so the
writer and the explorer always work on the true relevance.

Colour scale: the upper limit is the 99.9th percentile of the map's non-zero
|r| (both signs together, so a non-negative map such as Grad-CAM gets its own
scale, not a placeholder for its empty negative part), the lower limit the
larger of the 90th percentile of |r| and a quarter of the upper limit. Below
the lower limit nothing is added (black under additive blending), so a smooth
non-negative map shows its top instead of tinting the whole brain in 2D, and
the weak background does not haze a 3D MIP.

Anatomy under relevance (:func:`anatomy_style`) renders as an attenuated MIP
at 0.8 opacity: a plain MIP of a T1 is a white blob in 3D that additive
relevance cannot show through.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .core import geometry

POS_SUFFIX = " (+)"
NEG_SUFFIX = " (−)"
#: Positive relevance: napari's "hot" with its first colour black. "hot" starts at a dark red (0.0416, 0, 0):
#: under additive blending every voxel below the lower limit added 11/255 red, a brown haze over the whole
#: box in 3D and the whole slice in 2D; black there adds nothing, as the negative half's "cyan" does.
POS_COLORMAP = "hot (black floor)"
NEG_COLORMAP = "cyan"


def display_tuple(layer_tuple: tuple) -> tuple:
    """A layer tuple napari can slice: data stored with permuted axes (e.g. PIR) is shown transposed into world
    axis order, and the metadata keeps the stored affine (``geometry.STORAGE_KEY``) so that the writer and the
    widgets get the file's own voxel order back. Tuples without a permuted 4x4 ``affine`` are returned as given."""
    data, kwargs, kind = layer_tuple
    aff = kwargs.get("affine")
    if aff is None or np.shape(aff) != (4, 4) or np.ndim(data) < 3:
        return layer_tuple
    axes = geometry.view_axes(aff)
    if axes == geometry.IDENTITY_AXES:
        return layer_tuple
    aff = np.asarray(aff, dtype=float)
    shown = geometry.permute_affine(aff, axes)
    md = dict(kwargs.get("metadata") or {})
    stored_shape = tuple(np.shape(data)[-3:])
    rel = md.get("xai_relevance")
    if rel is not None and tuple(np.shape(rel)[-3:]) == stored_shape:
        md["xai_relevance"] = geometry.to_view(rel, axes)
    md["affine"] = shown
    md[geometry.STORAGE_KEY] = {"affine": aff, "axes": list(axes)}
    return geometry.to_view(data, axes), {**kwargs, "affine": shown, "metadata": md}, kind


def volume_from_layers(layers) -> "object":
    """Stack image layers (one grid) into a :class:`~napari_xai.core.volumes.Volume` in the voxel order and
    affine of the files they came from (a reoriented view is undone), with their header and source."""
    from .core.volumes import Volume, check_array, stack_channels

    vols = []
    for layer in layers:
        data, affine = geometry.layer_stored(layer)
        arr, warnings = check_array(data, f"layer '{layer.name}'")
        md = getattr(layer, "metadata", None) or {}
        vols.append(Volume(data=arr, affine=np.asarray(affine, dtype=float), header=md.get("nifti_header"),
                           name=layer.name, source=md.get("source") or layer.name, warnings=warnings))
    return stack_channels(vols)


def array_on_grid(layer, volume) -> np.ndarray:
    """A 3D layer's data (e.g. a Labels mask drawn in napari) on the stored voxel grid of ``volume`` (from
    :func:`volume_from_layers`): a view shown transposed (see :func:`display_tuple`) is transposed back."""
    data, _ = geometry.layer_stored(layer)
    data = np.asarray(data)
    axes = geometry.view_axes(volume.affine)
    if (geometry.STORAGE_KEY not in (getattr(layer, "metadata", None) or {}) and axes != geometry.IDENTITY_AXES
            and data.ndim == 3 and data.shape == tuple(volume.shape[a] for a in axes)):
        data = geometry.from_view(data, axes)
    return data


#: Percentiles of the non-zero |r| behind a relevance layer's contrast limits, and the lower limit's
#: minimum as a fraction of the upper one (see the module docstring).
HIGH_PERCENTILE = 99.9
LOW_PERCENTILE = 90.0
LOW_FRACTION = 0.25
#: Anatomy under relevance: readable in 3D (a plain MIP of a T1 is a white blob), unchanged in 2D but for opacity.
ANATOMY_STYLE = {"rendering": "attenuated_mip", "attenuation": 0.5, "opacity": 0.8}
#: The explorer's "filtered relevance" (a signed map, transparent at zero): translucent compositing *without*
#: depth writes. With depth (napari's "translucent") the volume writes its box's front face into the depth buffer
#: and every layer drawn after it inside that box (the atlas outlines) fails the depth test in 3D.
FILTERED_STYLE = {"blending": "translucent_no_depth", "rendering": "translucent", "interpolation3d": "linear"}
#: The explorer's "clusters" (uint16 labels; napari's iso_categorical in 3D writes depth only where a label is hit).
CLUSTERS_STYLE = {"opacity": 0.55}
#: A shared-scale comparison cell whose own limit is below this fraction of the shared limit is called faint.
FAINT_FRACTION = 0.05


def positive_colormap() -> str:
    """The positive half's colormap name (:data:`POS_COLORMAP`), registered with napari on the first call
    ("hot" without napari)."""
    try:
        from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap, ensure_colormap
    except ImportError:  # pragma: no cover - napari is installed with the plugin
        return "hot"
    if POS_COLORMAP not in AVAILABLE_COLORMAPS:
        hot = ensure_colormap("hot")
        colors = np.array(hot.colors, dtype=np.float32, copy=True)
        colors[0, :3] = 0.0
        ensure_colormap(Colormap(colors=colors, controls=np.asarray(hot.controls), interpolation=hot.interpolation,
                                 name=POS_COLORMAP))
    return POS_COLORMAP


def relevance_limits(signed: np.ndarray) -> tuple[float, float]:
    """Contrast limits ``(lo, hi)`` for the magnitude layers of a signed map (``(0, 1)`` for an all-zero map)."""
    mag = np.abs(np.asarray(signed, dtype=np.float32))
    nz = mag[mag > 0]
    if nz.size == 0:
        return 0.0, 1.0
    lo_p, hi = (float(v) for v in np.percentile(nz, [LOW_PERCENTILE, HIGH_PERCENTILE]))
    if not hi > 0:
        hi = float(nz.max())
    lo = max(lo_p, LOW_FRACTION * hi)
    return (lo if lo < hi else LOW_FRACTION * hi), hi  # the top tenth all at the peak: a quarter of it


def anatomy_style(layer=None) -> dict:
    """The anatomy's 3D display settings (:data:`ANATOMY_STYLE`); applied to ``layer`` if it still has napari's
    defaults (a plain MIP at full opacity), so a user's own choice is kept."""
    style = dict(ANATOMY_STYLE)
    if layer is not None and str(getattr(layer, "rendering", "")) == "mip" and float(layer.opacity) == 1.0:
        for k, v in style.items():
            setattr(layer, k, v)
    return style


def point_on_grid(point, volume):
    """A voxel (or a ``Ray`` of voxel coordinates) picked on a layer shown transposed (see :func:`display_tuple`)
    in the stored voxel order of ``volume``; unchanged when the volume is shown as stored."""
    axes = geometry.view_axes(volume.affine)
    if point is None or axes == geometry.IDENTITY_AXES:
        return point

    def back(v):
        out = [0.0] * 3
        for d, a in enumerate(axes):
            out[a] = v[d]
        return tuple(type(x)(x) for x in out)

    if hasattr(point, "origin") and hasattr(point, "direction"):
        return type(point)(back(point.origin), back(point.direction))
    return back(point)


def relevance_layer_data(rel, channel: int = 0, name: str | None = None) -> list[tuple]:
    """Layer data tuples (positive, negative) for one channel of a :class:`Relevance`."""
    signed = np.asarray(rel.data[channel], dtype=np.float32)
    base = name or rel.label
    if rel.data.shape[0] > 1:
        base = f"{base} [ch {channel}]"
    meta = {
        "affine": rel.affine,
        "nifti_header": rel.header,
        "provenance": rel.provenance,
        "xai_relevance": signed,
        "xai_channel": channel,
        "warnings": list(rel.warnings),
    }
    pos = np.clip(signed, 0, None)
    neg = np.clip(-signed, 0, None)
    common = {"affine": rel.affine, "blending": "additive", "rendering": "mip", "metadata": meta}
    lims = relevance_limits(signed)
    return [display_tuple(t) for t in (
        (pos, {**common, "name": base + POS_SUFFIX, "colormap": positive_colormap(), "contrast_limits": lims},
         "image"),
        (neg, {**common, "name": base + NEG_SUFFIX, "colormap": NEG_COLORMAP, "contrast_limits": lims}, "image"),
    )]


def signed_layers(data: np.ndarray, name: str, affine, meta: dict, limit: float | None = None) -> list[tuple]:
    """Layer tuples (positive, negative) for one signed map; ``meta`` keys starting with ``xai_`` (a widget's
    own record, e.g. ``xai_lrp``) and its provenance, header and warnings go into the layers' metadata."""
    rel = SimpleNamespace(data=np.asarray(data, np.float32)[None], label=name, affine=affine,
                          header=meta.get("nifti_header"), provenance=meta.get("provenance", {}),
                          warnings=meta.get("warnings", []))
    tuples = relevance_layer_data(rel, 0, name)
    for _, kw, _ in tuples:
        kw["metadata"].update({k: dict(v) for k, v in meta.items() if k.startswith("xai_") and isinstance(v, dict)})
        if limit is not None:
            kw["contrast_limits"] = (0.0, float(limit))
    return tuples


def intermediate_layer_data(rel, base: str | None = None, meta: dict | None = None) -> list[tuple]:
    """Hidden layer tuples for a result's intermediate maps (LRP segment boundaries, attention gates), named
    ``<base> · at <point>``; an all-zero negative part (a non-negative map) gets no layer. A widget's own
    record in ``meta`` (``xai_...`` with ``kind: "intermediate"``) gets the point's name as ``point``."""
    meta = {"affine": rel.affine, "nifti_header": rel.header, "provenance": rel.provenance, **(meta or {})}
    out: list[tuple] = []
    for key, vol in (getattr(rel, "intermediate", None) or {}).items():
        for data, kw, kind in signed_layers(vol, f"{base or rel.label} · at {key}", rel.affine, meta):
            if kw["name"].endswith(NEG_SUFFIX) and not np.any(data):
                continue
            kw["visible"] = False  # start hidden; switch them on in the layer list
            for tag in kw["metadata"].values():
                if isinstance(tag, dict) and tag.get("kind") == "intermediate":
                    tag["point"] = key
            out.append((data, kw, kind))
    return out


def uncropped(data, metadata: dict | None):
    """``(data, affine or None)`` on the full grid of a layer the explorer shows cropped (``xai_crop`` in its
    metadata: offset, full shape and affine; zeros outside the crop); other layers' data unchanged, affine None."""
    crop = (metadata or {}).get("xai_crop")
    arr = np.asarray(data)
    if not isinstance(crop, dict) or arr.ndim != 3:
        return arr, None
    full = np.zeros(tuple(int(n) for n in crop["shape"]), dtype=arr.dtype)
    full[tuple(slice(int(o), int(o) + n) for o, n in zip(crop["offset"], arr.shape))] = arr
    return full, np.asarray(crop["affine"], dtype=float)


def full_shape(layer) -> tuple[int, ...]:
    """The last three axes of a layer's data on its full grid (a layer shown cropped holds it in ``xai_crop``)."""
    crop = (getattr(layer, "metadata", None) or {}).get("xai_crop")
    if isinstance(crop, dict) and crop.get("shape") is not None:
        return tuple(int(n) for n in crop["shape"])[-3:]
    return tuple(int(n) for n in np.shape(layer.data)[-3:])


def upsert(viewer, layer_tuples: list[tuple]) -> list:
    """Add layers, or update the data and metadata of same-named layers (no pile-up)."""
    out = []
    for data, kwargs, kind in map(display_tuple, layer_tuples):
        name = kwargs["name"]
        if name in viewer.layers:
            layer = viewer.layers[name]
            layer.data = data
            layer.metadata = dict(kwargs.get("metadata", {}))
            if "contrast_limits" in kwargs and hasattr(layer, "contrast_limits"):
                layer.contrast_limits = kwargs["contrast_limits"]
            out.append(layer)
        else:
            adder = getattr(viewer, f"add_{kind}")
            out.append(adder(data, **kwargs))
    return out


#: Layers per comparison grid cell: anatomy, positive and negative relevance.
COMPARE_STRIDE = 3


def comparison_layer_data(anatomy, results: list, limit, meta_key: str = "xai_compare") -> list[tuple]:
    """Layer tuples for a comparison grid: per cell the anatomy (titled) and the channel-summed signed relevance.

    ``results`` are ``(label, Relevance)`` pairs; ``anatomy`` is one array for
    all cells (one input) or a list with each cell's own (several subjects, on
    their own grids). ``limit`` is one
    number (every relevance layer gets contrast limits ``(0, limit)``) or one
    per cell. Each layer's metadata holds ``{meta_key: {"kind": "compare",
    "item": label, "limit": limit}}``.

    With one shared limit, a cell whose own limit (99.99th percentile of its
    |r|) is below :data:`FAINT_FRACTION` of it would look blank: its title says
    so ("· faint: 0.2 % of the shared scale") and its tag holds ``"faint":
    fraction``; a per-cell scale shows it.
    """

    from .core.compare import cell_limits

    shared = np.ndim(limit) == 0
    limits = [float(limit)] * len(results) if shared else [float(v) for v in limit]
    anatomies = list(anatomy) if isinstance(anatomy, (list, tuple)) else [anatomy] * len(results)
    own = cell_limits([np.asarray(rel.data, np.float32).sum(axis=0) for _, rel in results]) if shared else limits
    tuples: list[tuple] = []
    for i, ((label, rel), limit, anatomy) in enumerate(zip(results, limits, anatomies)):
        title = f"{i + 1}. {label}"
        tag = {"kind": "compare", "item": label, "limit": float(limit)}
        fraction = own[i] / limit if shared and limit > 0 else 1.0
        if fraction < FAINT_FRACTION:  # a blank cell says why (a per-cell scale shows it)
            tag["faint"] = float(fraction)
            title += f" · faint: {faint_percent(fraction)} of the shared scale"
        meta = {"affine": rel.affine, "nifti_header": rel.header, "provenance": rel.provenance,
                "warnings": list(rel.warnings), meta_key: dict(tag)}
        tuples.append((np.asarray(anatomy), {"name": title, "affine": rel.affine, "colormap": "gray", "rendering": "mip",
                                             "opacity": 0.35, "metadata": meta}, "image"))
        summed = SimpleNamespace(data=np.asarray(rel.data, np.float32).sum(axis=0)[None], label=title,
                                 affine=rel.affine, header=rel.header, provenance=rel.provenance,
                                 warnings=list(rel.warnings))
        for data, kw, kind in relevance_layer_data(summed, 0, title):
            kw["metadata"][meta_key] = dict(tag)
            kw["contrast_limits"] = (0.0, float(limit))
            tuples.append((data, kw, kind))
    return tuples


def faint_percent(fraction: float) -> str:
    """A faint cell's share of the shared scale, e.g. '0.2 %' or '<0.01 %'."""
    pct = 100.0 * fraction
    return "<0.01 %" if pct < 0.01 else f"{pct:.2g} %"


def faint_cells(tuples: list[tuple], meta_key: str = "xai_compare") -> list[str]:
    """Items of comparison layer tuples that are faint at the shared scale (for a widget's status line)."""
    out: list[str] = []
    for _, kw, _ in tuples:
        tag = kw.get("metadata", {}).get(meta_key, {})
        if "faint" in tag and tag["item"] not in out:
            out.append(tag["item"])
    return out


def show_grid(viewer, tuples: list[tuple], three_d: bool = True) -> list:
    """Add comparison layers at the bottom of the list and switch napari's grid on, one cell per item."""
    added = []
    for data, kw, _ in map(display_tuple, tuples):
        layer = viewer.add_image(data, **kw)
        if kw.get("colormap") == "gray":
            layer.name_overlay.visible = True  # the cell's title
        added.append(layer)
    # grid cells are consecutive runs of COMPARE_STRIDE layers from the bottom of the list
    for k, layer in enumerate(added):
        viewer.layers.move(viewer.layers.index(layer), k)
    viewer.canvas.grid.stride = COMPARE_STRIDE
    viewer.canvas.grid.enabled = True
    if three_d:
        viewer.dims.ndisplay = 3
    viewer.reset_view()
    return added


# kinds of napari-xai records that are results made from a volume, not volumes to explain
_DERIVED_KINDS = {"relevance", "clusters", "filtered_relevance", "intermediate", "activation", "channel",
                  "cohort-mean-relevance", "sanity", "sanity-check", "segmentation"}
# metadata keys our widgets put on the layers they make
_DERIVED_KEYS = ("xai_relevance", "xai_explorer", "xai_explain", "xai_lrp", "xai_compare", "xai_check", "xai_segmentation")


def _record(layer) -> dict | None:
    md = getattr(layer, "metadata", None) or {}
    rec = md.get("provenance")
    return rec if isinstance(rec, dict) else None


def is_relevance_layer(layer) -> bool:
    """True for an Image layer holding a relevance map: made by napari-xai, or opened with its relevance sidecar.

    A relevance record is one with a ``"method"`` (an explanation); records of
    other kinds (clusters, the explorer's filtered map, an LRP intermediate
    map) are results *made from* relevance, not relevance to explore.
    """
    from napari.layers import Image

    if not isinstance(layer, Image) or getattr(layer, "rgb", False):
        return False
    md = getattr(layer, "metadata", None) or {}
    if md.get("xai_relevance") is not None:
        return True
    if "xai_explain" in md or "xai_explorer" in md:  # intermediate maps, the explorer's own layers
        return False
    rec = _record(layer)
    if rec is None:
        return False
    kind = rec.get("kind")
    if kind not in (None, "relevance") and not str(kind).endswith("-relevance"):
        return False
    inner = rec.get("provenance")
    return "method" in rec or str(kind).endswith("-relevance") or (isinstance(inner, dict) and "method" in inner)


def is_input_volume(layer) -> bool:
    """True for a 3D (or channels × 3D) Image layer that is a scan, not a result napari-xai made from one."""
    from napari.layers import Image

    if not isinstance(layer, Image) or getattr(layer, "rgb", False) or layer.ndim not in (3, 4):
        return False
    md = getattr(layer, "metadata", None) or {}
    if any(k in md for k in _DERIVED_KEYS) or is_relevance_layer(layer):
        return False
    rec = _record(layer)
    return rec is None or rec.get("kind") not in _DERIVED_KINDS
