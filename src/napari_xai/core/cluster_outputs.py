"""The explorer's outputs (labels, filtered map, cluster table, sidecars) with the atlas columns
``peak_region`` and ``regions`` in the table: one writer for ``napari-xai clusters`` and the explorer widget's Save,
so both write the same CSV."""

from __future__ import annotations

from pathlib import Path

from .errors import UserError

REGION_COLUMNS = ("peak_region", "regions")


def table_csv_with_regions(table, regions: dict) -> str:
    """The cluster table's CSV (``ClusterTable.to_csv``) with ``peak_region`` and ``regions`` columns appended.

    ``regions`` holds one list per column, in table order (as from
    :func:`napari_xai.core.atlas.cluster_region_columns`).
    """
    import csv
    import io

    rows = list(csv.reader(io.StringIO(table.to_csv())))
    n = len(rows) - 1
    for key in REGION_COLUMNS:
        if len(regions[key]) != n:
            raise ValueError(f"{key}: {len(regions[key])} values for a table of {n} rows")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(rows[0] + list(REGION_COLUMNS))
    for row, peak, regs in zip(rows[1:], regions["peak_region"], regions["regions"]):
        w.writerow(row + [peak, regs])
    return buf.getvalue()


class _TableWithRegions:
    """A cluster table whose CSV carries the atlas columns (everything else is the table's)."""

    def __init__(self, table, regions: dict):
        self._table = table
        self._regions = regions

    def __len__(self) -> int:
        return len(self._table)

    def __getattr__(self, name):
        return getattr(self._table, name)

    def to_csv(self) -> str:
        return table_csv_with_regions(self._table, self._regions)


def atlas_record(grid) -> dict:
    """What the table's sidecar records about the atlas (an ``AtlasOnGrid``)."""
    a = grid.atlas
    return {
        "name": a.name,
        "kind": a.kind,
        "source": str(a.source),
        "probability_threshold": grid.threshold,
        "peak_region": "atlas region at the cluster's peak voxel ('' = outside every region)",
        "regions": "regions the cluster overlaps, percent of its voxels (>= 1%, at most 5)",
    }


def save_outputs_with_regions(result, regions: dict | None, atlas: dict | None, *, labels_path=None,
                              filtered_path=None, table_path=None, extra: dict | None = None, **kwargs):
    """:func:`napari_xai.core.explorer.save_outputs`, with the atlas columns in the table when ``regions`` is given.

    ``regions``: ``{"peak_region": [...], "regions": [...]}`` in table order, or
    None (then this is exactly ``save_outputs``); ``atlas``: :func:`atlas_record`.
    If a write fails, every file written so far is removed.
    """
    import dataclasses

    from . import postprocess as pp
    from .explorer import save_outputs
    from .provenance import sidecar_path
    from .volumes import written_or_removed

    if regions is None or table_path is None:
        return save_outputs(result, labels_path=labels_path, filtered_path=filtered_path, table_path=table_path,
                            extra=extra, **kwargs)
    others = [Path(p) for p in (labels_path, filtered_path) if p is not None]
    t = Path(table_path)
    if any(sidecar_path(p).resolve() == sidecar_path(t).resolve() for p in others):
        raise UserError("the output files (or their .json sidecars) collide; give each output its own name.")
    annotated = dataclasses.replace(result, table=_TableWithRegions(result.table, regions))
    table_extra = {**(extra or {}), "columns": list(pp.TABLE_COLUMNS) + list(REGION_COLUMNS), "atlas": atlas}
    with written_or_removed() as written:  # one transaction: all files appear together, or none
        written += save_outputs(annotated, table_path=t, extra=table_extra, **kwargs)
        if others:
            written += save_outputs(result, labels_path=labels_path, filtered_path=filtered_path, extra=extra, **kwargs)
    return written
