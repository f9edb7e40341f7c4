"""Cluster tables (voxels, mm3, peak, sign), the size histogram and the masked map of kept clusters."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields

import numpy as np

from .. import geometry
from .clusters import Labelling

TABLE_COLUMNS = (
    "id", "sign", "voxels", "mm3", "sum", "mean", "peak",
    "peak_x_mm", "peak_y_mm", "peak_z_mm", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
)


SIGN_NAMES = {1: "positive", -1: "negative", 0: "absolute"}


@dataclass
class ClusterTable:
    """One row per cluster (id = label value), in label order (largest first).

    ``peak`` is the value of the voxel with the largest |r| (first in raster order
    on ties); coordinates are world mm through the affine; the centroid is the
    unweighted mean voxel position.
    """

    id: np.ndarray
    sign: np.ndarray  # int8: +1, -1, or 0 for "absolute" maps
    voxels: np.ndarray
    mm3: np.ndarray
    sum: np.ndarray
    mean: np.ndarray
    peak: np.ndarray
    peak_mm: np.ndarray  # (n, 3)
    peak_ijk: np.ndarray  # (n, 3) voxel indices
    centroid_mm: np.ndarray  # (n, 3)

    def __len__(self) -> int:
        return int(self.id.size)

    def head(self, k: int) -> "ClusterTable":
        """The first ``k`` rows (the clusters kept at a minimum size are a prefix)."""
        return ClusterTable(*(getattr(self, f.name)[:k] for f in fields(self)))

    def row(self, label: int) -> dict | None:
        """The row of cluster ``label`` as a dict, or None."""
        i = int(label) - 1
        if i < 0 or i >= len(self) or int(self.id[i]) != int(label):
            return None
        return {
            "id": int(self.id[i]),
            "sign": SIGN_NAMES[int(self.sign[i])],
            "voxels": int(self.voxels[i]),
            "mm3": float(self.mm3[i]),
            "sum": float(self.sum[i]),
            "mean": float(self.mean[i]),
            "peak": float(self.peak[i]),
            "peak_mm": tuple(float(v) for v in self.peak_mm[i]),
            "peak_ijk": tuple(int(v) for v in self.peak_ijk[i]),
            "centroid_mm": tuple(float(v) for v in self.centroid_mm[i]),
        }

    def rows(self) -> list[list]:
        out = []
        for i in range(len(self)):
            out.append(
                [int(self.id[i]), SIGN_NAMES[int(self.sign[i])], int(self.voxels[i]), float(self.mm3[i]),
                 float(self.sum[i]), float(self.mean[i]), float(self.peak[i]),
                 *(float(v) for v in self.peak_mm[i]), *(float(v) for v in self.centroid_mm[i])]
            )
        return out

    def to_csv(self) -> str:
        """The table as CSV text with a header row (``TABLE_COLUMNS``)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(TABLE_COLUMNS)
        for r in self.rows():
            w.writerow([v if isinstance(v, (int, str)) else repr(float(v)) for v in r])
        return buf.getvalue()


def empty_table() -> ClusterTable:
    z = np.zeros(0)
    return ClusterTable(z.astype(np.int64), z.astype(np.int8), z.astype(np.int64), z, z, z, z, np.zeros((0, 3)),
                        np.zeros((0, 3), np.int64), np.zeros((0, 3)))


