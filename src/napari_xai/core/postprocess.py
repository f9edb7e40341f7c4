"""The relevance post-processing chain: smooth, scale, filter, sign, threshold, clusters.

Every step is a pure function over numpy arrays; :class:`napari_xai.core.explorer.Explorer`
chains them with caching for live sliders, and the ``napari-xai clusters`` command
runs the same chain once. The steps, in order:

1. :func:`smooth` -- Gaussian smoothing with σ in **mm** (voxel sizes from the affine).
2. :func:`scale_map` -- none, ÷ max|r|, ÷ a percentile of |r|, or ÷ a fixed value;
   optionally clipped to [-1, 1].
3. :func:`fraction_filter` -- fraction-pass / fraction-clamp filters on the map
   normalised by max|r| (Chen et al., the stroke seed paper, §2).
4. :func:`select_sign` -- positive, negative, both, or absolute relevance.
5. :func:`label_clusters` -- threshold ``|r| > t`` and connected components with
   6-, 18- or 26-connectivity; positive and negative clusters are labelled separately.
6. :func:`keep_min_size` -- drop clusters smaller than a size in voxels or mm³;
   the result is a uint16 label volume.

Cluster order is stable: label 1 is the largest cluster; ties go to positive
before negative clusters, then to the cluster whose first voxel comes first in
C (raster) order. Because of this order, the clusters kept at a minimum size
are always labels ``1..K``, and moving the size slider never renumbers a cluster.

Non-finite relevance (NaN/Inf) is treated as 0 with a warning, see :func:`sanitize`.
Relevance is always kept as float; negative relevance is never cast away.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
from scipy import ndimage

from . import geometry
from .errors import UserError, XaiWarning

SCALES = ("none", "max", "percentile", "fixed")
FILTERS = ("none", "pass", "clamp")
SIGNS = ("both", "positive", "negative", "absolute")
CONNECTIVITIES = (6, 18, 26)
SIZE_UNITS = ("voxels", "mm3")
MAX_LABEL = int(np.iinfo(np.uint16).max)  # 65,535 clusters fit a uint16 label volume
GAUSS_TRUNCATE = 4.0  # kernel radius in σ
FRACTION_TOL = 1e-6  # tolerance of the fraction filters' bounds (float32 rounding)


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PostParams:
    """All post-processing parameters; one record reproduces a result.

    Attributes
    ----------
    sigma_mm : float
        Gaussian smoothing σ in mm (0 = no smoothing).
    scale : {"none", "max", "percentile", "fixed"}
        Divide the map by nothing, by max|r|, by the ``percentile``-th percentile of
        |r| over the non-zero voxels, or by the fixed ``scale_value`` (use the same
        value for every subject to compare them).
    percentile : float
        Percentile for ``scale="percentile"`` (the Alzheimer's seed uses 99.99).
    scale_value : float
        Divisor for ``scale="fixed"``, in the relevance's own units.
    clip : bool
        Clip the scaled map to [-1, 1].
    filter : {"none", "pass", "clamp"}
        Fraction-pass or fraction-clamp filter on the map normalised by max|r|.
    alpha : tuple of float
        The filter's range [α1, α2], fractions of max|r| in [0, 1].
    sign : {"both", "positive", "negative", "absolute"}
        Which relevance to keep. "absolute" uses |r|, so its clusters may join
        positive and negative voxels.
    threshold : float
        Keep voxels with |r| > threshold (in the units of the scaled map; ≥ 0).
    min_size : float
        Drop clusters smaller than this, in ``size_unit``.
    size_unit : {"voxels", "mm3"}
        Unit of ``min_size``.
    connectivity : {6, 18, 26}
        Voxel neighbourhood of a cluster (faces; faces+edges; faces+edges+corners).
    """

    sigma_mm: float = 0.0
    scale: str = "max"
    percentile: float = 99.99
    scale_value: float = 1.0
    clip: bool = False
    filter: str = "none"
    alpha: tuple[float, float] = (0.0, 1.0)
    sign: str = "both"
    threshold: float = 0.5
    min_size: float = 0.0
    size_unit: str = "voxels"
    connectivity: int = 18

    def validated(self) -> "PostParams":
        """Return a normalised copy, or raise :class:`UserError` with one actionable line."""

        def num(name: str, value: Any) -> float:
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise UserError(f"{name} must be a number, got {value!r}.") from None
            if not math.isfinite(v):
                raise UserError(f"{name} must be a finite number, got {value!r}.")
            return v

        sigma = num("sigma (mm)", self.sigma_mm)
        if sigma < 0:
            raise UserError(f"smoothing sigma must be >= 0 mm (0 = no smoothing), got {sigma:g}.")
        scale = str(self.scale).lower()
        if scale not in SCALES:
            raise UserError(f"scale must be one of {', '.join(SCALES)}; got {self.scale!r}.")
        pct = num("percentile", self.percentile)
        if not 0 < pct <= 100:
            raise UserError(f"percentile must be in (0, 100], got {pct:g}.")
        value = num("scale value", self.scale_value)
        if scale == "fixed" and value <= 0:
            raise UserError(f"the fixed scale value must be > 0, got {value:g}.")
        filt = str(self.filter).lower()
        if filt not in FILTERS:
            raise UserError(f"filter must be one of {', '.join(FILTERS)}; got {self.filter!r}.")
        try:
            a1, a2 = (num("alpha", a) for a in self.alpha)
        except (TypeError, ValueError):
            raise UserError(f"alpha must be two numbers [a1, a2], got {self.alpha!r}.") from None
        if not (0.0 <= a1 <= a2 <= 1.0):
            raise UserError(f"alpha range must satisfy 0 <= a1 <= a2 <= 1 (fractions of max|r|), got [{a1:g}, {a2:g}].")
        sign = str(self.sign).lower()
        if sign not in SIGNS:
            raise UserError(f"sign must be one of {', '.join(SIGNS)}; got {self.sign!r}.")
        thr = num("threshold", self.threshold)
        if thr < 0:
            raise UserError(f"threshold is a magnitude and must be >= 0 (got {thr:g}); choose negative clusters with sign=negative.")
        ms = num("min size", self.min_size)
        if ms < 0:
            raise UserError(f"minimum cluster size must be >= 0, got {ms:g}.")
        unit = str(self.size_unit).lower().replace("³", "3")
        if unit not in SIZE_UNITS:
            raise UserError(f"size unit must be 'voxels' or 'mm3', got {self.size_unit!r}.")
        try:
            conn = int(self.connectivity)
        except (TypeError, ValueError):
            conn = -1
        if conn not in CONNECTIVITIES or float(self.connectivity) != conn:
            raise UserError(f"connectivity must be 6, 18 or 26, got {self.connectivity!r}.")
        return PostParams(sigma, scale, pct, value, bool(self.clip), filt, (a1, a2), sign, thr, ms, unit, conn)

    def replace(self, **changes: Any) -> "PostParams":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise UserError(f"unknown post-processing parameter(s): {', '.join(sorted(unknown))}.")
        d = asdict(self)
        d.update(changes)
        d["alpha"] = tuple(d["alpha"])
        return PostParams(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["alpha"] = [float(a) for a in self.alpha]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PostParams":
        """Parameters from a dict (e.g. a sidecar's ``"postprocess"``); unknown keys are an error."""
        if not isinstance(d, dict):
            raise UserError("post-processing parameters must be a JSON object.")
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown post-processing parameter(s): {', '.join(sorted(unknown))}.")
        kw = dict(d)
        if "alpha" in kw:
            kw["alpha"] = tuple(kw["alpha"])
        return cls(**kw).validated()


def voxel_mm3(affine: np.ndarray) -> float:
    """Volume of one voxel in mm³, rounded to 12 significant digits (2 mm voxels give 8.0, not 7.999999999999998)."""
    v = geometry.voxel_volume_mm3(affine)
    return float(f"{v:.12g}")


def min_size_voxels(min_size: float, unit: str, affine: np.ndarray) -> float:
    """Minimum cluster size in voxels (may be fractional) from a size in ``unit``."""
    if unit == "mm3":
        return float(min_size) / voxel_mm3(affine)
    return float(min_size)


# ---------------------------------------------------------------------------
# the chain's steps
# ---------------------------------------------------------------------------


def sanitize(relevance: np.ndarray, name: str = "relevance") -> tuple[np.ndarray, list[str]]:
    """A float32 3D copy with NaN/Inf set to 0, and the messages saying so.

    Non-finite voxels are treated as "no relevance" and reported (with an
    :class:`XaiWarning`) rather than refused, so one bad voxel from an unstable
    method does not block the whole map.
    """
    arr = np.asarray(relevance)
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise UserError(f"{name} must be a 3D volume, got shape {arr.shape}; pick one channel.")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise UserError(f"{name} has data type {arr.dtype}; a real-valued volume is needed.")
    out = np.array(arr, dtype=np.float32, copy=True)
    messages: list[str] = []
    bad = ~np.isfinite(out)
    nbad = int(np.count_nonzero(bad))
    if nbad:
        out[bad] = 0.0
        msg = f"{name} has {nbad} NaN/Inf voxels; they are treated as 0 (no relevance)."
        messages.append(msg)
        warnings.warn(msg, XaiWarning, stacklevel=2)
    return out, messages


def support_box(data: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Bounding box (slices) of the non-zero voxels, grown by ``margin`` voxels; None if all zero."""
    nz = data != 0
    box = []
    for ax in range(data.ndim):
        other = tuple(a for a in range(data.ndim) if a != ax)
        idx = np.flatnonzero(nz.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(max(0, idx[0] - margin), min(data.shape[ax], idx[-1] + 1 + margin)))
    return tuple(box)


def smooth(data: np.ndarray, affine: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian smoothing with σ in mm; the voxel sizes come from ``affine``.

    Outside the volume the relevance counts as 0 (``mode="constant"``); the kernel
    is truncated at 4σ and normalised (the total is kept away from the border).
    Only the bounding box of the non-zero voxels plus the kernel radius is
    filtered; the result equals filtering the whole volume.
    σ = 0 returns a float32 copy.
    """
    if sigma_mm < 0:
        raise UserError(f"smoothing sigma must be >= 0 mm (0 = no smoothing), got {sigma_mm:g}.")
    arr = np.asarray(data, dtype=np.float32)
    if sigma_mm == 0:
        return arr.copy()
    sig_vox = float(sigma_mm) / geometry.voxel_sizes(affine)
    radius = int(max(GAUSS_TRUNCATE * s + 0.5 for s in sig_vox))
    out = np.zeros_like(arr)
    box = support_box(arr, margin=radius + 1)
    if box is None:
        return out
    out[box] = ndimage.gaussian_filter(arr[box], sigma=sig_vox, mode="constant", cval=0.0, truncate=GAUSS_TRUNCATE)
    return out


def scale_map(
    data: np.ndarray, mode: str = "max", percentile: float = 99.99, value: float = 1.0, clip: bool = False
) -> tuple[np.ndarray, float, list[str]]:
    """Divide the map by a scale; return (scaled map, divisor, messages).

    ``mode``: "none" (divisor 1), "max" (max|r|), "percentile" (the given
    percentile of |r| over the non-zero voxels) or "fixed" (``value``). A zero
    divisor (all-zero map) leaves the map unchanged and says so. ``clip`` then
    limits the result to [-1, 1].
    """
    arr = np.asarray(data, dtype=np.float32)
    messages: list[str] = []
    if mode == "none":
        divisor = 1.0
    elif mode == "max":
        divisor = float(np.abs(arr).max()) if arr.size else 0.0
    elif mode == "percentile":
        nz = np.abs(arr[arr != 0])
        divisor = float(np.percentile(nz, percentile)) if nz.size else 0.0
    elif mode == "fixed":
        if value <= 0:
            raise UserError(f"the fixed scale value must be > 0, got {value:g}.")
        divisor = float(value)
    else:
        raise UserError(f"scale must be one of {', '.join(SCALES)}; got {mode!r}.")
    if divisor == 0:
        messages.append("the map is all zeros, so it is not scaled.")
        divisor = 1.0
    out = arr / np.float32(divisor) if divisor != 1.0 else arr.copy()
    if clip:
        np.clip(out, -1.0, 1.0, out=out)
    return out, divisor, messages


def fraction_filter(data: np.ndarray, kind: str = "none", alpha: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Fraction-pass / fraction-clamp filter on the map normalised by N = max|r|.

    With f = r / N (so |f| <= 1) and the range [α1, α2]:

    * pass:  r where α1 <= |f| <= α2, else 0 (the seed's P_[α1,α2]);
    * clamp: 0 where |f| < α1, sign(r)·α2·N where |f| > α2, else r. With α1 = 0
      this is the seed's clamp C_α2; zeroing below α1 is our extension, matching
      the pass filter's lower bound.

    The result is scaled back by N (the seed's N × P_α[f]), so it keeps the map's units.
    Bounds are inclusive with a tolerance of 1e-6 (float32 rounding of α·N).
    """
    arr = np.asarray(data, dtype=np.float32)
    if kind == "none":
        return arr.copy()
    if kind not in FILTERS:
        raise UserError(f"filter must be one of {', '.join(FILTERS)}; got {kind!r}.")
    a1, a2 = float(alpha[0]), float(alpha[1])
    if not (0.0 <= a1 <= a2 <= 1.0):
        raise UserError(f"alpha range must satisfy 0 <= a1 <= a2 <= 1, got [{a1:g}, {a2:g}].")
    n = float(np.abs(arr).max()) if arr.size else 0.0
    if n == 0:
        return arr.copy()
    f = np.abs(arr).astype(np.float64) / n
    lo, hi = a1 - FRACTION_TOL, a2 + FRACTION_TOL  # float32 maps: a value at exactly α·N stays in range
    if kind == "pass":
        return np.where((f >= lo) & (f <= hi), arr, np.float32(0)).astype(np.float32)
    clamped = np.where(f > hi, np.sign(arr) * np.float32(a2 * n), arr)
    return np.where(f < lo, np.float32(0), clamped).astype(np.float32)


def select_sign(data: np.ndarray, sign: str = "both") -> np.ndarray:
    """Keep positive (r > 0), negative (r < 0), both, or the absolute value |r|."""
    arr = np.asarray(data, dtype=np.float32)
    if sign == "both":
        return arr
    if sign == "positive":
        return np.maximum(arr, np.float32(0))
    if sign == "negative":
        return np.minimum(arr, np.float32(0))
    if sign == "absolute":
        return np.abs(arr)
    raise UserError(f"sign must be one of {', '.join(SIGNS)}; got {sign!r}.")


def _boxed(data: np.ndarray, box: tuple[slice, ...] | None) -> tuple[np.ndarray, tuple[slice, ...]]:
    if box is None:
        box = tuple(slice(0, n) for n in data.shape)
    return np.asarray(data, dtype=np.float32)[box], box


def slice_profiles(data: np.ndarray, box: tuple[slice, ...] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-slice sums of positive and of negative relevance along each array axis.

    Returns ``[(pos_0, neg_0), (pos_1, neg_1), (pos_2, neg_2)]``; ``pos_a[s]`` is the
    sum of r > 0 in slice s of axis a, ``neg_a[s]`` the (negative) sum of r < 0.
    ``box`` (optional) bounds the non-zero voxels, to save time.
    """
    sub, box = _boxed(data, box)
    out = []
    pos = np.maximum(sub, np.float32(0))
    neg = sub - pos
    for part in (pos, neg):
        s_ij = part.sum(axis=2, dtype=np.float64)  # (i, j)
        s_jk = part.sum(axis=0, dtype=np.float64)  # (j, k)
        out.append((s_ij.sum(axis=1), s_ij.sum(axis=0), s_jk.sum(axis=0)))
    res = []
    for ax in range(3):
        pair = []
        for part in out:
            full = np.zeros(data.shape[ax])
            full[box[ax]] = part[ax]
            pair.append(full)
        res.append((pair[0], pair[1]))
    return res


def max_profiles(data: np.ndarray, box: tuple[slice, ...] | None = None) -> list[np.ndarray]:
    """max |r| per slice along each axis (used to crop labelling to the voxels above a threshold)."""
    sub, box = _boxed(data, box)
    res = []
    if sub.size == 0:
        return [np.zeros(n, np.float32) for n in data.shape]
    a = np.abs(sub)
    m_ij = a.max(axis=2)
    parts = (m_ij.max(axis=1), m_ij.max(axis=0), a.max(axis=(0, 1)))
    for ax in range(3):
        full = np.zeros(data.shape[ax], np.float32)
        full[box[ax]] = parts[ax]
        res.append(full)
    return res


def filter_map(smoothed: np.ndarray, params: PostParams, box: tuple[slice, ...] | None = None
               ) -> tuple[np.ndarray, float, list[str]]:
    """Scale, fraction-filter and sign-select a (smoothed) map: (filtered map, divisor, messages).

    Every step maps 0 to 0, so only the bounding ``box`` of the non-zero voxels
    (computed if not given) is processed.
    """
    p = params
    if box is None:
        box = support_box(smoothed)
    out = np.zeros(np.shape(smoothed), np.float32)
    if box is None:
        return out, 1.0, ["the map is all zeros, so it is not scaled."] if p.scale in ("max", "percentile") else []
    sub = np.asarray(smoothed, dtype=np.float32)[box]
    scaled, divisor, msgs = scale_map(sub, p.scale, p.percentile, p.scale_value, p.clip)
    filt = select_sign(fraction_filter(scaled, p.filter, p.alpha), p.sign)
    out[box] = filt
    return out, divisor, msgs


def structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 neighbourhood for 6 (faces), 18 (+edges) or 26 (+corners) connectivity."""
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise UserError(f"connectivity must be 6, 18 or 26, got {connectivity!r}.")
    return ndimage.generate_binary_structure(3, rank)


# ---------------------------------------------------------------------------
# clusters: run-length connected components
# ---------------------------------------------------------------------------
#
# Voxels above the threshold are grouped into *runs*: maximal stretches of
# same-sign voxels along the last array axis. Two runs of the same sign on
# neighbouring lines touch when their k-ranges overlap (widened by one voxel
# where the connectivity includes edge or corner neighbours). The runs and these
# contacts form a graph whose connected components are the clusters. The work
# scales with the number of runs, not of voxels, and positive and negative runs
# never join, so both signs come out of one pass.

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


def _crop_box(profiles: list[np.ndarray], threshold: float) -> tuple[slice, ...] | None:
    box = []
    for prof in profiles:
        idx = np.flatnonzero(prof > threshold)
        if idx.size == 0:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


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
    box = _crop_box(profiles, t)
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
        if k < k_prev:
            out.reshape(-1)[labelling.voxel_index(labelling.runs_of_ranks(k, k_prev))] = 0
        elif k > k_prev:
            runs = labelling.runs_of_ranks(k_prev, k)
            out.reshape(-1)[labelling.voxel_index(runs)] = np.repeat(
                labelling.run_rank[runs].astype(np.uint16), labelling.run_len[runs]
            )
        return out
    out = np.zeros(labelling.shape, dtype=np.uint16)
    if k == 0:
        return out
    sel = np.flatnonzero(labelling.run_rank <= k)
    out.reshape(-1)[labelling.voxel_index(sel)] = np.repeat(
        labelling.run_rank[sel].astype(np.uint16), labelling.run_len[sel]
    )
    return out


# ---------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------

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
    vv = voxel_mm3(affine)
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


# ---------------------------------------------------------------------------
# a whole-chain result (the explorer caches the steps; this is the record)
# ---------------------------------------------------------------------------


@dataclass
class PostResult:
    """Everything the chain produces for one parameter set."""

    params: PostParams
    filtered: np.ndarray  # float32 map after smoothing, scaling, filter and sign selection
    labels: np.ndarray  # uint16 cluster labels 1..K, largest first
    table: ClusterTable  # rows of the kept clusters (K rows)
    histogram: SizeHistogram  # sizes of all clusters at the threshold (before the size filter)
    profiles: list[tuple[np.ndarray, np.ndarray]]  # per-slice (pos, neg) sums of ``filtered``
    affine: np.ndarray
    n_clusters_before_size: int
    min_voxels: float
    max_abs: float  # max |filtered|, the top of the threshold slider
    divisor: float  # what the scaling divided by
    messages: list[str] = field(default_factory=list)
    sizes_all: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # voxels of all clusters at the threshold, descending
    box: tuple | None = None  # bounding box (slices) of every voxel above the threshold

    def masked(self) -> np.ndarray:
        """The filtered relevance inside the kept clusters only (0 elsewhere)."""
        return masked_to_clusters(self.filtered, self.labels, self.box)

    @property
    def n_clusters(self) -> int:
        return len(self.table)

    def summary(self) -> str:
        if self.n_clusters == 0:
            return "no clusters"
        vv = voxel_mm3(self.affine)
        return (
            f"{self.n_clusters} clusters (of {self.n_clusters_before_size} at threshold {self.params.threshold:g}); "
            f"largest {int(self.table.voxels[0])} voxels = {self.table.voxels[0] * vv:.1f} mm³"
        )


def empty_messages(params: PostParams, max_abs: float, labelling: Labelling, k: int, min_voxels: float, vv: float) -> list[str]:
    """Why a result is empty (or nothing), as one-line messages."""
    if max_abs == 0:
        return ["the filtered relevance is all zeros; there are no clusters (check the filter range and sign)."]
    if labelling.n == 0:
        return [
            f"threshold {params.threshold:g} is at or above the largest |relevance| {max_abs:.4g} after filtering; "
            "no voxel passes it. Lower the threshold."
        ]
    if k == 0:
        big = int(labelling.sizes[0])
        return [
            f"no cluster has at least {min_voxels:g} voxels ({min_voxels * vv:.1f} mm³); the largest has {big} voxels "
            f"({big * vv:.1f} mm³). Lower the minimum cluster size."
        ]
    return []
