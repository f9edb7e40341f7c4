"""napari writers: Image and Labels layers to NIfTI with their source affine and a JSON sidecar (``NAME.nii.gz.xai.json``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._layers import uncropped
from .core.errors import UserError
from .core.geometry import stored_geometry
from .core.provenance import now_iso, package_versions, write_sidecar
from .core.volumes import is_nifti_path, save_nifti, written_or_removed


def _affine_of(meta: dict) -> np.ndarray:
    md = meta.get("metadata") or {}
    if md.get("affine") is not None:
        return np.asarray(md["affine"], dtype=float)
    aff = meta.get("affine")
    if aff is not None:
        aff = np.asarray(getattr(aff, "affine_matrix", aff), dtype=float)
        if aff.shape == (4, 4):
            return aff
    scale = np.asarray(meta.get("scale", (1, 1, 1)), dtype=float)[-3:]
    translate = np.asarray(meta.get("translate", (0, 0, 0)), dtype=float)[-3:]
    out = np.eye(4)
    out[:3, :3] = np.diag(scale)
    out[:3, 3] = translate
    return out


def _write(path: str, data, meta: dict, kind: str) -> list[str]:
    p = Path(path)
    if not is_nifti_path(p):
        p = p.with_name(p.name + ".nii.gz")
    arr = np.asarray(data)
    if arr.ndim not in (3, 4):
        raise UserError(f"only 3D (or 4D channel) layers can be saved as NIfTI; this layer is {arr.ndim}D.")
    if kind == "labels" and arr.dtype.kind in "iu" and arr.max(initial=0) <= np.iinfo(np.uint16).max and arr.min(initial=0) >= 0:
        arr = arr.astype(np.uint16)
    md = meta.get("metadata") or {}
    affine = _affine_of(meta)
    arr, full_affine = uncropped(arr, md)  # the explorer's layers are cropped (fast 3D); files are on the full grid
    if full_affine is not None:
        affine = full_affine
    prov = md.get("provenance") if isinstance(md.get("provenance"), dict) else None
    signed = md.get("xai_relevance")
    if signed is not None and np.shape(signed) == arr.shape[-3:]:
        # a relevance layer shows one sign of the map; the file holds the whole signed map it came from
        arr = np.asarray(signed, dtype=np.float32)
    # a volume shown transposed (stored with permuted axes, e.g. PIR) goes back to the file's voxel order and affine
    arr, affine = stored_geometry(arr, md, affine)
    saved = {"layer": meta.get("name"), "saved": now_iso(), "affine": affine.tolist()}
    if prov is not None and "method" in prov:
        # the same record as 'napari-xai explain' writes, so the reader, the widget and 'reproduce' read it alike
        record = {**prov, **saved, "output": p.name, "signed_relevance": signed is not None}
    else:
        record = {"kind": prov.get("kind", kind) if prov else kind, **saved, "file": p.name, "provenance": prov,
                  "versions": package_versions()}
    with written_or_removed():  # the image and its sidecar (``NAME.nii.gz.xai.json``, never a BIDS ``NAME.json``)
        save_nifti(p, arr, affine, header=md.get("nifti_header"))
        write_sidecar(p, record)
    return [str(p)]


def write_image(path: str, data, meta: dict) -> list[str]:
    return _write(path, data, meta, "image")


def write_labels(path: str, data, meta: dict) -> list[str]:
    return _write(path, data, meta, "labels")
