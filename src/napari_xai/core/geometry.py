"""All geometry in one place: affines, voxel sizes, world<->voxel mapping, resampling.

Conventions
-----------
* Volumes are arrays indexed (i, j, k) in voxels; the 4x4 ``affine`` maps
  homogeneous voxel indices to world millimetres (NIfTI / nibabel convention).
* Multi-channel data is (C, i, j, k).
* "Model grid" resampling keeps the field of view: voxel centres are spread
  evenly over the same extent (``align_corners=False`` semantics), so the model
  grid has its own affine, :func:`model_grid_affine`.
* A model's input space (orientation, spacing, grid, intensities; see
  :mod:`input_space`) is reached with MONAI's transforms on a ``MetaTensor`` and
  left with their inverse: :class:`ModelGrid`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import UserError

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


def resize_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of a label or mask volume (same field of view, voxel centres aligned)."""
    arr = np.asarray(labels)
    if tuple(arr.shape) == tuple(shape):
        return arr
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr.astype(np.float32)))[None, None]
    out = torch.nn.functional.interpolate(t, size=tuple(int(s) for s in shape), mode="nearest-exact")[0, 0]
    return out.numpy().astype(arr.dtype if arr.dtype != bool else np.float32).astype(arr.dtype)


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


# Model input space: MONAI transforms there, their inverse back
# ---------------------------------------------------------------------------


def axcodes(affine: Array) -> str:
    """Axis codes of the voxel order in world (RAS+) space, e.g. ``"LAS"`` or ``"PIR"``."""
    a = np.asarray(affine, dtype=float)
    key = a.tobytes()
    codes = _AXCODES.get(key)
    if codes is None:  # nibabel's SVD per call costs more than a whole explanation's record (docs/performance.md)
        import nibabel as nib

        codes = "".join(nib.aff2axcodes(a))
        if len(_AXCODES) > 256:
            _AXCODES.clear()
        _AXCODES[key] = codes
    return codes


_AXCODES: dict[bytes, str] = {}


