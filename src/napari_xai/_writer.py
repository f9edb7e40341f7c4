"""napari writers: Image and Labels layers to NIfTI with their source affine and a JSON sidecar."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.errors import UserError
from .core.provenance import now_iso, package_versions, write_sidecar
from .core.volumes import is_nifti_path, save_nifti


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
    save_nifti(p, arr, affine, header=md.get("nifti_header"))
    record = {
        "kind": md.get("provenance", {}).get("kind", kind) if isinstance(md.get("provenance"), dict) else kind,
        "layer": meta.get("name"),
        "saved": now_iso(),
        "file": p.name,
        "affine": affine.tolist(),
        "provenance": md.get("provenance"),
        "versions": package_versions(),
    }
    write_sidecar(p, record)
    return [str(p)]


def write_image(path: str, data, meta: dict) -> list[str]:
    return _write(path, data, meta, "image")


def write_labels(path: str, data, meta: dict) -> list[str]:
    return _write(path, data, meta, "labels")
