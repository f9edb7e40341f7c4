"""napari reader for NIfTI (.nii, .nii.gz): volumes in world millimetres."""

from __future__ import annotations

from .core.provenance import read_sidecar
from .core.volumes import is_nifti_path, load_nifti


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


def read_nifti(path):
    """Read one NIfTI file; 4D files become one layer per channel."""
    if isinstance(path, list):
        path = path[0]
    vol = load_nifti(path)
    try:
        side = read_sidecar(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # a broken JSON beside the image must not hide it
        import warnings

        warnings.warn(f"{path}: its JSON sidecar could not be read ({type(exc).__name__}); opened without it.", stacklevel=2)
        side = None
    provenance = side if isinstance(side, dict) and side.get("kind") else None
    kwargs = volume_layer_kwargs(vol, provenance)
    if vol.channels == 1:
        data = vol.data[0]
        if data.dtype.kind in "iu" and provenance and provenance.get("kind") == "clusters":
            return [(data, kwargs, "labels")]
        return [(data, kwargs, "image")]
    kwargs["channel_axis"] = 0
    kwargs["name"] = [f"{vol.name}[{c}]" for c in range(vol.channels)]
    kwargs["blending"] = "additive"
    return [(vol.data, kwargs, "image")]
