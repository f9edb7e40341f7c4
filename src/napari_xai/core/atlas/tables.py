"""Region relevance tables and the anatomy of clusters."""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UserError, XaiWarning
from ..geometry import (
    voxel_volume_mm3,
)
from .on_grid import AtlasOnGrid, check_mni_space

# --------------------------------------------------------------------------------------
# region relevance table


@dataclass
class RegionTable:
    """Relevance per atlas region on a volume grid.

    ``rows``: one dict per region with keys ``region``, ``value``, ``index``,
    ``voxels``, ``volume_mm3``, ``pos_sum``, ``neg_sum``, ``sum``, ``mean``
    (over the region's voxels), ``pos_share`` (percent of the total positive
    relevance of the whole volume), ``clusters`` (ids of overlapping clusters).
    Totals: over the whole volume and inside the atlas (any region).
    """

    rows: list[dict]
    atlas: str
    threshold: float | None
    total_pos: float
    total_neg: float
    inside_pos: float
    inside_neg: float
    voxel_mm3: float

    COLUMNS = ("region", "value", "index", "voxels", "volume_mm3", "pos_sum", "neg_sum", "sum", "mean", "pos_share", "clusters")

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.COLUMNS)
        for r in self.rows:
            w.writerow(
                [
                    r["region"], r["value"], r["index"], r["voxels"], f"{r['volume_mm3']:.3f}",
                    f"{r['pos_sum']:.6g}", f"{r['neg_sum']:.6g}", f"{r['sum']:.6g}", f"{r['mean']:.6g}",
                    f"{r['pos_share']:.4f}", ";".join(map(str, r["clusters"])),
                ]
            )
        return buf.getvalue()

    def summary(self) -> dict:
        return {
            "atlas": self.atlas,
            "threshold": self.threshold,
            "regions": len(self.rows),
            "total_pos": self.total_pos,
            "total_neg": self.total_neg,
            "inside_atlas_pos": self.inside_pos,
            "inside_atlas_neg": self.inside_neg,
            "voxel_mm3": self.voxel_mm3,
        }


