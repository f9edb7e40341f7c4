"""Steps 5-6: threshold and connected components (run-length labelling), then the minimum cluster size."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..geometry import profile_box
from ..lazy import lazy_import
from .filters import max_profiles
from .params import MAX_LABEL

ndimage = lazy_import("scipy.ndimage")  # loaded on first use: the CLI parser imports this (docs/performance.md)


def structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 neighbourhood for 6 (faces), 18 (+edges) or 26 (+corners) connectivity."""
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise UserError(f"connectivity must be 6, 18 or 26, got {connectivity!r}.")
    return ndimage.generate_binary_structure(3, rank)


# forward line offsets (di, dj) and the k-widening e for each connectivity
_LINE_OFFSETS = {
    6: (((1, 0), 0), ((0, 1), 0)),
    18: (((1, 0), 1), ((0, 1), 1), ((1, 1), 0), ((1, -1), 0)),
    26: (((1, 0), 1), ((0, 1), 1), ((1, 1), 1), ((1, -1), 1)),
}


@dataclass
class Labelling:
    """All connected components at one threshold, in the stable size order.

    Cluster ``r`` (1-based rank) has ``sizes[r-1]`` voxels and sign ``signs[r-1]``
    (+1 positive, -1 negative). Voxels are stored as runs along the last axis:
    run ``q`` covers the flat (C-order) indices ``run_start[q] : run_start[q] + run_len[q]``
    of the whole volume and belongs to cluster ``run_rank[q]``; runs are in raster order.
    """

    shape: tuple[int, int, int]
    box: tuple[slice, ...]  # bounding box of all runs
    run_start: np.ndarray  # int64 flat index into the volume
    run_len: np.ndarray  # int64
    run_rank: np.ndarray  # int64, 1..n
    sizes: np.ndarray  # int64, descending
    signs: np.ndarray  # int8, +1 / -1
    threshold: float
    connectivity: int
    _by_rank: tuple | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return int(self.sizes.size)

    @property
    def n_voxels(self) -> int:
        return int(self.run_len.sum())

    def n_kept(self, min_voxels: float) -> int:
        """How many clusters have at least ``min_voxels`` voxels (they are ranks 1..K)."""
        if not self.n:
            return 0
        # sizes are descending; a tiny tolerance absorbs mm³ -> voxel rounding
        return int(np.searchsorted(-self.sizes, -float(min_voxels) + 1e-9, side="right"))

    def runs_of_ranks(self, lo: int, hi: int) -> np.ndarray:
        """Indices of the runs of clusters with rank in (lo, hi]."""
        if self._by_rank is None:
            order = np.argsort(self.run_rank, kind="stable")
            ptr = np.zeros(self.n + 1, np.int64)
            np.cumsum(np.bincount(self.run_rank - 1, minlength=self.n), out=ptr[1:])
            self._by_rank = (order, ptr)
        order, ptr = self._by_rank
        return order[ptr[lo] : ptr[hi]]

    def voxel_index(self, runs: np.ndarray | None = None) -> np.ndarray:
        """Flat volume indices of all voxels of the given runs (default: all runs), run by run."""
        start = self.run_start if runs is None else self.run_start[runs]
        ln = self.run_len if runs is None else self.run_len[runs]
        total = int(ln.sum())
        if total == 0:
            return np.zeros(0, np.int64)
        return np.repeat(start - (np.cumsum(ln) - ln), ln) + np.arange(total)


def _empty_labelling(shape, threshold, connectivity) -> Labelling:
    z = np.zeros(0, np.int64)
    return Labelling(tuple(shape), tuple(slice(0, 0) for _ in range(3)), z, z, z, z, np.zeros(0, np.int8),
                     float(threshold), int(connectivity))


