"""napari reader for NIfTI (.nii, .nii.gz): volumes in world millimetres, in any storage orientation.

* A volume whose axes are permuted with respect to world x, y, z (e.g. PIR) is shown with its axes transposed
  into world order (napari cannot slice a permuted affine in 2D); the layer metadata keeps the file's own affine
  and header (see :func:`napari_xai._layers.display_tuple`), so a save through our writer restores the stored
  geometry bit for bit and the widgets explain the file's own voxel order.
* A file with its JSON sidecar re-opens as what it is: a relevance map (``napari-xai explain``, or saved from
  napari) as the signed (+)/(−) layers of a live run, a clusters or segmentation file as Labels. Files without
  a sidecar (or with an unreadable one: a warning says so) open as plain images.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np

from ._layers import display_tuple, relevance_layer_data
from .core.provenance import find_sidecar, read_sidecar
from .core.volumes import is_nifti_path, load_nifti

#: Sidecar kinds shown as Labels (integer data only).
LABEL_KINDS = ("clusters", "segmentation")
#: Sidecar kinds shown as signed (+)/(−) relevance layers.
SIGNED_KINDS = ("relevance", "intermediate", "filtered_relevance")


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not is_nifti_path(path):
        return None
    return read_nifti


def volume_layer_kwargs(volume, provenance: dict | None = None) -> dict:
    """Layer kwargs that keep the affine and header so a save restores the geometry."""
    meta = {
        "affine": volume.affine,
        "nifti_header": volume.header,
        "source": volume.source,
        "warnings": list(volume.warnings),
    }
    if provenance:
        meta["provenance"] = provenance
    return {"name": volume.name, "affine": volume.affine, "metadata": meta}


def _sidecar(path) -> tuple[dict | None, str | None]:
    """(the sidecar record, or None; a warning when a sidecar exists but cannot be read)."""
    try:
        side = read_sidecar(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, f"{find_sidecar(path).name} could not be read as a JSON sidecar ({msg}); opened as a plain image."
    if side is not None and not isinstance(side, dict):
        return None, f"{find_sidecar(path).name} is not a JSON object; opened as a plain image."
    return side, None


def _kind(record: dict | None) -> str | None:
    if not record:
        return None
    kind = record.get("kind")
    inner = record.get("provenance")
    if kind in (None, "image") and isinstance(inner, dict) and "method" in inner:  # a map saved from napari
        kind = inner.get("kind") or "relevance"
    if kind is None and "method" in record:
        kind = "relevance"
    return kind


def _result_name(record: dict, fallback: str) -> str:
    """``model · method · target`` as a live run names its layers (``· at <point>`` for intermediate maps)."""
    rec = record.get("provenance") if "method" not in record and isinstance(record.get("provenance"), dict) else record
    if "method" not in rec:
        return fallback
    model = (rec.get("model") or {}).get("name", "model")
    target = (rec.get("target") or {}).get("name")
    name = f"{model} · {rec['method']}" + (f" · {target}" if target is not None else "")
    point = record.get("point") or rec.get("point")
    return f"{name} · at {point}" if record.get("kind") == "intermediate" and point else name


def read_nifti(path):
    """Read one NIfTI file; 4D files become one layer per channel (one (+)/(−) pair per channel for relevance)."""
    if isinstance(path, list):
        path = path[0]
    vol = load_nifti(path)
    record, problem = _sidecar(path)
    if problem:
        warnings.warn(f"napari-xai: {problem}", stacklevel=2)
        vol.warnings.append(problem)
    kind = _kind(record)
    provenance = record if kind else None
    if kind in SIGNED_KINDS and np.issubdtype(vol.data.dtype, np.floating):
        rel = SimpleNamespace(data=vol.data, affine=vol.affine, header=vol.header, provenance=provenance,
                              warnings=list(vol.warnings), label=_result_name(record, vol.name))
        out = []
        for c in range(vol.channels):
            for data, kw, layer_kind in relevance_layer_data(rel, c):
                kw["metadata"]["source"] = vol.source
                out.append((data, kw, layer_kind))
        return out
    kwargs = volume_layer_kwargs(vol, provenance)
    if vol.channels == 1:
        data = vol.data[0]
        if data.dtype.kind in "iu" and kind in LABEL_KINDS:
            return [display_tuple((data, kwargs, "labels"))]
        return [display_tuple((data, kwargs, "image"))]
    kwargs["channel_axis"] = 0
    kwargs["name"] = [f"{vol.name}[{c}]" for c in range(vol.channels)]
    kwargs["blending"] = "additive"
    return [display_tuple((vol.data, kwargs, "image"))]