def region_table(
    grid: AtlasOnGrid,
    relevance: np.ndarray,
    clusters: np.ndarray | None = None,
    *,
    include_empty: bool = False,
    sort_by: str | None = "pos_sum",
) -> RegionTable:
    """Relevance per region of ``grid`` (one row per region present on the grid).

    Parameters
    ----------
    grid
        The atlas on the relevance's grid (:func:`atlas_on_grid`).
    relevance
        Signed relevance (i, j, k) on that grid. NaN counts as 0.
    clusters
        Optional cluster label volume (same grid); each row lists the ids of
        the clusters that overlap the region.
    include_empty
        Also list regions of the atlas that have no voxel on this grid.
    sort_by
        Row order, descending by this column (None keeps value order).
    """
    rel = np.asarray(relevance)
    if rel.ndim == 4 and rel.shape[0] == 1:
        rel = rel[0]
    if rel.shape != grid.shape:
        raise UserError(f"relevance has shape {rel.shape} but the atlas grid is {grid.shape}; resample the atlas onto the relevance grid.")
    r = rel.astype(np.float64).ravel()  # sums in float64
    bad = ~np.isfinite(r)
    if bad.any():
        r[bad] = 0.0
    lab = grid.labels.ravel()
    n = max(int(lab.max()) if lab.size else 0, max(grid.atlas.regions, default=0)) + 1
    rp = np.maximum(r, 0.0)
    rn = r - rp  # = min(r, 0), exactly
    pos = np.bincount(lab, weights=rp, minlength=n)
    neg = np.bincount(lab, weights=rn, minlength=n)
    cnt = np.bincount(lab, minlength=n)
    total_pos = float(rp.sum())
    total_neg = float(rn.sum())
    vmm3 = voxel_volume_mm3(grid.affine)
    overlaps: dict[int, list[int]] = {}
    if clusters is not None:
        cl = np.asarray(clusters)
        if cl.shape != grid.shape:
            raise UserError(f"cluster labels have shape {cl.shape} but the atlas grid is {grid.shape}.")
        clf = cl.ravel()
        m = np.flatnonzero(clf)
        m = m[lab[m] != 0]
        if m.size:
            cmax = int(clf[m].max()) + 1
            keys = np.unique(lab[m].astype(np.int64) * cmax + clf[m].astype(np.int64))
            for key in keys:
                overlaps.setdefault(int(key // cmax), []).append(int(key % cmax))
    rows = []
    for v, reg in sorted(grid.atlas.regions.items()):
        if v >= n:
            continue
        if cnt[v] == 0 and not include_empty:
            continue
        s = float(pos[v] + neg[v])
        rows.append(
            {
                "region": reg.name,
                "value": int(v),
                "index": int(reg.index),
                "voxels": int(cnt[v]),
                "volume_mm3": float(cnt[v] * vmm3),
                "pos_sum": float(pos[v]),
                "neg_sum": float(neg[v]),
                "sum": s,
                "mean": s / cnt[v] if cnt[v] else 0.0,
                "pos_share": 100.0 * float(pos[v]) / total_pos if total_pos > 0 else 0.0,
                "clusters": sorted(overlaps.get(int(v), [])),
            }
        )
    if sort_by:
        if sort_by not in RegionTable.COLUMNS:
            raise UserError(f"cannot sort the region table by {sort_by!r}; choose one of {', '.join(RegionTable.COLUMNS)}.")
        reverse = sort_by not in ("region",)
        rows.sort(key=lambda row: (row[sort_by] if not isinstance(row[sort_by], list) else len(row[sort_by])), reverse=reverse)
    return RegionTable(
        rows=rows,
        atlas=grid.atlas.name,
        threshold=grid.threshold,
        total_pos=total_pos,
        total_neg=total_neg,
        inside_pos=float(pos[1:].sum()),
        inside_neg=float(neg[1:].sum()),
        voxel_mm3=vmm3,
    )


# --------------------------------------------------------------------------------------
# cluster anatomy (for the explorer's cluster table)


@dataclass
class ClusterAnatomy:
    """Where one cluster lies: the region at its peak and the regions it overlaps.

    ``overlaps``: (region name, percent of the cluster's voxels), largest
    first; ``outside_percent``: percent of its voxels in no region.
    """

    cluster: int
    peak_voxel: tuple[int, int, int] | None
    peak_region: str
    overlaps: list[tuple[str, float]]
    outside_percent: float

    def overlaps_text(self, min_percent: float = 1.0, max_items: int = 5) -> str:
        """E.g. ``Hippocampus_L 62%; ParaHippocampal_L 30%``."""
        items = [(n, p) for n, p in self.overlaps if p >= min_percent][:max_items]
        return "; ".join(f"{n} {p:.0f}%" for n, p in items)


def cluster_anatomy(
    cluster_labels: np.ndarray,
    grid: AtlasOnGrid,
    peaks: Mapping[int, Sequence[int]] | None = None,
    relevance: np.ndarray | None = None,
) -> dict[int, ClusterAnatomy]:
    """Anatomy of every cluster in a label volume on ``grid``.

    Peaks are given as voxels (``peaks``: cluster id -> (i, j, k)), or found
    as the voxel of largest |relevance| in each cluster, or else left out.
    """
    from scipy import ndimage

    cl = np.asarray(cluster_labels)
    if cl.shape != grid.shape:
        raise UserError(f"cluster labels have shape {cl.shape} but the atlas grid is {grid.shape}.")
    ids = np.unique(cl)
    ids = [int(i) for i in ids if i != 0]
    out: dict[int, ClusterAnatomy] = {}
    if not ids:
        return out
    m = cl != 0
    cvals = cl[m].astype(np.int64)
    lvals = grid.labels[m].astype(np.int64)
    nl = int(lvals.max()) + 1 if lvals.size else 1
    keys, counts = np.unique(cvals * nl + lvals, return_counts=True)
    per: dict[int, list[tuple[int, int]]] = {}
    for k, c in zip(keys, counts):
        per.setdefault(int(k // nl), []).append((int(k % nl), int(c)))
    peak_vox: dict[int, tuple[int, int, int]] = {}
    if peaks:
        peak_vox = {int(k): tuple(int(v) for v in p) for k, p in peaks.items()}  # type: ignore[misc]
    elif relevance is not None:
        rel = np.abs(np.nan_to_num(np.asarray(relevance, dtype=np.float64)))
        if rel.shape != grid.shape:
            raise UserError(f"relevance has shape {rel.shape} but the atlas grid is {grid.shape}.")
        pos = ndimage.maximum_position(rel, labels=cl, index=ids)
        peak_vox = {i: tuple(int(v) for v in p) for i, p in zip(ids, pos)}  # type: ignore[misc]
    for cid in ids:
        items = per.get(cid, [])
        total = sum(c for _, c in items)
        regs = sorted(((grid.atlas.name_of(v), 100.0 * c / total) for v, c in items if v != 0), key=lambda t: -t[1])
        outside = 100.0 * sum(c for v, c in items if v == 0) / total if total else 0.0
        pv = peak_vox.get(cid)
        peak_name = ""
        if pv is not None and all(0 <= a < s for a, s in zip(pv, grid.shape)):
            peak_name = grid.atlas.name_of(grid.value_at_voxel(pv))
        out[cid] = ClusterAnatomy(cid, pv, peak_name, regs, outside)
    return out


_ID_KEYS = ("id", "cluster", "cluster_id", "label")


def _row_get(row: Any, key: str) -> Any:
    if isinstance(row, Mapping):
        return row.get(key)
    return getattr(row, key, None)


def _row_peak_world(row: Any) -> np.ndarray | None:
    keys = list(row.keys()) if isinstance(row, Mapping) else [k for k in dir(row) if not k.startswith("_")]
    for k in keys:
        lk = k.lower()
        if "peak" in lk and any(t in lk for t in ("world", "xyz", "mm", "coord")):
            v = _row_get(row, k)
            try:
                a = np.asarray(v, dtype=float).reshape(-1)
            except (TypeError, ValueError):
                continue
            if a.size == 3 and np.all(np.isfinite(a)):
                return a
    return None


def _table_ids_and_peaks(table: Any, grid: AtlasOnGrid) -> tuple[list[int], dict[int, tuple[int, int, int]], list[dict]]:
    """Cluster ids, peak voxels and row dicts of a cluster table in any supported form."""
    # columnar form: the explorer's postprocess.ClusterTable (arrays id, peak_ijk, peak_mm, ...)
    if hasattr(table, "id") and not isinstance(table, Mapping) and np.ndim(getattr(table, "id")) == 1:
        ids = [int(v) for v in np.asarray(table.id)]
        peaks: dict[int, tuple[int, int, int]] = {}
        if getattr(table, "peak_ijk", None) is not None:
            for cid, p in zip(ids, np.asarray(table.peak_ijk)):
                peaks[cid] = tuple(int(v) for v in p)  # type: ignore[assignment]
        elif getattr(table, "peak_mm", None) is not None:
            for cid, p in zip(ids, np.asarray(table.peak_mm)):
                ijk = grid.voxel_of(p)
                if ijk is not None:
                    peaks[cid] = ijk
        rows = []
        for cid in ids:
            r = table.row(cid) if hasattr(table, "row") else None
            rows.append(dict(r) if r else {"id": cid})
        return ids, peaks, rows
    # row form: a sequence of mappings or objects
    ids, peaks, rows = [], {}, []
    for row in table:
        cid = None
        for k in _ID_KEYS:
            v = _row_get(row, k)
            if v is not None:
                cid = int(v)
                break
        if cid is None:
            raise UserError("cluster table rows need an 'id' column to be annotated with atlas regions.")
        ids.append(cid)
        ijk_given = _row_get(row, "peak_ijk")
        if ijk_given is not None and np.size(ijk_given) == 3:
            peaks[cid] = tuple(int(v) for v in np.asarray(ijk_given).reshape(3))
        else:
            pw = _row_peak_world(row)
            if pw is not None:
                ijk = grid.voxel_of(pw)
                if ijk is not None:
                    peaks[cid] = ijk
        if isinstance(row, Mapping):
            rows.append(dict(row))
        else:
            rows.append({k: getattr(row, k) for k in dir(row) if not k.startswith("_") and not callable(getattr(row, k))})
    return ids, peaks, rows


def annotate_clusters(
    table: Any,
    cluster_labels: np.ndarray,
    grid: AtlasOnGrid,
    relevance: np.ndarray | None = None,
    min_percent: float = 1.0,
) -> list[dict]:
    """Cluster table rows plus anatomy: ``peak_region`` and ``regions`` per cluster.

    Parameters
    ----------
    table
        The explorer's cluster table: a ``postprocess.ClusterTable`` (columns
        ``id`` and ``peak_ijk``), or a sequence of mappings/objects with an id
        (``id``/``cluster``/``label``) and a peak as ``peak_ijk`` (voxels) or a
        world coordinate in mm (a key containing "peak" and "mm"/"world"/"xyz").
        Without any peak the peak is the voxel of largest |relevance| (when
        ``relevance`` is given).
    cluster_labels
        The cluster label volume on ``grid`` (id = label value).
    grid
        The atlas on the same grid (:func:`atlas_on_grid`).
    min_percent
        Overlaps below this share of the cluster's voxels are left out of the text.

    Returns
    -------
    list of dict
        One dict per row, in table order: the row's own fields plus
        ``peak_region`` (name at the peak voxel, "" outside every region),
        ``regions`` (e.g. "Hippocampus_L 62%; ParaHippocampal_L 30%": share of
        the cluster's voxels) and ``region_overlaps`` (list of (name, percent)).
    """
    ids, peaks, rows = _table_ids_and_peaks(table, grid)
    anat = cluster_anatomy(cluster_labels, grid, peaks=None, relevance=relevance)
    for cid, p in peaks.items():
        if cid in anat and all(0 <= a < s for a, s in zip(p, grid.shape)):
            a = anat[cid]
            anat[cid] = ClusterAnatomy(cid, p, grid.atlas.name_of(grid.value_at_voxel(p)), a.overlaps, a.outside_percent)
    out = []
    for d, cid in zip(rows, ids):
        a = anat.get(cid)
        d["peak_region"] = a.peak_region if a else ""
        d["regions"] = a.overlaps_text(min_percent) if a else ""
        d["region_overlaps"] = list(a.overlaps) if a else []
        out.append(d)
    return out


def cluster_region_columns(table: Any, cluster_labels: np.ndarray, grid: AtlasOnGrid, min_percent: float = 1.0) -> dict[str, list[str]]:
    """Two extra columns for a cluster table, in its row order: ``peak_region`` and ``regions``.

    The simplest way for a cluster-table view to gain atlas columns::

        cols = cluster_region_columns(result.table, result.labels, grid)
        cols["peak_region"][row], cols["regions"][row]
    """
    rows = annotate_clusters(table, cluster_labels, grid, min_percent=min_percent)
    return {"peak_region": [r["peak_region"] for r in rows], "regions": [r["regions"] for r in rows]}


def warn_if_not_mni(shape: Sequence[int], affine: np.ndarray) -> str | None:
    """:func:`check_mni_space`, also issued as an :class:`XaiWarning`."""
    msg = check_mni_space(shape, affine)
    if msg:
        warnings.warn(msg, XaiWarning, stacklevel=2)
    return msg