class ModelGrid:
    """How an input grid is brought into a model's :class:`~napari_xai.core.input_space.InputSpace`, and back.

    The steps are MONAI array transforms on a ``MetaTensor`` carrying the input's
    affine: ``Orientation``, ``Spacing``, ``Resize`` / ``ResizeWithPadOrCrop`` /
    ``SpatialPad`` / ``CenterSpatialCrop`` (after ``SpatialCrop`` to the foreground
    box for ``crop-pad-foreground``), and ``NormalizeIntensity`` /
    ``ScaleIntensity`` / ``ScaleIntensityRange``. Maps go back to the input's exact
    voxel grid through the same transform objects' ``inverse``.

    Parameters
    ----------
    space : InputSpace
        The model's input space for this run.
    affine : (4, 4) array
        The input's voxel -> world (mm) affine.
    shape : tuple of 3 int
        The input's spatial shape.

    Attributes (after :meth:`apply`)
    --------------------------------
    shape, affine
        The model grid and its voxel -> world affine.
    steps : list of dict
        Every transform applied with its arguments, in order (for the sidecar).
    """

    def __init__(self, space: Any, affine: Array, shape: tuple[int, int, int]):
        self.space = space
        self.in_affine = np.asarray(affine, dtype=float)
        self.in_shape = tuple(int(s) for s in shape)
        self.shape: tuple[int, int, int] = self.in_shape
        self.affine = self.in_affine
        self.steps: list[dict] = []
        self._spatial: list = []  # (transform, name) applied to the image, in order
        self._intensity = None
        self._ops: list | None = None
        self._meta: dict | None = None
        self._box: tuple | None = None
        self._torch_plan: list | None = None  # the steps in plain torch when MONAI is not needed (_plain_plan)

    @property
    def resampled(self) -> bool:
        """True if the model grid is not the input grid (any spatial step changed it)."""
        a, b = np.asarray(self.affine, dtype=float), np.asarray(self.in_affine, dtype=float)
        # np.allclose(a, b, atol=1e-6) written out: the same test without its 0.1 ms of set-up per call
        return self.shape != self.in_shape or not bool(np.all(np.abs(a - b) <= 1e-6 + 1e-5 * np.abs(b)))

    def _transforms(self) -> list:
        """The planned steps: (role, MONAI transform, record) in order."""
        from monai.transforms import (
            CenterSpatialCrop,
            NormalizeIntensity,
            Orientation,
            Resize,
            ResizeWithPadOrCrop,
            ScaleIntensity,
            ScaleIntensityRange,
            Spacing,
            SpatialPad,
        )

        from .input_space import AXIS_LABELS

        sp = self.space
        out: list = []
        for kind in sp.order:
            if kind == "orientation" and sp.orientation:
                out.append(("spatial", Orientation(axcodes=sp.orientation, labels=AXIS_LABELS),
                            {"transform": "Orientation", "axcodes": sp.orientation}))
            elif kind == "spacing" and sp.spacing:
                out.append(("spatial", Spacing(pixdim=sp.spacing, mode="bilinear", padding_mode="border"),
                            {"transform": "Spacing", "pixdim": list(sp.spacing), "mode": "bilinear",
                             "padding_mode": "border"}))
            elif kind == "shape" and sp.shape:
                size = list(sp.shape)
                if sp.shape_policy == "resize":
                    out.append(("resize", Resize(spatial_size=size, mode="trilinear"),
                                {"transform": "Resize", "spatial_size": size, "mode": "trilinear"}))
                elif sp.shape_policy == "crop-pad":
                    out.append(("spatial", ResizeWithPadOrCrop(spatial_size=size),
                                {"transform": "ResizeWithPadOrCrop", "spatial_size": size}))
                elif sp.shape_policy == "pad":
                    out.append(("spatial", SpatialPad(spatial_size=size),
                                {"transform": "SpatialPad", "spatial_size": size}))
                elif sp.shape_policy == "crop":
                    out.append(("spatial", CenterSpatialCrop(roi_size=size),
                                {"transform": "CenterSpatialCrop", "roi_size": size}))
                else:  # crop-pad-foreground: the box of voxels > 0 is found on the data as it arrives here
                    out.append(("foreground", None, None))
                    out.append(("spatial", ResizeWithPadOrCrop(spatial_size=size),
                                {"transform": "ResizeWithPadOrCrop", "spatial_size": size}))
            elif kind == "intensity" and sp.normalization != "none":
                p = sp.params
                cw = bool(p.get("channel_wise", True))  # a bundle's own setting; napari-xai's zscore/minmax: per channel
                if sp.normalization == "zscore":
                    t = NormalizeIntensity(nonzero=bool(p.get("nonzero", False)), channel_wise=cw)
                    rec = {"transform": "NormalizeIntensity", "nonzero": bool(p.get("nonzero", False)),
                           "channel_wise": cw}
                elif sp.normalization == "minmax":
                    t = ScaleIntensity(minv=0.0, maxv=1.0, channel_wise=cw)
                    rec = {"transform": "ScaleIntensity", "minv": 0.0, "maxv": 1.0, "channel_wise": cw}
                elif "a_min" in p:
                    kw = {k: p[k] for k in ("a_min", "a_max", "b_min", "b_max", "clip") if k in p}
                    t = ScaleIntensityRange(**kw)
                    rec = {"transform": "ScaleIntensityRange", **kw}
                else:
                    t = ScaleIntensity(minv=p.get("minv", 0.0), maxv=p.get("maxv", 1.0), channel_wise=cw)
                    rec = {"transform": "ScaleIntensity", "minv": p.get("minv", 0.0), "maxv": p.get("maxv", 1.0),
                           "channel_wise": cw}
                out.append(("intensity", t, rec))
        return out

    def _plain_plan(self) -> list | None:
        """The steps as plain torch operations when MONAI's transforms reduce to them, else None.

        That is a trilinear ``Resize`` and a z-score (``NormalizeIntensity``, not ``nonzero``) or min-max
        (``ScaleIntensity`` 0..1), with ``Orientation`` and ``Spacing`` only where they change nothing (an
        axis-aligned input already in that order and voxel size): the demo and most classifiers. The results are MONAI's, to the bit (the same
        torch calls; tests/test_geometry.py compares them), and the grid's affine is MONAI's; importing MONAI
        alone takes 2-4 s, which a command that needs none of its transforms does not pay (docs/performance.md).
        """
        sp = self.space
        out: list = []
        affine, shape = self.in_affine, self.in_shape
        axis_aligned = bool(np.all(affine[:3, :3][~np.eye(3, dtype=bool)] == 0))
        for kind in sp.order:
            # Orientation and Spacing are identities on an axis-aligned grid already in that order and spacing
            if kind == "orientation" and sp.orientation:
                if not (axis_aligned and axcodes(affine) == sp.orientation):
                    return None
                out.append(("same", None, {"transform": "Orientation", "axcodes": sp.orientation}))
            elif kind == "spacing" and sp.spacing:
                if not (axis_aligned and np.array_equal(voxel_sizes(affine), np.asarray(sp.spacing, dtype=float))):
                    return None
                out.append(("same", None, {"transform": "Spacing", "pixdim": list(sp.spacing), "mode": "bilinear",
                                           "padding_mode": "border"}))
            elif kind == "shape" and sp.shape:
                if sp.shape_policy != "resize":
                    return None
                size = [int(v) for v in sp.shape]
                out.append(("resize", size, {"transform": "Resize", "spatial_size": size, "mode": "trilinear"}))
                affine, shape = model_grid_affine(affine, shape, tuple(size)), tuple(size)
            elif kind == "intensity" and sp.normalization != "none":
                p = sp.params
                cw = bool(p.get("channel_wise", True))
                if sp.normalization == "zscore" and not bool(p.get("nonzero", False)):
                    out.append(("zscore", cw, {"transform": "NormalizeIntensity", "nonzero": False,
                                               "channel_wise": cw}))
                elif sp.normalization == "minmax":
                    out.append(("minmax", cw, {"transform": "ScaleIntensity", "minv": 0.0, "maxv": 1.0,
                                               "channel_wise": cw}))
                else:
                    return None
        return out

    def _apply_plain(self, data: Array, labels: bool, first: bool, copy: bool = True) -> Array:
        """:meth:`apply` through :meth:`_plain_plan` (no MONAI)."""
        import torch

        x = torch.from_numpy(np.array(data, dtype=np.float32, order="C", copy=True) if copy
                             else np.ascontiguousarray(data, dtype=np.float32))
        shape, affine = self.in_shape, self.in_affine
        for role, arg, rec in self._torch_plan:
            if role == "resize":
                if tuple(arg) != tuple(x.shape[1:]):  # MONAI's Resize returns an input of that shape unchanged
                    x = torch.from_numpy(_interpolate(x.numpy(), tuple(arg), labels))
                affine = model_grid_affine(affine, shape, tuple(arg))
                shape = tuple(arg)
            elif role == "same":
                pass
            elif labels:
                continue
            else:
                x = _zscore(x, arg) if role == "zscore" else _minmax(x, arg)
            if first:
                self.steps.append(rec)
        if first:
            self._ops, self._meta = [], {}
            self.shape = tuple(int(v) for v in x.shape[1:])
            self.affine = np.asarray(affine, dtype=float)
        return x.numpy().astype(np.float32, copy=False)

    def apply(self, data: Array, labels: bool = False, copy: bool = True) -> Array:
        """Bring (C, i, j, k) data on the input grid into the model space; returns float32 (C, D, H, W).

        The first call fixes the model grid (and the foreground box); later calls (perturbed copies of the
        input) go through the same steps. ``labels=True`` takes a mask or label volume with nearest-neighbour
        interpolation and no intensity step. ``copy=False``: ``data`` is a float32 array the caller gives away
        (e.g. :meth:`Volume.model_copy`), which the intensity steps may then change in place.
        """
        first = self._ops is None
        if first:
            self._torch_plan = self._plain_plan()
        if self._torch_plan is not None:
            return self._apply_plain(data, labels, first, copy)
        import torch
        from monai.data import MetaTensor
        from monai.transforms import SpatialCrop
        from monai.transforms.utils import generate_spatial_bounding_box

        if first:
            self._plan = self._transforms()
        arr = np.array(data, dtype=np.float32, order="C", copy=True)  # MONAI's intensity steps work in place
        x = MetaTensor(torch.from_numpy(arr), affine=torch.as_tensor(self.in_affine, dtype=torch.float64))
        spatial = []
        for role, t, rec in self._plan:
            if role == "intensity":
                if not labels:
                    x = t(x)
                    if first:
                        self.steps.append(rec)
                continue
            if role == "foreground":
                if self._box is None:
                    start, end = generate_spatial_bounding_box(x, select_fn=lambda v: v > 0)
                    if any(e <= s for s, e in zip(start, end)):
                        start, end = [0, 0, 0], list(x.shape[1:])
                    self._box = (tuple(int(v) for v in start), tuple(int(v) for v in end))
                t = SpatialCrop(roi_start=self._box[0], roi_end=self._box[1])
                rec = {"transform": "SpatialCrop", "roi_start": list(self._box[0]), "roi_end": list(self._box[1]),
                       "why": "the bounding box of voxels > 0 (CropForeground)"}
                if first:
                    self._fg = t
                t = self._fg
            if role == "resize":
                x = t(x, mode="nearest-exact") if labels else t(x)
            elif role == "spatial" and labels and type(t).__name__ == "Spacing":
                x = t(x, mode="nearest")
            else:
                x = t(x)
            spatial.append(t)
            if first:
                self.steps.append(rec)
        if first:
            self._spatial = spatial
            self._ops = [dict(op) for op in x.applied_operations]
            self._meta = dict(x.meta)
            self.shape = tuple(int(s) for s in x.shape[1:])
            self.affine = np.asarray(x.affine, dtype=float)
        return x.as_tensor().numpy().astype(np.float32, copy=False)

    def to_volume(self, data: Array, additive: bool = True, labels: bool = False, copy: bool = True) -> Array:
        """Take a map on the model grid back to the input's voxel grid with the inverse transforms.

        ``data`` is (C, d, h, w) or (d, h, w) over the model grid's field of view; a coarser map (a layer's
        resolution) is first resized to the model grid. ``additive`` maps (relevance) keep their total:
        values are scaled by the ratio of voxel volumes. Per-voxel maps (``additive=False``, e.g.
        attention coefficients) are interpolated only. ``labels`` inverts with nearest neighbours.
        ``copy=False``: when no step changes the map, the float32 ``data`` itself may come back (the caller
        gives it away).
        """
        import copy

        if self._ops is None:
            raise RuntimeError("ModelGrid.apply must run before to_volume")
        arr = np.asarray(data)
        squeeze = arr.ndim == 3
        if squeeze:
            arr = arr[None]
        dtype = arr.dtype
        arr = np.array(arr, dtype=np.float32, order="C", copy=True) if copy else np.ascontiguousarray(arr, np.float32)
        if tuple(arr.shape[1:]) != self.shape:
            if labels:
                arr = np.stack([resize_labels(a, self.shape) for a in arr])
            else:
                factor = float(np.prod(arr.shape[1:])) / float(np.prod(self.shape)) if additive else 1.0
                arr = resize(arr, self.shape) * np.float32(factor)
        if self._torch_plan is not None:
            if self.shape != self.in_shape:  # the inverse of the one resize: MONAI's Resize.inverse, in torch
                arr = _interpolate(arr, self.in_shape, labels)
        elif self._spatial:
            import torch
            from monai.data import MetaTensor

            ops = copy.deepcopy(self._ops)
            if labels:
                for op in ops:
                    extra = op.get("extra_info") or {}
                    if op.get("class") == "Resize":
                        extra["mode"], extra["align_corners"] = "nearest-exact", None
                    elif "mode" in extra:
                        extra["mode"] = "nearest"
            x = MetaTensor(torch.from_numpy(arr), meta=dict(self._meta))
            x.applied_operations = ops
            for t in reversed(self._spatial):
                x = t.inverse(x)
            arr = x.as_tensor().numpy()
        if tuple(arr.shape[1:]) != self.in_shape:  # pragma: no cover - MONAI's inverse restores the input shape
            raise RuntimeError(f"inverse transforms gave {arr.shape[1:]}, not the input grid {self.in_shape}")
        if additive and not labels:
            ratio = voxel_volume_mm3(self.in_affine) / voxel_volume_mm3(self.affine)
            if ratio != 1.0:  # the same voxel size: nothing to scale (and no pass over the map)
                arr = arr * np.float32(ratio)
        arr = arr.astype(dtype if labels else np.float32, copy=False)
        return arr[0] if squeeze else arr

    def to_model(self, mask: Array, shape: tuple[int, int, int] | None = None) -> Array:
        """A mask or label volume (i, j, k) on the input grid, on the model grid (nearest), optionally resized
        (nearest) to ``shape`` (a model output grid of another size)."""
        arr = np.asarray(mask)
        out = self.apply(arr[None].astype(np.float32), labels=True)[0]
        if shape is not None and tuple(shape) != out.shape:
            out = resize_labels(out, tuple(shape))
        return out.astype(arr.dtype if arr.dtype != bool else np.float32).astype(arr.dtype)


