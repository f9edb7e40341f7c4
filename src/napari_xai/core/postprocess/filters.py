"""Steps 1-4 of the chain: sanitise, smooth (sigma in mm), scale, fraction filters, sign; per-slice profiles."""

from __future__ import annotations

import warnings

import numpy as np

from .. import geometry
from ..lazy import lazy_import
from ..errors import UserError, XaiWarning
from .params import FILTERS, FRACTION_TOL, GAUSS_TRUNCATE, SCALES, SIGNS, PostParams

ndimage = lazy_import("scipy.ndimage")  # loaded on first use: the CLI parser imports this (docs/performance.md)


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
