"""Similarity of two relevance maps (Spearman, SSIM, top-k overlap) and the randomization test's verdict."""

from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = ["METRICS", "MODES", "TEST_NAME", "VERDICT_THRESHOLD", "MapComparer", "compare_maps", "rank_correlation", "rank_similarity", "ranks", "spearman", "ssim", "top_overlap", "verdict"]

#: Keys of the similarity metrics in every row, in table order.
MODES = ("cascading", "independent")
METRICS = ("spearman", "spearman_abs", "ssim", "top_overlap")
TEST_NAME = "model-parameter randomization (Adebayo et al. 2018)"
#: Rule of thumb of :func:`verdict`: a rank correlation with the original at or above this, with the top
#: layer random, means the map barely depends on what the model learned.
VERDICT_THRESHOLD = 0.5



# --------------------------------------------------------------------------- similarity metrics


def ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n of the flattened values, ties sharing their average rank."""
    from scipy.stats import rankdata

    return rankdata(np.asarray(a, dtype=np.float64).ravel(), method="average")


def rank_correlation(ra: np.ndarray, rb: np.ndarray) -> float:
    da, db = ra - ra.mean(), rb - rb.mean()
    den = float(np.sqrt((da * da).sum() * (db * db).sum()))
    return float((da * db).sum() / den) if den > 0 else float("nan")


def _same_size(a: np.ndarray, b: np.ndarray) -> None:
    if a.size != b.size:
        raise UserError(f"maps of {a.size} and {b.size} values cannot be compared; give maps of one grid.")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two arrays of one size (ties get their average rank).

    The Pearson correlation of the ranks; ``nan`` when either array is
    constant (the correlation is undefined).
    """
    a, b = np.asarray(a), np.asarray(b)
    _same_size(a, b)
    return rank_correlation(ranks(a), ranks(b))


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, data_range: float | None = None) -> float:
    """Mean structural similarity (Wang et al. 2004) of two arrays of one shape, any dimension.

    Local means, variances and the covariance are Gaussian-weighted (σ in
    voxels, ``scipy.ndimage.gaussian_filter``); C1 = (0.01 L)², C2 = (0.03 L)²
    with ``L = data_range`` (default: the joint max minus min, 1 if that is 0).
    """
    from scipy.ndimage import gaussian_filter

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise UserError(f"maps of shapes {a.shape} and {b.shape} cannot be compared; give maps of one grid.")
    if data_range is None:
        data_range = float(max(a.max(), b.max()) - min(a.min(), b.min())) if a.size else 1.0
    L = float(data_range) if data_range > 0 else 1.0
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2

    def blur(v: np.ndarray) -> np.ndarray:
        return gaussian_filter(v, sigma)

    mu_a, mu_b = blur(a), blur(b)
    var_a = np.maximum(blur(a * a) - mu_a * mu_a, 0.0)
    var_b = np.maximum(blur(b * b) - mu_b * mu_b, 0.0)
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def _top(a: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest |values| (ties: the earlier index first)."""
    return np.argsort(-np.abs(np.asarray(a, dtype=np.float64).ravel()), kind="stable")[:k]


def _top_k(size: int, fraction: float) -> int:
    if not 0 < fraction <= 1:
        raise UserError(f"the top fraction must be in (0, 1], got {fraction}.")
    return max(1, int(round(fraction * size)))


def _overlap(top_a: np.ndarray, top_b: np.ndarray, jaccard: bool = False) -> float:
    k = top_a.size
    inter = np.intersect1d(top_a, top_b, assume_unique=True).size
    return float(inter / (2 * k - inter) if jaccard else inter / k)


def top_overlap(a: np.ndarray, b: np.ndarray, fraction: float = 0.05, jaccard: bool = False) -> float:
    """Overlap of the top ``fraction`` of voxels by |value| of two maps.

    With k = max(1, round(fraction · voxels)): |A ∩ B| / k (the share of
    ``a``'s top voxels that are also on top in ``b``), or with ``jaccard``
    |A ∩ B| / |A ∪ B|. Two unrelated maps give about ``fraction``.
    """
    a, b = np.asarray(a), np.asarray(b)
    _same_size(a, b)
    k = _top_k(a.size, fraction)
    return _overlap(_top(a, k), _top(b, k), jaccard)


def _as_map(m: np.ndarray) -> np.ndarray:
    """A (C, i, j, k) relevance is compared channel-summed, as the other tools show it."""
    m = np.asarray(m, dtype=np.float64)
    return m.sum(axis=0) if m.ndim == 4 else m


def _unit_abs(m: np.ndarray) -> np.ndarray:
    v = np.abs(m)
    top = float(v.max()) if v.size else 0.0
    return v / top if top > 0 else v


class MapComparer:
    """The similarities of maps to one ``original`` (its ranks and top voxels computed once).

    :meth:`compare` gives ``spearman``, ``spearman_abs``, ``ssim`` and
    ``top_overlap`` as defined in the module docstring, plus the other map's
    ``max_abs``. Maps of shape (C, i, j, k) are summed over channels first.
    """

    def __init__(self, original: np.ndarray, top_fraction: float = 0.05, sigma: float = 1.5):
        self.map = _as_map(original)
        self.sigma = float(sigma)
        self.k = _top_k(self.map.size, top_fraction)
        self.ranks = ranks(self.map)
        self.ranks_abs = ranks(np.abs(self.map))
        self.unit = _unit_abs(self.map)
        self.top = _top(self.map, self.k)

    def compare(self, other: np.ndarray) -> dict:
        b = _as_map(other)
        if b.shape != self.map.shape:
            raise UserError(f"maps of shapes {self.map.shape} and {b.shape} cannot be compared; give maps of one grid.")
        return {
            "spearman": rank_correlation(self.ranks, ranks(b)),
            "spearman_abs": rank_correlation(self.ranks_abs, ranks(np.abs(b))),
            "ssim": ssim(self.unit, _unit_abs(b), sigma=self.sigma, data_range=1.0),
            "top_overlap": _overlap(self.top, _top(b, self.k)),
            "max_abs": float(np.abs(b).max()) if b.size else 0.0,
        }


def compare_maps(original: np.ndarray, other: np.ndarray, top_fraction: float = 0.05, sigma: float = 1.5) -> dict:
    """The four similarities of ``other`` to ``original`` (see :class:`MapComparer`)."""
    return MapComparer(original, top_fraction, sigma).compare(other)


# --------------------------------------------------------------------------- verdict


def rank_similarity(row: dict) -> float:
    """The larger of a row's two rank correlations with the original (signed maps and |maps|).

    Undefined correlations (a map that became constant) are left out; ``nan``
    when both are undefined. An anti-correlated map counts as changed (its
    value is negative), not as similar.
    """
    vals = [float(row[k]) for k in ("spearman", "spearman_abs") if np.isfinite(row.get(k, float("nan")))]
    return max(vals) if vals else float("nan")


def _fmt(v: float) -> str:
    return f"{v:.2f}" if np.isfinite(v) else "undefined (constant map)"


def verdict(rows: list[dict], mode: str = "cascading", threshold: float = VERDICT_THRESHOLD) -> dict:
    """A one-line verdict on a randomization test: a rule of thumb, not a statistical test.

    The similarity of a step is :func:`rank_similarity`. Step 1 randomizes
    the top parametrised layer (the output end, e.g. the classifier) in both
    modes.

    * ``cascading``: the map **fails** when any step's similarity is
      ``>= threshold`` (every step has at least the top layer random), else it
      passes.
    * ``independent``: the map fails when step 1 (only the top layer random)
      is ``>= threshold``; the other layers alone that leave the map that
      similar are listed (norm layers under ``init="normal"`` usually do).

    Returns ``passes``, ``step`` and ``layer`` of the deciding row, its
    ``similarity``, the ``threshold``, the ``similar_layers`` (independent
    mode) and the ``text``.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    steps = [r for r in rows if r["step"] > 0]
    if not steps:
        raise UserError("the test has no randomization step to judge.")
    sims = [rank_similarity(r) for r in steps]
    if mode == "cascading":
        finite = [i for i, v in enumerate(sims) if np.isfinite(v)]
        k = max(finite, key=lambda i: sims[i]) if finite else 0
    else:
        k = 0
    row, sim = steps[k], sims[k]
    passes = not (np.isfinite(sim) and sim >= threshold)
    if mode == "independent":
        where = f"with only '{row['layer']}' randomized"
    elif row["step"] == 1:
        where = f"with '{row['layer']}' randomized"
    else:
        where = f"with the top {row['step']} layers randomized (down to '{row['layer']}')"
    similar = [r["layer"] for r, v in zip(steps, sims) if np.isfinite(v) and v >= threshold] if mode == "independent" else []
    if passes:
        worst = "at most " if mode == "cascading" and len(steps) > 1 and np.isfinite(sim) else ""
        scope = f"once '{steps[0]['layer']}' is randomized" if mode == "cascading" else where
        text = f"map changes with the weights: passes (rank correlation {worst}{_fmt(sim)} {scope}; threshold {threshold:g})"
    else:
        text = f"map barely changes: fails, rank correlation {_fmt(sim)} {where} (threshold {threshold:g})"
    if similar:
        names = ", ".join(similar[:3]) + (", …" if len(similar) > 3 else "")
        text += f"; randomized alone, {len(similar)} of {len(steps)} layers leave it at ≥ {threshold:g}: {names}"
    return {"passes": bool(passes), "step": int(row["step"]), "layer": row["layer"], "similarity": sim,
            "threshold": float(threshold), "similar_layers": similar, "text": text}