def _interpolate(arr: np.ndarray, shape: tuple[int, ...], labels: bool) -> np.ndarray:
    """(C, i, j, k) float32 resized as MONAI's ``Resize`` does: trilinear (``align_corners`` False) or, for labels,
    nearest-exact."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None]
    size = tuple(int(v) for v in shape)
    out = F.interpolate(t, size=size, mode="nearest-exact") if labels else F.interpolate(
        t, size=size, mode="trilinear", align_corners=False)
    return out[0].numpy()


def _zscore(x, channel_wise: bool):
    """MONAI's ``NormalizeIntensity(channel_wise=...)`` on a float32 (C, ...) tensor: the same torch operations."""
    import torch

    def one(d):  # in place: the same subtraction and division, element by element, without two more arrays
        mean = torch.mean(d.float()).item()
        std = torch.std(d.float(), unbiased=False).item()
        return d.sub_(mean).div_(1.0 if std == 0.0 else std)

    if not channel_wise:
        return one(x)
    for d in x:
        one(d)
    return x


def _minmax(x, channel_wise: bool):
    """MONAI's ``ScaleIntensity(minv=0, maxv=1, channel_wise=...)`` on a float32 (C, ...) tensor."""
    import torch

    def one(a):
        lo, hi = a.min(), a.max()
        if lo == hi:
            return a * 0.0
        return ((a - lo) / (hi - lo)) * (1.0 - 0.0) + 0.0

    return torch.stack([one(d) for d in x]) if channel_wise else one(x)


