"""Probabilistic atlases: maximum-probability labelling and their compact (sparse) storage."""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError


def check_threshold(threshold: float) -> float:
    thr = float(threshold)
    if not 0.0 <= thr <= 1.0 or math.isnan(thr):
        raise UserError(f"probability threshold must be a fraction in [0, 1] (e.g. 0.25 for 25%), got {threshold}.")
    return round(thr, 6)


def probability_scale(arr: np.ndarray, name: str) -> float:
    """1.0 for probabilities in [0, 1]; 0.01 for FSL-style integer percentages (0..100)."""
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise UserError(f"atlas {name} has data type {arr.dtype}; a 4D atlas holds probabilities.")
    lo, hi = float(arr.min()), float(arr.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise UserError(f"atlas {name} has NaN/Inf voxels; a 4D probabilistic atlas holds probabilities in [0, 1].")
    if lo < -1e-6:
        raise UserError(f"4D atlas {name} has values in [{lo:g}, {hi:g}]; a 4D atlas must hold probabilities in [0, 1] (it is neither labels nor probabilities).")
    if hi <= 1.0 + 1e-6:
        return 1.0
    if np.issubdtype(arr.dtype, np.integer) and hi <= 100:
        return 0.01  # FSL stores probabilities as integer percentages
    raise UserError(
        f"4D atlas {name} has values in [{lo:g}, {hi:g}]; a 4D atlas must hold probabilities in [0, 1] "
        "(or integer percentages 0-100 as FSL does); it is neither labels nor probabilities."
    )


def flatnonzero_sparse(flat: np.ndarray) -> np.ndarray:
    """``np.flatnonzero`` for large, mostly-zero contiguous 1D arrays.

    Scans 8-byte words first (8x fewer elements for uint8), then looks inside
    the non-zero words only. Same result as ``np.flatnonzero(flat)``.
    """
    k = 8 // flat.itemsize if flat.itemsize in (1, 2, 4) else 0
    if k <= 1 or not flat.flags.c_contiguous or flat.size < 8 * k:
        return np.flatnonzero(flat)
    n_main = (flat.size // k) * k
    words = flat[:n_main].view(np.uint64)
    nzw = np.flatnonzero(words)
    cand = (nzw[:, None] * k + np.arange(k)[None, :]).ravel()
    cand = cand[flat[cand] != 0]
    tail = np.flatnonzero(flat[n_main:]) + n_main
    return np.concatenate([cand, tail]) if tail.size else cand


def sparse_from_4d(arr: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """Compact per-voxel region probabilities of a 4D atlas (i, j, k, r).

    Returns ``vox`` (sorted Fortran-flat voxel indices with any probability),
    ``ptr`` (CSR offsets into ``reg``/``prob``), ``reg`` (volume index),
    ``prob`` (fraction, float32, most probable first per voxel), and per
    voxel ``maxprob`` and ``argmax`` (lowest volume index on ties).
    """
    shape = arr.shape
    nvox = int(np.prod(shape[:3]))
    if arr.flags.f_contiguous:
        flat = np.asarray(arr).ravel(order="F")
        nz = flatnonzero_sparse(flat)
        vox = nz % nvox
        reg = nz // nvox
        val = flat[nz]
    else:
        parts_v, parts_r, parts_p = [], [], []
        for r in range(shape[3]):
            f = np.asarray(arr[..., r]).ravel(order="F")
            idx = np.flatnonzero(f)
            parts_v.append(idx)
            parts_r.append(np.full(idx.size, r, dtype=np.int64))
            parts_p.append(f[idx])
        vox = np.concatenate(parts_v)
        reg = np.concatenate(parts_r)
        val = np.concatenate(parts_p)
    prob = (val.astype(np.float64) * scale).astype(np.float32)
    # order: by voxel, then probability descending, then volume index
    nreg = int(shape[3])
    vmax = int(val.max()) if val.size else 0
    if np.issubdtype(val.dtype, np.integer) and float(nvox) * (vmax + 1) * nreg < 2**62:
        key = (vox.astype(np.int64) * (vmax + 1) + (vmax - val.astype(np.int64))) * nreg + reg
        order = np.argsort(key)  # one integer sort: ~3x faster than lexsort
    else:
        order = np.lexsort((reg, -prob, vox))
    vox, reg, prob = vox[order], reg[order], prob[order]
    if vox.size:
        starts = np.flatnonzero(np.r_[True, vox[1:] != vox[:-1]])
    else:
        starts = np.zeros(0, dtype=np.int64)
    uvox = vox[starts]
    ptr = np.r_[starts, vox.size].astype(np.int64)
    itype = np.int32 if vox.size < 2**31 and nvox < 2**31 else np.int64
    return {
        "vox": uvox.astype(itype),
        "ptr": ptr.astype(itype),
        "reg": reg.astype(np.uint16),
        "prob": prob,
        "maxprob": prob[starts].astype(np.float32),
        "argmax": reg[starts].astype(np.uint16),
    }
