"""The Atlas object: label or probabilistic atlas in world mm, region lookups, label volumes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..geometry import (
    grid_bbox,
    voxel_sizes,
    world_to_vox,
)
from .probability import check_threshold, probability_scale, sparse_from_4d

DEFAULT_PROB_THRESHOLD = 0.25
"""Default probability threshold (fraction) for the maximum-probability labelling."""

# Tie-break for nearest-neighbour rounding (in atlas voxels): a world point exactly
# half-way between two atlas voxel centres goes to the higher index, both in
# lookups and in resampling, so the two always agree.
TIE_EPS = 1e-4

# --------------------------------------------------------------------------------------
# atlas objects


@dataclass(frozen=True)
class Region:
    """One atlas region.

    ``value`` is the region's value in our label volumes; ``index`` its index in
    the labels file (equal to ``value`` for label atlases, ``value - 1`` for
    probabilistic atlases and for FSL label XMLs).
    """

    value: int
    index: int
    name: str
    color: tuple[float, float, float, float] | None = None


@dataclass
class Lookup:
    """What an atlas says about one world point.

    ``name`` is "" outside every region. For probabilistic atlases,
    ``probability`` is the most probable region's probability (fraction) and
    ``probabilities`` lists every region with non-zero probability there,
    most probable first; ``below_threshold`` says that the most probable region
    is under the labelling threshold (so it has no outline there).
    """

    xyz_mm: tuple[float, float, float]
    value: int
    name: str
    index: int | None = None
    probability: float | None = None
    probabilities: list[tuple[str, float]] = field(default_factory=list)
    below_threshold: bool = False
    atlas_voxel: tuple[int, int, int] | None = None

    @property
    def inside(self) -> bool:
        return bool(self.name)


def format_lookup(lk: Lookup, atlas_title: str = "") -> str:
    """One line for the status bar, e.g. ``MNI (-25.0, -20.0, -15.0) mm · AAL2: Hippocampus_L``."""
    x, y, z = lk.xyz_mm
    where = f"MNI ({x:.1f}, {y:.1f}, {z:.1f}) mm"
    prefix = f"{atlas_title}: " if atlas_title else ""
    if not lk.name:
        return f"{where} · {prefix}no region"
    text = lk.name
    if lk.probability is not None:
        text += f" {lk.probability * 100:.0f}%"
        if lk.below_threshold:
            text += " (below threshold)"
    return f"{where} · {prefix}{text}"


class Atlas:
    """A label or probabilistic atlas in world coordinates.

    Build with :func:`load_atlas` (built-in name or user files) or
    :meth:`from_arrays`. Arrays are never modified.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        affine: np.ndarray,
        shape: tuple[int, int, int],
        regions: dict[int, Region],
        *,
        labels: np.ndarray | None = None,
        sparse: dict[str, np.ndarray] | None = None,
        source: str = "",
        key: Any = None,
        warnings_: Iterable[str] = (),
    ) -> None:
        self.name = name
        self.kind = kind
        self.affine = np.asarray(affine, dtype=float)
        self.shape = tuple(int(s) for s in shape)
        self.regions = dict(regions)
        self._labels = labels
        self._sparse = sparse
        self.source = source
        self.key = key if key is not None else ("anon", id(self))
        self.warnings = list(warnings_)
        self._inv = np.linalg.inv(self.affine)
        self._lock = threading.Lock()
        self._threshold_cache: dict[float, np.ndarray] = {}

    # --- construction -------------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        data: np.ndarray,
        affine: np.ndarray,
        names: Mapping[int, str] | None = None,
        *,
        name: str = "atlas",
        colors: Mapping[int, tuple] | None = None,
        fsl_label_offset: bool = False,
        source: str = "",
        key: Any = None,
    ) -> "Atlas":
        """Build an atlas from a 3D label image or a 4D probability image (i, j, k, regions).

        ``names`` maps labels-file indices to names (for 4D: volume index from 0).
        ``fsl_label_offset``: the names come from an FSL label XML, where image
        value = index + 1.
        """
        arr = np.asanyarray(data)
        if arr.ndim == 4 and arr.shape[3] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (3, 4):
            raise UserError(f"atlas {name} is {arr.ndim}D with shape {arr.shape}; an atlas is a 3D label image or a 4D probability image.")
        if min(arr.shape[:3]) < 1:
            raise UserError(f"atlas {name} has an empty shape {arr.shape}.")
        if arr.ndim == 3:
            return cls._from_labels(arr, affine, names, name=name, colors=colors, fsl_label_offset=fsl_label_offset, source=source, key=key)
        return cls._from_probabilities(arr, affine, names, name=name, colors=colors, source=source, key=key)

    @classmethod
    def _from_labels(cls, arr, affine, names, *, name, colors, fsl_label_offset, source, key) -> "Atlas":
        msgs: list[str] = []
        if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise UserError(f"atlas {name} has data type {arr.dtype}; an atlas needs integer labels.")
        if np.issubdtype(arr.dtype, np.floating):
            finite = np.isfinite(arr)
            if not finite.all():
                raise UserError(f"atlas {name} has NaN/Inf voxels; a label atlas holds integer labels only.")
            frac = arr != np.round(arr)
            if frac.any():
                where = tuple(int(v) for v in np.argwhere(frac)[0])
                raise UserError(
                    f"atlas {name} is not an integer label image (value {float(arr[where]):g} at voxel {where}); "
                    "give a label image, or a 4D probability image."
                )
        amin = arr.min()
        if amin < 0:
            raise UserError(f"atlas {name} has negative labels (min {amin:g}); labels must be >= 0.")
        amax = int(arr.max())
        if amax == 0:
            raise UserError(f"atlas {name} has no labelled voxel (all zeros).")
        present, counts = np.unique(arr, return_counts=True)
        present = present.astype(np.int64)
        names = dict(names or {})
        offset = 1 if fsl_label_offset else 0
        by_value: dict[int, tuple[int, str]] = {}
        for idx, nm in names.items():
            by_value[int(idx) + offset] = (int(idx), nm)
        # background names at value 0 are not regions
        if 0 in by_value:
            by_value.pop(0)
        values = [int(v) for v in present if v != 0]
        if amax > 65535:  # compact the values so label volumes stay uint16 (fast on the GPU)
            if len(values) > 65535:
                raise UserError(f"atlas {name} has {len(values)} regions; at most 65,535 are supported.")
            lut = np.zeros(amax + 1, dtype=np.uint16)
            lut[values] = np.arange(1, len(values) + 1, dtype=np.uint16)
            labels = lut[np.asarray(arr, dtype=np.int64)]
            value_of = {v: i + 1 for i, v in enumerate(values)}
            msgs.append(f"atlas {name} has label values up to {amax}; they are renumbered 1..{len(values)} (the file's values stay in the region index).")
        else:
            labels = np.asarray(arr, dtype=np.uint16)
            value_of = {v: v for v in values}
        regions: dict[int, Region] = {}
        missing = []
        for v in values:
            idx, nm = by_value.get(v, (v - offset, ""))
            if not nm:
                missing.append(v)
                nm = f"label {v}"
            col = None
            if colors and idx in colors:
                col = tuple(float(c) for c in colors[idx])
            regions[value_of[v]] = Region(value=value_of[v], index=idx, name=nm, color=col)
        if missing:
            cnt = {int(v): int(c) for v, c in zip(present, counts)}
            shown = ", ".join(f"{v} ({cnt[v]} voxels)" for v in missing[:10])
            more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
            msgs.append(f"atlas {name}: the labels file has no name for label value(s) {shown}{more}; they are shown as 'label N'.")
        extra = sorted(set(by_value) - set(values))
        if names and extra:
            shown = ", ".join(str(by_value[v][0]) for v in extra[:10])
            more = f" and {len(extra) - 10} more" if len(extra) > 10 else ""
            msgs.append(f"atlas {name}: the labels file lists index(es) {shown}{more} that do not occur in the atlas image.")
        if names and not set(by_value) & set(values):
            raise UserError(
                f"atlas {name}: none of the labels file's indices occur in the image (image values {values[:5]}..., "
                f"file indices {sorted(names)[:5]}...); is it the right labels file?"
            )
        return cls(name, "labels", affine, labels.shape, regions, labels=labels, source=source, key=key, warnings_=msgs)

    @classmethod
    def _from_probabilities(cls, arr, affine, names, *, name, colors, source, key) -> "Atlas":
        msgs: list[str] = []
        nreg = int(arr.shape[3])
        if nreg > 65534:
            raise UserError(f"atlas {name} has {nreg} probability volumes; at most 65,534 are supported.")
        scale = probability_scale(arr, name)
        sparse = sparse_from_4d(arr, scale)
        regions, more = prob_regions(nreg, names, colors, name)
        msgs.extend(more)
        return cls(name, "probabilistic", affine, arr.shape[:3], regions, sparse=sparse, source=source, key=key, warnings_=msgs)

    # --- basic facts --------------------------------------------------------------
    @property
    def sparse(self) -> dict[str, np.ndarray] | None:
        """Compact storage of a probabilistic atlas (None for label atlases); read-only by convention."""
        return self._sparse

    @property
    def is_probabilistic(self) -> bool:
        return self.kind == "probabilistic"

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in voxel_sizes(self.affine))  # type: ignore[return-value]

    def region(self, value: int) -> Region | None:
        return self.regions.get(int(value))

    def name_of(self, value: int) -> str:
        """Region name of a label value; "" for background or unknown values."""
        r = self.regions.get(int(value))
        return r.name if r is not None else ""

    def find_regions(self, text: str) -> list[Region]:
        """Regions whose name contains ``text`` (case-insensitive)."""
        t = text.strip().lower()
        return [r for r in self.regions.values() if t in r.name.lower()]

    def world_bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """(min, max) world corners (mm) of the atlas image, voxel edges included."""
        return grid_bbox(self.shape, self.affine)

    # --- label volumes ------------------------------------------------------------
    def label_volume(self, threshold: float = DEFAULT_PROB_THRESHOLD) -> np.ndarray:
        """uint16 label volume on the atlas's own grid.

        For probabilistic atlases: the maximum-probability labelling, 0 where
        the highest probability is below ``threshold`` (a fraction).
        """
        if self._labels is not None:
            return self._labels
        thr = check_threshold(threshold)
        with self._lock:
            if thr not in self._threshold_cache:
                sp = self._sparse
                assert sp is not None
                keep = sp["maxprob"] >= thr - 1e-6
                out = np.zeros(int(np.prod(self.shape)), dtype=np.uint16)
                out[sp["vox"][keep]] = sp["argmax"][keep] + 1
                self._threshold_cache[thr] = out.reshape(self.shape, order="F")
                if len(self._threshold_cache) > 4:
                    self._threshold_cache.pop(next(iter(self._threshold_cache)))
            return self._threshold_cache[thr]

    # --- lookup ---------------------------------------------------------------------
    def atlas_voxels(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest atlas voxel (N, 3) of world points (N, 3), and a mask of points inside the image."""
        c = world_to_vox(self.affine, np.asarray(xyz, dtype=float).reshape(-1, 3))
        ijk = np.floor(c + 0.5 + TIE_EPS).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.asarray(self.shape)), axis=1)
        return ijk, inside

    def values_at(self, xyz: np.ndarray, threshold: float = DEFAULT_PROB_THRESHOLD) -> np.ndarray:
        """Region values (int64) at world points (N, 3) in mm; 0 outside every region.

        Vectorised; the same rule as the nearest-neighbour resampling, so
        ``values_at(world of voxel centre)`` equals the resampled label there.
        """
        ijk, inside = self.atlas_voxels(xyz)
        out = np.zeros(len(ijk), dtype=np.int64)
        if inside.any():
            lab = self.label_volume(threshold)
            i, j, k = ijk[inside].T
            out[inside] = lab[i, j, k]
        return out

    def probabilities_at(self, xyz: Sequence[float]) -> list[tuple[Region, float]]:
        """All regions with non-zero probability at one world point, most probable first.

        For a label atlas: the one region there with probability 1.
        """
        ijk, inside = self.atlas_voxels(np.asarray(xyz, dtype=float)[None])
        if not inside[0]:
            return []
        i, j, k = (int(v) for v in ijk[0])
        if self._labels is not None:
            v = int(self._labels[i, j, k])
            return [(self.regions[v], 1.0)] if v in self.regions else []
        sp = self._sparse
        assert sp is not None
        flat = i + self.shape[0] * (j + self.shape[1] * k)
        vox_sorted = sp["vox"]
        pos = int(np.searchsorted(vox_sorted, vox_sorted.dtype.type(flat)))  # same dtype: no array copy
        if pos >= len(vox_sorted) or vox_sorted[pos] != flat:
            return []
        a, b = int(sp["ptr"][pos]), int(sp["ptr"][pos + 1])
        return [(self.regions[int(r) + 1], round(float(p), 6)) for r, p in zip(sp["reg"][a:b], sp["prob"][a:b])]

    def lookup(self, xyz: Sequence[float], threshold: float = DEFAULT_PROB_THRESHOLD) -> Lookup:
        """Region at one world point (mm): the label there, or the most probable region."""
        xyz_t = tuple(float(v) for v in np.asarray(xyz, dtype=float).reshape(3))
        ijk, inside = self.atlas_voxels(np.asarray(xyz_t)[None])
        vox = tuple(int(v) for v in ijk[0]) if inside[0] else None
        if vox is None:
            return Lookup(xyz_t, 0, "", atlas_voxel=None)
        if self._labels is not None:
            v = int(self._labels[vox])
            r = self.regions.get(v)
            return Lookup(xyz_t, v if r else 0, r.name if r else "", index=r.index if r else None, atlas_voxel=vox)
        probs = self.probabilities_at(xyz_t)
        if not probs:
            return Lookup(xyz_t, 0, "", probability=0.0, atlas_voxel=vox)
        top, p = probs[0]
        thr = check_threshold(threshold)
        below = p < thr - 1e-6
        return Lookup(
            xyz_t,
            0 if below else top.value,
            top.name,
            index=top.index,
            probability=p,
            probabilities=[(r.name, q) for r, q in probs],
            below_threshold=below,
            atlas_voxel=vox,
        )

    def __repr__(self) -> str:
        return f"Atlas({self.name!r}, {self.kind}, shape={self.shape}, voxel={self.voxel_mm} mm, regions={len(self.regions)})"


def prob_regions(nreg: int, names: Mapping[int, str] | None, colors: Mapping[int, tuple] | None, name: str) -> tuple[dict[int, Region], list[str]]:
    """Regions (value = volume index + 1) and naming warnings of a probabilistic atlas."""
    msgs: list[str] = []
    names = dict(names or {})
    if names:
        keys = set(names)
        if keys == set(range(1, nreg + 1)) and 0 not in keys:
            names = {k - 1: v for k, v in names.items()}
            msgs.append(f"atlas {name}: the labels file counts volumes from 1; it is read as volume index + 1.")
    regions: dict[int, Region] = {}
    missing = []
    for r in range(nreg):
        nm = names.get(r, "")
        if not nm:
            missing.append(r)
            nm = f"volume {r}"
        col = tuple(float(c) for c in colors[r]) if colors and r in colors else None
        regions[r + 1] = Region(value=r + 1, index=r, name=nm, color=col)
    if names and missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        msgs.append(f"atlas {name}: the labels file has no name for probability volume(s) {shown} (counted from 0).")
    extra = sorted(k for k in names if not 0 <= k < nreg)
    if extra:
        shown = ", ".join(map(str, extra[:10])) + (f" and {len(extra) - 10} more" if len(extra) > 10 else "")
        msgs.append(f"atlas {name}: the labels file lists index(es) {shown} but the image has only {nreg} volumes (0..{nreg - 1}).")
    return regions, msgs