def cluster_table(labelling: Labelling, data: np.ndarray, affine: np.ndarray, absolute: bool = False) -> ClusterTable:
    """Statistics of every cluster of ``labelling`` (all ranks, in label order) on the map ``data``.

    Sums are accumulated in float64. ``absolute=True`` marks the rows as clusters of |r|.
    """
    n = labelling.n
    if n == 0:
        return empty_table()
    lab = labelling
    flat = np.asarray(data, dtype=np.float32).reshape(-1)
    ln = lab.run_len
    rank0 = lab.run_rank - 1
    idx = lab.voxel_index()  # voxels run by run
    vals = flat[idx]
    absv = np.abs(vals)
    offs = np.cumsum(ln) - ln
    run_sum = np.add.reduceat(vals, offs, dtype=np.float64)
    run_abs = np.maximum.reduceat(absv, offs).astype(np.float64)
    sums = np.bincount(rank0, weights=run_sum, minlength=n)
    # centroid: sum of voxel coordinates per run, in closed form
    nj, nk = lab.shape[1], lab.shape[2]
    line = lab.run_start // nk
    k0 = lab.run_start - line * nk
    ii = line // nj
    jj = line - ii * nj
    csum = np.stack(
        [np.bincount(rank0, weights=(ln * ii).astype(np.float64), minlength=n),
         np.bincount(rank0, weights=(ln * jj).astype(np.float64), minlength=n),
         np.bincount(rank0, weights=(ln * (2 * k0 + ln - 1)).astype(np.float64) / 2.0, minlength=n)],
        axis=1,
    )
    cen = csum / lab.sizes[:, None]
    # peak: the run holding the largest |r| (first in raster order), then the voxel inside it
    cmax = np.zeros(n)
    np.maximum.at(cmax, rank0, run_abs)
    best = np.flatnonzero(run_abs == cmax[rank0])
    best_run = np.full(n, lab.run_start.size, np.int64)
    np.minimum.at(best_run, rank0[best], best)
    bl = ln[best_run]
    pos = np.repeat(offs[best_run] - (np.cumsum(bl) - bl), bl) + np.arange(int(bl.sum()))  # into vals
    hit = np.flatnonzero(absv[pos].astype(np.float64) == np.repeat(cmax, bl))
    seg = np.repeat(np.arange(n), bl)[hit]
    peak_pos = pos[hit[np.r_[True, seg[1:] != seg[:-1]]]]
    peak_ijk = np.stack(np.unravel_index(idx[peak_pos], lab.shape), axis=1)
    vv = geometry.voxel_volume_mm3(affine)
    return ClusterTable(
        id=np.arange(1, n + 1, dtype=np.int64),
        sign=np.zeros(n, np.int8) if absolute else lab.signs.copy(),
        voxels=lab.sizes.copy(),
        mm3=lab.sizes * vv,
        sum=sums,
        mean=sums / lab.sizes,
        peak=vals[peak_pos].astype(np.float64),
        peak_mm=geometry.vox_to_world(affine, peak_ijk),
        peak_ijk=peak_ijk,
        centroid_mm=geometry.vox_to_world(affine, cen),
    )


@dataclass
class SizeHistogram:
    """Histogram of cluster sizes (all clusters at the threshold) on log-spaced bins."""

    counts: np.ndarray
    edges_voxels: np.ndarray
    edges_mm3: np.ndarray


def size_histogram(sizes_voxels: np.ndarray, voxel_mm3: float, n_bins: int = 30) -> SizeHistogram:
    """Counts of cluster sizes in ``n_bins`` log-spaced bins from 1 voxel to the largest cluster."""
    sizes = np.asarray(sizes_voxels, dtype=float)
    top = max(float(sizes.max()) if sizes.size else 1.0, 1.0)
    edges = np.unique(np.geomspace(1.0, top * 1.0001 + 1e-9, n_bins + 1)) if top > 1 else np.array([1.0, 2.0])
    counts, _ = np.histogram(sizes, bins=edges)
    return SizeHistogram(counts=counts, edges_voxels=edges, edges_mm3=edges * voxel_mm3)


def masked_to_clusters(data: np.ndarray, labels: np.ndarray, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """The map with every voxel outside the kept clusters set to 0.

    ``box`` (optional) bounds all labelled voxels, to save time.
    """
    data = np.asarray(data, dtype=np.float32)
    if box is None:
        return np.where(labels > 0, data, np.float32(0))
    out = np.zeros(data.shape, np.float32)
    out[box] = np.where(labels[box] > 0, data[box], np.float32(0))
    return out