def _runs(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal non-zero values along the last axis of an int8 volume.

    Returns (start, length, value, segment starts, segment index of each run); starts
    are flat C-order indices. Segments are all maximal stretches of equal values
    (including zeros) inside one line; they partition the volume.
    """
    k = cls.shape[-1]
    x = cls.reshape(-1)
    change = x[1:] != x[:-1]
    change[k - 1 :: k] = True  # every line starts a new segment
    seg_starts = np.concatenate(([0], np.flatnonzero(change) + 1))
    seg_ends = np.concatenate((seg_starts[1:], [x.size]))
    value = x[seg_starts]
    keep = np.flatnonzero(value)
    start = seg_starts[keep]
    return start, seg_ends[keep] - start, value[keep], seg_starts, keep


def _run_components(start, length, value, seg_starts, run_seg, shape, connectivity) -> tuple[int, np.ndarray]:
    """Connected components of runs (same value, touching on neighbouring lines).

    For run a and a neighbouring line, the runs it touches are the non-zero
    segments between the segment holding a's (widened) first voxel and the one
    holding its last voxel on that line; one lookup each in a segment-index volume.
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    ni, nj, nk = shape
    r = start.size
    nseg = seg_starts.size
    seg_len = np.diff(np.append(seg_starts, ni * nj * nk))
    seg_of = np.repeat(np.arange(nseg, dtype=np.int32), seg_len)  # voxel -> segment
    runs_before = np.zeros(nseg + 1, np.int64)  # number of runs among segments [0, s)
    runs_before[run_seg + 1] = 1
    np.cumsum(runs_before, out=runs_before)
    line = start // nk
    k0 = start - line * nk
    k1 = k0 + length  # exclusive
    li = line // nj
    lj = line - li * nj
    src, dst = [], []
    for (di, dj), e in _LINE_OFFSETS[int(connectivity)]:
        ok = (li + di < ni) & (lj + dj >= 0) & (lj + dj < nj)
        a = np.flatnonzero(ok)
        if a.size == 0:
            continue
        base = (line[a] + (di * nj + dj)) * nk
        s_lo = seg_of[base + np.maximum(k0[a] - e, 0)]
        s_hi = seg_of[base + np.minimum(k1[a] - 1 + e, nk - 1)]
        lo = runs_before[s_lo]
        hi = runs_before[s_hi + 1]
        c = hi - lo
        m = c > 0
        if not m.any():
            continue
        a, lo, c = a[m], lo[m], c[m]
        tot = int(c.sum())
        aa = np.repeat(a, c)
        bb = np.repeat(lo - (np.cumsum(c) - c), c) + np.arange(tot)
        same = value[aa] == value[bb]
        src.append(aa[same])
        dst.append(bb[same])
    if src:
        s = np.concatenate(src)
        d = np.concatenate(dst)
    else:
        s = d = np.zeros(0, np.int64)
    # build the CSR arrays directly (each offset's sources are sorted: the stable sort is a cheap merge)
    order = np.argsort(s, kind="stable")
    itype = np.int32 if max(r, s.size) < 2**31 - 1 else np.int64
    indptr = np.zeros(r + 1, dtype=itype)
    np.cumsum(np.bincount(s, minlength=r), out=indptr[1:])
    graph = csr_matrix((np.ones(s.size, np.int8), d[order].astype(itype), indptr), shape=(r, r))
    n, comp = connected_components(graph, directed=True, connection="weak")
    return int(n), comp


def label_clusters(
    data: np.ndarray, threshold: float, connectivity: int = 18, profiles: list[np.ndarray] | None = None
) -> Labelling:
    """Connected components of r > t (positive) and of r < -t (negative), labelled separately.

    Works on the bounding box of the voxels with |r| > t (found from the per-slice
    maxima ``profiles`` of :func:`max_profiles`, computed here if not given). The
    result equals labelling each sign with :func:`scipy.ndimage.label` and the
    :func:`structure` of ``connectivity``, ordered by size (see the module doc).
    """
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 3:
        raise UserError(f"clusters need a 3D map, got shape {arr.shape}.")
    t = float(threshold)
    structure(connectivity)  # validates
    if profiles is None:
        profiles = max_profiles(arr)
    box = profile_box(profiles, t)
    if box is None:
        return _empty_labelling(arr.shape, t, connectivity)
    crop = arr[box]
    cls = (crop > t).view(np.int8) - (crop < -t).view(np.int8)  # +1 / -1 / 0
    start, length, value, seg_starts, run_seg = _runs(cls)
    if start.size == 0:
        return _empty_labelling(arr.shape, t, connectivity)
    n, comp = _run_components(start, length, value, seg_starts, run_seg, cls.shape, connectivity)
    sizes = np.bincount(comp, weights=length, minlength=n).astype(np.int64)
    first = np.full(n, start.size, np.int64)
    np.minimum.at(first, comp, np.arange(start.size))  # first run = first voxel in raster order
    signs = value[first].astype(np.int8)
    order = np.lexsort((first, -signs, -sizes))
    rank_of = np.empty(n, np.int64)
    rank_of[order] = np.arange(1, n + 1)
    # crop flat index -> volume flat index
    bj, bk = cls.shape[1], cls.shape[2]
    line = start // bk
    kk = start - line * bk + box[2].start
    ii = line // bj + box[0].start
    jj = line - (line // bj) * bj + box[1].start
    vol_start = (ii * arr.shape[1] + jj) * arr.shape[2] + kk
    return Labelling(
        shape=tuple(arr.shape), box=box, run_start=vol_start, run_len=length, run_rank=rank_of[comp],
        sizes=sizes[order], signs=signs[order], threshold=t, connectivity=int(connectivity),
    )


def too_many_clusters_message(k: int) -> str:
    return (
        f"{k:,} clusters remain, more than the {MAX_LABEL:,} a uint16 label volume holds; "
        "raise the threshold or the minimum cluster size."
    )


def size_step(labelling: Labelling, k_prev: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What a cluster-size step changes: flat (whole-volume) indices of the voxels whose label changes when the
    kept clusters go from ranks ``1..k_prev`` to ``1..k``, and their new uint16 labels (0 = dropped)."""
    if k < k_prev:
        idx = labelling.voxel_index(labelling.runs_of_ranks(k, k_prev))
        return idx, np.zeros(idx.size, np.uint16)
    if k > k_prev:
        runs = labelling.runs_of_ranks(k_prev, k)
        return labelling.voxel_index(runs), np.repeat(labelling.run_rank[runs].astype(np.uint16),
                                                      labelling.run_len[runs])
    return np.zeros(0, np.int64), np.zeros(0, np.uint16)


def index_in_box(flat: np.ndarray, shape: tuple, box: tuple[slice, ...]) -> np.ndarray:
    """Flat indices of a volume of ``shape`` as flat indices of its sub-volume ``box`` (all must lie inside)."""
    ijk = np.unravel_index(flat, shape)
    return np.ravel_multi_index(tuple(c - b.start for c, b in zip(ijk, box)), tuple(b.stop - b.start for b in box))


def keep_min_size(labelling: Labelling, min_voxels: float, previous: tuple[np.ndarray, int] | None = None) -> np.ndarray:
    """The uint16 label volume of the clusters with at least ``min_voxels`` voxels.

    The kept clusters are ranks ``1..K`` (largest first). Raises :class:`UserError`
    when K > 65,535 (labels would not fit uint16; they are never wrapped).

    ``previous`` = (labels, K_prev) from the same labelling makes this an update:
    the previous volume is copied and only the clusters between K_prev and K are
    painted or erased (what a cluster-size slider step needs).
    """
    k = labelling.n_kept(min_voxels)
    if k > MAX_LABEL:
        raise UserError(too_many_clusters_message(k))
    if previous is not None:
        prev, k_prev = previous
        out = prev.copy()
        idx, values = size_step(labelling, k_prev, k)
        out.reshape(-1)[idx] = values
        return out
    out = np.zeros(labelling.shape, dtype=np.uint16)
    if k == 0:
        return out
    sel = np.flatnonzero(labelling.run_rank <= k)
    out.reshape(-1)[labelling.voxel_index(sel)] = np.repeat(
        labelling.run_rank[sel].astype(np.uint16), labelling.run_len[sel]
    )
    return out