def crop_box(shape: Sequence[int], box: Sequence[slice] | None, pad: int = 1) -> tuple[slice, ...]:
    """``box`` (slices, e.g. where a map is non-zero) widened by ``pad`` voxels and clipped to ``shape``;
    an empty or missing box becomes a 1-voxel box at the origin."""
    if box is None or any((s.stop or 0) <= (s.start or 0) for s in box):
        return tuple(slice(0, 1) for _ in shape)
    return tuple(slice(max(0, (s.start or 0) - pad), min(int(n), (s.stop if s.stop is not None else int(n)) + pad))
                 for s, n in zip(box, shape))


def profile_box(profiles: Sequence[np.ndarray], level: float) -> tuple[slice, ...] | None:
    """The box (slices, one per axis) from the first to the last index where each axis profile (e.g. the maximum
    of a volume over the other axes) is above ``level``; ``None`` when some profile never is."""
    box = []
    for prof in profiles:
        idx = np.flatnonzero(np.asarray(prof) > level)
        if idx.size == 0:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def above_box(data: np.ndarray, level: float, pad: int = 1) -> tuple[slice, ...]:
    """The bounding box (slices) of the voxels of a 3D array above ``level``, widened by ``pad`` voxels and
    clipped to the array (see :func:`crop_box`); a 1-voxel box at the origin when no voxel is above it."""
    arr = np.asarray(data)
    mask = arr > level
    plane = mask.any(axis=0)
    box = profile_box([mask.any(axis=(1, 2)), plane.any(axis=1), plane.any(axis=0)], 0)
    return crop_box(arr.shape, box, pad=pad)


