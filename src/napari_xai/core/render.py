"""A light offscreen 3D picture of a volume and its relevance, without OpenGL, Qt or napari.

:func:`render_3d` casts parallel rays through the volume in world millimetres (through its affine, so any voxel
order and size is drawn the right way up): the anatomy is drawn as a shaded surface (the first crossing of an
intensity threshold along each ray, lit from the viewer), the overlays as maximum-intensity projections blended
additively over it -- the look of napari's 3D view with the relevance layers' MIP and additive blending
(docs/architecture.md, "Display of signed relevance"). ``napari-xai demo --headless`` writes its PNG with it, in
a fraction of a second where starting a napari viewer on a virtual display took seconds (docs/performance.md).
"""

from __future__ import annotations

import math

import numpy as np

from .geometry import vox_to_world

#: The default view: from the front left, below (azimuth/elevation in degrees, RAS world).
DEFAULT_VIEW = (-45.0, -35.0)


def hot(v: np.ndarray) -> np.ndarray:
    """napari's/matplotlib's ``hot`` colormap of values in [0, 1]: (..., 3) float in [0, 1]."""
    return np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)


def cyan(v: np.ndarray) -> np.ndarray:
    """napari's ``cyan`` colormap (black to cyan) of values in [0, 1]."""
    return np.stack([np.zeros_like(v), v, v], axis=-1)


