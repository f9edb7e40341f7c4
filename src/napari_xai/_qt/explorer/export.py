"""Save… : the clusters, the filtered relevance (NIfTI) and the table (CSV), each with a JSON sidecar."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QWidget

from ...core import postprocess as pp
from ...core.errors import UserError

NOTHING_YET = "nothing to save yet: choose a relevance layer first."


def base_name(base: str | Path) -> Path:
    """``base`` without a NIfTI, CSV or JSON suffix."""
    base = Path(base)
    name = base.name
    for suffix in (".nii.gz", ".nii", ".csv", ".json"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return base.with_name(name)


def source_record(res: pp.PostResult, layer) -> dict:
    """What was explored: layer name, file (with its SHA-256), shape and voxel size."""
    from ...core import geometry
    from ...core.provenance import sha256_file

    src_file = source_file(layer)
    source = {
        "layer": layer.name if layer is not None else None,
        "file": src_file,
        "shape": list(res.filtered.shape),
        "voxel_size_mm": geometry.voxel_sizes(res.affine).tolist(),
    }
    if src_file and Path(src_file).is_file():
        source["sha256"] = sha256_file(src_file)
    return source


def source_file(layer) -> str | None:
    md = (layer.metadata or {}) if layer is not None else {}
    src = md.get("source")
    return str(src) if src else None


def save_result(res: pp.PostResult | None, base: str | Path, layer, regions, atlas_grid, provenance,
                masked: bool, overwrite: bool = True) -> list[Path]:
    """Write ``BASE_clusters.nii.gz``, ``BASE_filtered.nii.gz`` and ``BASE_table.csv`` (+ sidecars).

    ``regions`` (the table's atlas columns, or None) add ``peak_region`` and ``regions`` columns and the atlas
    to the table's sidecar.
    """
    from ...core.cluster_outputs import atlas_record, save_outputs_with_regions

    if res is None:
        raise UserError(NOTHING_YET)
    base = base_name(base)
    name = base.name
    md = (layer.metadata or {}) if layer is not None else {}
    return save_outputs_with_regions(
        res,
        regions,
        atlas_record(atlas_grid) if regions is not None else None,
        labels_path=base.with_name(name + "_clusters.nii.gz"),
        filtered_path=base.with_name(name + "_filtered.nii.gz"),
        table_path=base.with_name(name + "_table.csv"),
        source=source_record(res, layer),
        provenance=provenance,
        header=md.get("nifti_header"),
        mask_filtered=masked,
        overwrite=overwrite,
    )


def ask_base(parent: QWidget, layer) -> str:
    """The base name from a file dialog ("" if cancelled), starting beside the explored file."""
    start = str(Path(source_file(layer) or Path.home() / "relevance").with_suffix(""))
    path, _ = QFileDialog.getSaveFileName(parent, "Save clusters (base name)", start.replace(".nii", ""))
    return path