def cropped_affine(affine: Array, box: Sequence[slice]) -> Array:
    """The voxel -> world affine of ``data[box]`` (its voxel (0, 0, 0) is ``box``'s first voxel)."""
    out = np.array(affine, dtype=float, copy=True)
    out[:3, 3] = out[:3, :3] @ np.array([s.start or 0 for s in box], dtype=float) + out[:3, 3]
    return out


def crop_cube(data: np.ndarray, affine: np.ndarray, center_mm: Sequence[float], size_mm: float,
              fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A cube of side ``size_mm`` (world mm) centred on the voxel nearest ``center_mm``, from (…, i, j, k) data.

    The cube has ``round(size_mm / voxel size)`` voxels per axis (odd counts centre the peak voxel exactly);
    parts outside the volume are ``fill``. Returns the cube and its affine (the same world positions).
    """
    if not size_mm > 0:
        raise UserError(f"the reference cube size must be > 0 mm, got {size_mm:g}.")
    arr = np.asarray(data)
    shape = arr.shape[-3:]
    centre = np.rint(world_to_vox(affine, np.asarray(center_mm, float))).astype(int)
    n = np.maximum(1, np.rint(float(size_mm) / voxel_sizes(affine)).astype(int))
    start = centre - n // 2
    out = np.full(arr.shape[:-3] + tuple(int(v) for v in n), fill, dtype=arr.dtype)
    src, dst = [], []
    for a in range(3):
        lo, hi = max(0, start[a]), min(int(shape[a]), start[a] + n[a])
        if hi <= lo:
            return out, cropped_affine(affine, [slice(int(s), None) for s in start])
        src.append(slice(int(lo), int(hi)))
        dst.append(slice(int(lo - start[a]), int(hi - start[a])))
    lead = (slice(None),) * (arr.ndim - 3)
    out[lead + tuple(dst)] = arr[lead + tuple(src)]
    return out, cropped_affine(affine, [slice(int(s), None) for s in start])