def view_basis(azimuth_deg: float, elevation_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right, up and viewing direction (unit vectors, world RAS) of a camera at ``azimuth`` degrees around the
    superior axis (0 = in front of the face, 90 = at the subject's right) and ``elevation`` degrees above the
    axial plane, looking at the centre."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    eye = np.array([math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)])  # camera position
    forward = -eye
    up0 = np.array([0.0, 0.0, 1.0])
    right = np.cross(forward, up0)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return right, up / np.linalg.norm(up), forward


def render_3d(
    anatomy: np.ndarray,
    affine: np.ndarray,
    relevance: np.ndarray | None = None,
    limits: tuple[float, float] | None = None,
    view: tuple[float, float] = DEFAULT_VIEW,
    pixel_mm: float = 1.5,
    step_mm: float = 2.5,
    threshold: float | None = None,
    upscale: int = 3,
) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 of ``anatomy`` (i, j, k) with signed ``relevance`` over it, seen from ``view``.

    Parameters
    ----------
    anatomy : (i, j, k) array
        Intensities; drawn as the surface where they first exceed ``threshold`` along each ray.
    affine : (4, 4) array
        Voxel -> world mm of ``anatomy`` and ``relevance`` (one grid).
    relevance : (i, j, k) array, optional
        Signed map: its positive part is drawn ``hot``, its negative part ``cyan``, each as a maximum-intensity
        projection scaled from ``limits[0]`` (black) to ``limits[1]`` (full colour) and added to the picture.
    limits : (lo, hi)
        Magnitude limits of both parts (e.g. ``_layers.relevance_limits``); default: 0 and the largest |r|.
    view : (azimuth, elevation) in degrees
        See :func:`view_basis`.
    pixel_mm, step_mm : float
        Pixel size and spacing of the samples along each ray, in mm.
    threshold : float, optional
        Surface intensity; default: 35 % of the median of the voxels above the mean (the tissue).
    upscale : int
        The picture is rendered at ``pixel_mm`` and enlarged this many times (bicubic).
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from scipy import ndimage

    anatomy = np.asarray(anatomy, dtype=np.float32)
    affine = np.asarray(affine, dtype=float)
    shape = np.asarray(anatomy.shape, dtype=float)
    smooth = ndimage.gaussian_filter(anatomy, 0.7)
    if threshold is None:
        tissue = smooth[smooth > smooth.mean()]
        threshold = 0.35 * float(np.median(tissue)) if tissue.size else float(smooth.max()) / 2
    inside = np.argwhere(smooth > threshold)
    if inside.size == 0:
        inside = np.array([[0, 0, 0], shape - 1])
    # the frame: the box around the tissue (one voxel wider), projected on the camera's axes
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
    lo_v, hi_v = inside.min(axis=0) - 1.0, inside.max(axis=0) + 1.0
    box = vox_to_world(affine, lo_v + corners * (hi_v - lo_v))
    centre = box.mean(axis=0)
    right, up, forward = view_basis(*view)
    ext = np.abs((box - centre) @ np.stack([right, up, forward]).T).max(axis=0) + 2 * pixel_mm
    n_cols, n_rows = (int(math.ceil(2 * e / pixel_mm)) for e in ext[:2])
    n_steps = int(math.ceil(2 * ext[2] / step_mm))
    a = (np.arange(n_cols) - (n_cols - 1) / 2) * pixel_mm  # image columns (right), rows (down), depth
    b = -(np.arange(n_rows) - (n_rows - 1) / 2) * pixel_mm
    t = (np.arange(n_steps) - (n_steps - 1) / 2) * step_mm
    # voxel coordinates of the world point centre + a*right + b*up + t*forward, in grid_sample's units
    to_norm = np.diag(np.r_[2.0 / np.maximum(shape - 1.0, 1.0), 1.0]) @ np.linalg.inv(affine)
    to_norm[:3, 3] -= 1.0
    m = to_norm[:3, :3]
    origin = m @ centre + to_norm[:3, 3]
    ca, cb, ct = m @ right, m @ up, m @ forward
    channels = [smooth] if relevance is None else [smooth, np.asarray(relevance, dtype=np.float32)]
    vol = torch.from_numpy(np.ascontiguousarray(np.stack(channels)))[None]  # (1, C, I, J, K)
    base = origin + a[None, :, None] * ca + b[:, None, None] * cb  # (rows, cols, 3): (i, j, k)
    base_t = torch.from_numpy(base[..., ::-1].astype(np.float32).copy())  # grid_sample wants (k, j, i)
    ct_t = torch.from_numpy(ct[::-1].astype(np.float32).copy())
    depth = np.full((n_rows, n_cols), np.nan, dtype=np.float32)
    pos = np.zeros((n_rows, n_cols), dtype=np.float32)
    neg = np.zeros((n_rows, n_cols), dtype=np.float32)
    prev = None
    chunk = 16
    with torch.no_grad():
        for s0 in range(0, n_steps, chunk):
            ts = torch.from_numpy(t[s0:s0 + chunk].astype(np.float32))
            grid = base_t[None] + ts[:, None, None, None] * ct_t  # (steps, rows, cols, 3)
            vals = F.grid_sample(vol, grid[None], mode="bilinear", padding_mode="zeros", align_corners=True)[0]
            vals = vals.numpy()  # (C, steps, rows, cols)
            if relevance is not None:
                np.maximum(pos, vals[1].max(axis=0), out=pos)
                np.maximum(neg, -vals[1].min(axis=0), out=neg)
            anat = vals[0] if prev is None else np.concatenate([prev[None], vals[0]])
            t_seg = t[s0:s0 + chunk] if prev is None else t[s0 - 1:s0 + chunk]
            prev = vals[0][-1]
            above = anat > threshold
            hit = above[1:] & ~above[:-1]  # the ray enters the tissue between two samples
            found = hit.any(axis=0) & np.isnan(depth)
            if found.any():
                r, c = np.nonzero(found)
                k = hit.argmax(axis=0)[r, c]
                v0, v1 = anat[k, r, c], anat[k + 1, r, c]
                frac = (threshold - v0) / np.maximum(v1 - v0, 1e-12)
                depth[r, c] = t_seg[k] + frac * (t_seg[k + 1] - t_seg[k])
    hit_mask = ~np.isnan(depth)
    near = float(np.nanmin(depth)) if hit_mask.any() else 0.0
    d = np.where(hit_mask, depth, float(np.nanmax(depth)) if hit_mask.any() else 0.0)
    d = ndimage.gaussian_filter(d, 1.0)
    gy, gx = np.gradient(d, pixel_mm)  # rows go down (-up), columns go right
    normal = np.stack([gx, -gy, -np.ones_like(d)], axis=-1)  # facing the camera, in (right, up, forward) axes
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-0.35, 0.45, -1.0])
    light /= np.linalg.norm(light)
    lambert = np.clip((normal * light).sum(-1), 0.0, 1.0)
    fog = 1.0 - 0.45 * np.clip((d - near) / max(ext[2], 1e-6), 0, 1)
    grey = np.where(hit_mask, (0.12 + 0.78 * lambert ** 1.5) * fog, 0.0)
    rgb = grey[..., None] * np.array([0.92, 0.9, 0.88])
    if relevance is not None:
        lo, hi = limits if limits is not None else (0.0, float(max(pos.max(), neg.max(), 1e-12)))
        scale = 1.0 / max(hi - lo, 1e-12)
        rgb = rgb + hot(np.clip((pos - lo) * scale, 0, 1)) + cyan(np.clip((neg - lo) * scale, 0, 1))
    img = (np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
    if upscale > 1:
        img = np.asarray(Image.fromarray(img).resize((n_cols * upscale, n_rows * upscale), Image.BICUBIC))
    return img
