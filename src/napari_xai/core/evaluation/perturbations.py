"""What max-sensitivity and infidelity share: their constants, the random perturbations and small helpers (Yeh et al.
2019; formulas in docs/evaluation.md)."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import UserError

#: Captum's default radius of ``sensitivity_max`` (here relative to the intensity range).
RADIUS = 0.02
#: Infidelity perturbations: Gaussian noise, or one cube set to the baseline.
INFIDELITY_KINDS = ("gaussian", "square")
NOISE = 0.1
CUBE = 8
REFERENCE = "Yeh et al. 2019, On the (in)fidelity and sensitivity of explanations"


def intensity_ranges(data: np.ndarray) -> np.ndarray:
    """(C,) max − min of each channel of (C, i, j, k) data over its finite voxels; 1 for a constant channel."""
    d = np.asarray(data, dtype=np.float64)
    out = np.ones(d.shape[0])
    for c in range(d.shape[0]):
        v = d[c][np.isfinite(d[c])]
        span = float(v.max() - v.min()) if v.size else 0.0
        out[c] = span if span > 0 else 1.0
    return out


def seeded_rng(seed: int) -> np.random.Generator:
    """numpy's generator for a non-negative ``seed`` (a one-line UserError otherwise)."""
    if int(seed) < 0:
        raise UserError(f"the seed must be a non-negative integer, got {seed}.")
    return np.random.default_rng(int(seed))


def per_channel(v: np.ndarray) -> np.ndarray:
    """(C,) values shaped (C, 1, 1, 1), to scale (C, i, j, k) data per channel."""
    return np.asarray(v, dtype=np.float64)[:, None, None, None]


def removed_part(data: np.ndarray, baseline: str) -> np.ndarray:
    """x − baseline: what square removal takes away at each voxel (float64)."""
    from .flipping import replacement

    return data.astype(np.float64) - replacement(data, baseline)


def uniform_perturbations(shape: tuple, radii: np.ndarray, samples: int, seed: int) -> Iterator[np.ndarray]:
    """The δ of :func:`max_sensitivity`: uniform in [−r_c, r_c] per voxel of channel c (docs/evaluation.md)."""
    rng = seeded_rng(seed)
    for _ in range(int(samples)):
        yield rng.uniform(-1.0, 1.0, size=tuple(shape)) * per_channel(radii)


def infidelity_perturbations(data: np.ndarray, kind: str = "gaussian", samples: int = 64, seed: int = 0, *,
                             noise: float = NOISE, cube: int = CUBE, baseline: str = "zero") -> Iterator[np.ndarray]:
    """The I of :func:`infidelity` for the input ``data`` (C, i, j, k) (docs/evaluation.md)."""
    data = np.asarray(data, dtype=np.float32)
    rng = seeded_rng(seed)
    if kind == "gaussian":
        sigma = per_channel(float(noise) * intensity_ranges(data))
        for _ in range(int(samples)):
            yield rng.standard_normal(data.shape) * sigma
    elif kind == "square":
        removed = removed_part(data, baseline)
        edges = [min(int(cube), n) for n in data.shape[1:]]
        for _ in range(int(samples)):
            corner = [int(rng.integers(0, n - e + 1)) for n, e in zip(data.shape[1:], edges)]
            sl = (slice(None),) + tuple(slice(c, c + e) for c, e in zip(corner, edges))
            out = np.zeros(data.shape)
            out[sl] = removed[sl]
            yield out
    else:
        raise UserError(f"infidelity perturbation must be one of {', '.join(INFIDELITY_KINDS)}, got {kind!r}.")


def check_count(samples: int, what: str) -> None:
    """A one-line UserError unless ``samples`` is at least 1."""
    if int(samples) < 1:
        raise UserError(f"{what} must be at least 1, got {samples}.")


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values; NaN when there is none."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def json_number(v: float):
    """NaN is not JSON: ``None``."""
    return float(v) if np.isfinite(v) else None
