"""The explorer's parameters (one frozen dataclass) and the cluster-size unit conversion."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .. import geometry
from ..errors import UserError

SCALES = ("none", "max", "percentile", "fixed")


FILTERS = ("none", "pass", "clamp")


SIGNS = ("both", "positive", "negative", "absolute")


CONNECTIVITIES = (6, 18, 26)


SIZE_UNITS = ("voxels", "mm3")


MAX_LABEL = int(np.iinfo(np.uint16).max)  # 65,535 clusters fit a uint16 label volume


GAUSS_TRUNCATE = 4.0  # kernel radius in σ


FRACTION_TOL = 1e-6  # tolerance of the fraction filters' bounds (float32 rounding)


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


def min_size_voxels(min_size: float, unit: str, affine: np.ndarray) -> float:
    """Minimum cluster size in voxels (may be fractional) from a size in ``unit``."""
    if unit == "mm3":
        return float(min_size) / geometry.voxel_volume_mm3(affine)
    return float(min_size)
