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
    """Volume of one voxel in mm³ (|det| of the linear part), rounded to 12 significant digits
    (2 mm voxels give 8.0, not 7.999999999999998)."""
    v = abs(np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]))
    return float(f"{v:.12g}")


def vox_to_world(affine: Array, ijk: Array) -> Array:
    """Map voxel coordinates (..., 3) to world mm (..., 3)."""
    ijk = np.asarray(ijk, dtype=float)
    a = np.asarray(affine, dtype=float)
    return ijk @ a[:3, :3].T + a[:3, 3]


def world_to_vox(affine: Array, xyz: Array) -> Array:
    """Map world mm (..., 3) to (fractional) voxel coordinates (..., 3)."""
    return vox_to_world(np.linalg.inv(np.asarray(affine, dtype=float)), xyz)


def grid_bbox(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World (min, max) of a grid's 8 outer voxel corners (voxel edges, not centres)."""
    s = np.asarray(shape[:3], dtype=float)
    corners = np.array([[a, b, c] for a in (-0.5, s[0] - 0.5) for b in (-0.5, s[1] - 0.5) for c in (-0.5, s[2] - 0.5)])
    w = vox_to_world(affine, corners)
    return w.min(axis=0), w.max(axis=0)


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


# ---------------------------------------------------------------------------
# Storage order vs display order, and the affine of a (napari) layer
# ---------------------------------------------------------------------------
#
# napari slices a volume in 2D along its data axes; a file whose axes are
# permuted with respect to world x, y, z (e.g. PIR, as sagittal acquisitions
# are stored) gives it a singular 2D slice transform. Such a volume is shown
# with its axes transposed into world order (flips are kept: napari handles
# them), while the layer's metadata keeps the file's own affine under
# ``STORAGE_KEY`` so that saving and explaining work on the file's voxel order.

#: Layer-metadata key: ``{"affine": the file's 4x4 affine, "axes": the display order of its axes}``.
STORAGE_KEY = "storage"

IDENTITY_AXES = (0, 1, 2)


def view_axes(affine: Array) -> tuple[int, int, int]:
    """Order of the array axes that lines them up with world x, y, z (axis flips are left alone).

    ``(0, 1, 2)`` for RAS, LAS, LPI ... storage; ``(2, 0, 1)`` for PIR (its third axis runs along x).
    Obliquity is allowed: each array axis goes to the world axis it is closest to (nibabel's
    ``io_orientation``). Degenerate affines give ``(0, 1, 2)``.
    """
    import nibabel as nib

    a = np.asarray(affine, dtype=float)
    try:
        ornt = nib.orientations.io_orientation(a)
    except Exception:  # noqa: BLE001 - a degenerate matrix is shown as stored
        return IDENTITY_AXES
    if not np.all(np.isfinite(ornt)):
        return IDENTITY_AXES
    return tuple(int(i) for i in np.argsort(ornt[:, 0]))  # type: ignore[return-value]


def permute_affine(affine: Array, axes: Sequence[int]) -> Array:
    """Affine of the array transposed so that its axis ``d`` is the stored axis ``axes[d]``."""
    a = np.asarray(affine, dtype=float)
    return a[:, [*(int(v) for v in axes), 3]].copy()


def to_view(data: Array, axes: Sequence[int]) -> Array:
    """Transpose the last three axes of ``data`` (a view, no copy) into the order ``axes``."""
    arr = np.asarray(data)
    axes = tuple(int(v) for v in axes)
    if axes == IDENTITY_AXES:
        return arr
    lead = arr.ndim - 3
    return np.transpose(arr, (*range(lead), *(lead + v for v in axes)))


def from_view(data: Array, axes: Sequence[int]) -> Array:
    """Inverse of :func:`to_view`: back to the stored axis order."""
    return to_view(data, tuple(int(v) for v in np.argsort(np.asarray(axes))))


def layer_affine(layer) -> Array:
    """4x4 voxel -> world (mm) affine of the last three axes of a layer's data (duck-typed napari layer).

    The layer's ``metadata["affine"]`` (set by napari-xai's reader and widgets: exact, as in the file) when it
    is a 4x4 matrix, else the layer's own transforms (``data_to_world``: affine, scale, translate, rotate...).
    """
    md = getattr(layer, "metadata", None) or {}
    aff = md.get("affine")
    if aff is not None:
        aff = np.asarray(aff, dtype=float)
        if aff.shape == (4, 4):
            return aff
    nd = int(layer.ndim)
    origin = np.asarray(layer.data_to_world(np.zeros(nd)), dtype=float)[-3:]
    out = np.eye(4)
    for i in range(3):
        e = np.zeros(nd)
        e[nd - 3 + i] = 1.0
        out[:3, i] = np.asarray(layer.data_to_world(e), dtype=float)[-3:] - origin
    out[:3, 3] = origin
    return out


def stored_geometry(data: Array, metadata: dict | None, affine: Array) -> tuple[Array, Array]:
    """``(data, affine)`` in the file's own voxel order when ``metadata`` records a reoriented view of it
    (:data:`STORAGE_KEY`, and the data's shape fits), else ``(data, affine)`` unchanged."""
    st = (metadata or {}).get(STORAGE_KEY)
    arr = np.asarray(data)
    if isinstance(st, dict) and st.get("affine") is not None and st.get("axes") is not None and arr.ndim >= 3:
        axes = tuple(int(v) for v in st["axes"])
        stored = np.asarray(st["affine"], dtype=float)
        if sorted(axes) == [0, 1, 2] and stored.shape == (4, 4):
            return from_view(arr, axes), stored
    return arr, np.asarray(affine, dtype=float)


def layer_stored(layer, data: Array | None = None) -> tuple[Array, Array]:
    """A layer's data (or ``data`` on the layer's grid) and affine in the voxel order of the file it came from:
    a reoriented view (see :func:`view_axes`) is undone, so a PIR file gives back its PIR array and affine."""
    md = getattr(layer, "metadata", None) or {}
    return stored_geometry(layer.data if data is None else data, md, layer_affine(layer))
