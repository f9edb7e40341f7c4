"""All geometry in one place: affines, voxel sizes, world<->voxel mapping, resampling.

Conventions
-----------
* Volumes are arrays indexed (i, j, k) in voxels; the 4x4 ``affine`` maps
  homogeneous voxel indices to world millimetres (NIfTI / nibabel convention).
* Multi-channel data is (C, i, j, k).
* "Model grid" resampling keeps the field of view: voxel centres are spread
  evenly over the same extent (``align_corners=False`` semantics), so the model
  grid has its own affine, :func:`model_grid_affine`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Array = np.ndarray


def voxel_sizes(affine: Array) -> Array:
    """Voxel edge lengths in mm, one per array axis (norm of the affine's columns)."""
    a = np.asarray(affine, dtype=float)
    return np.sqrt((a[:3, :3] ** 2).sum(axis=0))


def voxel_volume_mm3(affine: Array) -> float:
    """Volume of one voxel in mm³ (|det| of the linear part)."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3])))


def vox_to_world(affine: Array, ijk: Array) -> Array:
    """Map voxel coordinates (..., 3) to world mm (..., 3)."""
    ijk = np.asarray(ijk, dtype=float)
    a = np.asarray(affine, dtype=float)
    return ijk @ a[:3, :3].T + a[:3, 3]


def world_to_vox(affine: Array, xyz: Array) -> Array:
    """Map world mm (..., 3) to (fractional) voxel coordinates (..., 3)."""
    return vox_to_world(np.linalg.inv(np.asarray(affine, dtype=float)), xyz)


def model_grid_affine(affine: Array, shape: tuple[int, int, int], model_shape: tuple[int, int, int]) -> Array:
    """Affine of a grid of ``model_shape`` voxels covering the same extent as ``shape``.

    Model voxel m sits at source voxel ``s*m + (s-1)/2`` with ``s = shape/model_shape``
    per axis, which is the mapping of trilinear resizing with ``align_corners=False``.
    """
    s = np.asarray(shape, dtype=float) / np.asarray(model_shape, dtype=float)
    scale = np.eye(4)
    scale[:3, :3] = np.diag(s)
    scale[:3, 3] = (s - 1.0) / 2.0
    return np.asarray(affine, dtype=float) @ scale


def resize(data: Array, shape: tuple[int, int, int]) -> Array:
    """Trilinear resize of (C, i, j, k) or (i, j, k) data to spatial ``shape``, per channel.

    Same field of view, ``align_corners=False``. Returns float32. Data that
    already has ``shape`` is returned unchanged (no resampling).
    """
    import torch
    import torch.nn.functional as F

    arr = np.asarray(data)
    squeeze = arr.ndim == 3
    if squeeze:
        arr = arr[None]
    if tuple(arr.shape[1:]) == tuple(shape):
        out = arr.astype(np.float32, copy=False)
    else:
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
        out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0].numpy()
    return out[0] if squeeze else out


def relevance_to_grid(relevance: Array, shape: tuple[int, int, int]) -> Array:
    """Map relevance (C, m, m, m) from the model grid back to a volume grid of ``shape``.

    Trilinear interpolation, then scaled by (model voxels / volume voxels) so that
    the total relevance is kept (up to interpolation error). This is the chain
    rule through the resize for gradients, and keeps LRP's conservation and
    integrated gradients' completeness meaningful on the input grid.
    """
    rel = np.asarray(relevance, dtype=np.float32)
    if tuple(rel.shape[-3:]) == tuple(shape):
        return rel
    factor = float(np.prod(rel.shape[-3:])) / float(np.prod(shape))
    return resize(rel, shape) * np.float32(factor)


def resample_to_grid(
    data: Array,
    src_affine: Array,
    dst_shape: tuple[int, int, int],
    dst_affine: Array,
    order: int = 1,
    cval: float = 0.0,
) -> Array:
    """Resample a 3D volume onto another grid through world coordinates.

    ``order=0`` (nearest) is for label volumes such as atlases; ``order=1`` is trilinear.
    """
    from scipy import ndimage

    vox = np.linalg.inv(np.asarray(src_affine, dtype=float)) @ np.asarray(dst_affine, dtype=float)
    return ndimage.affine_transform(
        np.asarray(data),
        vox[:3, :3],
        offset=vox[:3, 3],
        output_shape=tuple(dst_shape),
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
    )


def first_nonzero_along_ray(
    volume: Array,
    affine: Array,
    point_mm: Sequence[float],
    direction_mm: Sequence[float],
    step_vox: float = 0.5,
) -> tuple[int, int, int] | None:
    """First voxel with a non-zero value along a viewing ray (3D picking).

    The ray is the line through ``point_mm`` along ``direction_mm`` (world mm,
    pointing away from the camera); it is walked from where it enters the
    grid, in steps of ``step_vox`` voxels. Returns the voxel (i, j, k) or None.
    """
    vol = np.asarray(volume)
    shape = np.asarray(vol.shape[:3], dtype=float)
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    p = inv[:3, :3] @ np.asarray(point_mm, dtype=float) + inv[:3, 3]
    d = inv[:3, :3] @ np.asarray(direction_mm, dtype=float)
    norm = float(np.linalg.norm(d))
    if norm == 0 or not np.all(np.isfinite(p)):
        return None
    d = d / norm
    lo, hi = -0.5, shape - 0.5
    t0, t1 = -np.inf, np.inf
    for ax in range(3):
        if abs(d[ax]) < 1e-12:
            if p[ax] < lo or p[ax] > hi[ax]:
                return None
            continue
        ta = (lo - p[ax]) / d[ax]
        tb = (hi[ax] - p[ax]) / d[ax]
        t0 = max(t0, min(ta, tb))
        t1 = min(t1, max(ta, tb))
    if not t0 < t1:
        return None
    ts = np.arange(t0, t1, step_vox)
    pts = np.floor(p[None] + ts[:, None] * d[None] + 0.5).astype(np.int64)
    ok = np.all((pts >= 0) & (pts < shape.astype(np.int64)), axis=1)
    pts = pts[ok]
    if pts.size == 0:
        return None
    vals = vol[pts[:, 0], pts[:, 1], pts[:, 2]]
    hit = np.flatnonzero(vals)
    if hit.size == 0:
        return None
    return tuple(int(v) for v in pts[hit[0]])  # type: ignore[return-value]


def cube_labels(shape: Sequence[int], size: int) -> tuple[Array, tuple[int, int, int]]:
    """Index (i, j, k) -> number of its cube of edge ``size`` voxels, i-major; cubes at the far edges may be cut.

    Returns the int64 labels 0..M-1 (every cube has a voxel) and the number of cubes per axis.
    """
    size = int(size)
    nb = tuple(-(-int(s) // size) for s in shape)
    idx = [np.arange(int(s)) // size for s in shape]
    labels = (idx[0][:, None, None] * nb[1] + idx[1][None, :, None]) * nb[2] + idx[2][None, None, :]
    return labels.astype(np.int64), nb  # type: ignore[return-value]


def crop_box(shape: Sequence[int], box: Sequence[slice] | None, pad: int = 1) -> tuple[slice, ...]:
    """``box`` (slices, e.g. where a map is non-zero) widened by ``pad`` voxels and clipped to ``shape``;
    an empty or missing box becomes a 1-voxel box at the origin."""
    if box is None or any((s.stop or 0) <= (s.start or 0) for s in box):
        return tuple(slice(0, 1) for _ in shape)
    return tuple(slice(max(0, (s.start or 0) - pad), min(int(n), (s.stop if s.stop is not None else int(n)) + pad))
                 for s, n in zip(box, shape))


def cropped_affine(affine: Array, box: Sequence[slice]) -> Array:
    """The voxel -> world affine of ``data[box]`` (its voxel (0, 0, 0) is ``box``'s first voxel)."""
    out = np.array(affine, dtype=float, copy=True)
    out[:3, 3] = out[:3, :3] @ np.array([s.start or 0 for s in box], dtype=float) + out[:3, 3]
    return out
