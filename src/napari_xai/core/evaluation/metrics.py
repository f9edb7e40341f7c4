"""Readouts of a relevance map against a mask (relevance mass and rank accuracy, inclusivity) and per-channel shares; definitions in docs/evaluation.md."""

from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = [
    "BINARIZE_MODES",
    "binarize",
    "channel_shares",
    "ground_truth_inclusivity",
    "inclusivity",
    "input_inclusivity",
    "mask_report",
    "rank_accuracy",
    "relevance_mass",
]

BINARIZE_MODES = ("positive", "negative", "nonzero")


def _spatial(relevance: np.ndarray) -> np.ndarray:
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 4:
        r = r.sum(axis=0)
    if r.ndim != 3:
        raise UserError(f"relevance must be (i, j, k) or (C, i, j, k), got shape {tuple(r.shape)}.")
    return r


def _mask(mask: np.ndarray, shape: tuple[int, ...], what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != tuple(shape):
        raise UserError(f"the {what} has shape {tuple(m.shape)} but the relevance has {tuple(shape)}; use a mask on the same grid.")
    m = m != 0
    if not m.any():
        raise UserError(f"the {what} is empty (no voxel set); paint the region first.")
    return m


def binarize(relevance: np.ndarray, mode: str = "positive", threshold: float = 0.0) -> np.ndarray:
    """Voxels where the (channel-summed) relevance counts as "highlighted".

    Parameters
    ----------
    relevance : np.ndarray
        (i, j, k) or (C, i, j, k).
    mode : str
        ``positive`` (R > t), ``negative`` (R < -t) or ``nonzero`` (|R| > t).
    threshold : float
        t, in relevance units (for a map scaled to [-1, 1]: a fraction of max|R|).
    """
    r = _spatial(relevance)
    if mode == "positive":
        return r > threshold
    if mode == "negative":
        return r < -threshold
    if mode == "nonzero":
        return np.abs(r) > threshold
    raise UserError(f"binarisation mode must be one of {', '.join(BINARIZE_MODES)}, got {mode!r}.")


def inclusivity(a: np.ndarray, b: np.ndarray, smooth: float = 0.0) -> float:
    """Inclusivity coefficient of ``b`` in ``a``: ``|a ∩ b| / (|b| + smooth)`` (Tjoa et al., Eqn. 2).

    1.0 when ``b`` is a subset of ``a``; ``smooth`` >= 0 is added to the denominator.
    """
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise UserError(f"inclusivity needs two masks of one shape, got {a.shape} and {b.shape}.")
    if smooth < 0:
        raise UserError(f"smooth must be >= 0, got {smooth}.")
    denom = float(b.sum()) + float(smooth)
    if denom == 0:
        raise UserError("the reference mask is empty, so its inclusivity is undefined; give a non-empty mask or smooth > 0.")
    return float(np.logical_and(a, b).sum()) / denom


def ground_truth_inclusivity(relevance: np.ndarray, ground_truth: np.ndarray, mode: str = "positive",
                             threshold: float = 0.0, smooth: float = 0.0) -> float:
    """``D(LRP, y_GT)``: the share of the ground-truth mask covered by the binarised relevance."""
    r = _spatial(relevance)
    gt = _mask(ground_truth, r.shape, "ground-truth mask")
    return inclusivity(binarize(r, mode, threshold), gt, smooth)


def input_inclusivity(relevance: np.ndarray, image: np.ndarray, input_threshold: float | None = None,
                      mode: str = "positive", threshold: float = 0.0, smooth: float = 0.0) -> float:
    """``D(LRP, x)``: the share of the bright input region covered by the binarised relevance.

    The input (i, j, k) or (C, i, j, k) (channels averaged) is binarised as
    ``x > input_threshold``; the default threshold is the mean intensity (the
    paper checks that "at least the input region with high intensity" is used).
    """
    r = _spatial(relevance)
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 4:
        x = x.mean(axis=0)
    if x.shape != r.shape:
        raise UserError(f"the image has shape {x.shape} but the relevance has {r.shape}; use the explained image.")
    thr = float(x.mean()) if input_threshold is None else float(input_threshold)
    region = x > thr
    if not region.any():
        raise UserError(f"no input voxel is brighter than {thr:g}; lower the input threshold.")
    return inclusivity(binarize(r, mode, threshold), region, smooth)


def relevance_mass(relevance: np.ndarray, mask: np.ndarray, sign: str = "positive") -> dict:
    """Relevance inside the mask: ``inside``, ``total`` and ``fraction = inside / total``.

    ``sign="positive"`` uses R+ only (relevance mass accuracy), ``"negative"``
    the magnitudes of R-, ``"absolute"`` |R| and ``"signed"`` R itself (its
    fraction may leave [0, 1]).
    """
    r = _spatial(relevance)
    m = _mask(mask, r.shape)
    if sign == "positive":
        v = np.clip(r, 0, None)
    elif sign == "negative":
        v = np.clip(-r, 0, None)
    elif sign == "absolute":
        v = np.abs(r)
    elif sign == "signed":
        v = r
    else:
        raise UserError(f"sign must be positive, negative, absolute or signed, got {sign!r}.")
    inside = float(v[m].sum())
    total = float(v.sum())
    return {"inside": inside, "total": total, "fraction": inside / total if total != 0 else float("nan"),
            "voxels": int(m.sum())}


def rank_accuracy(relevance: np.ndarray, mask: np.ndarray) -> float:
    """Relevance rank accuracy: of the K = |mask| voxels with the highest relevance, the fraction inside the mask.

    Ties at the K-th value are broken by voxel order (C order), so a constant
    map scores the mask's share of the first K voxels.
    """
    r = _spatial(relevance).ravel()
    m = _mask(mask, _spatial(relevance).shape).ravel()
    k = int(m.sum())
    if k >= r.size:
        return 1.0
    kth = np.partition(r, r.size - k)[r.size - k]  # the K-th largest value
    above = r > kth
    ties = np.flatnonzero(r == kth)[: k - int(above.sum())]
    return float(m[above].sum() + m[ties].sum()) / k


def channel_shares(relevance: np.ndarray, names: list[str] | None = None) -> list[dict]:
    """Per channel of (C, i, j, k) relevance: positive and negative sums and shares of the totals.

    Returns one dict per channel with ``channel``, ``name``, ``positive`` (sum of
    R+), ``negative`` (sum of R-, <= 0), ``net``, ``positive_share`` and
    ``negative_share`` (fractions of the sums over all channels; NaN when that
    total is 0).
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 3:
        r = r[None]
    if r.ndim != 4:
        raise UserError(f"relevance must be (C, i, j, k), got shape {tuple(r.shape)}.")
    c = r.shape[0]
    names = list(names) if names else [f"channel {i}" for i in range(c)]
    if len(names) != c:
        raise UserError(f"{len(names)} channel names for {c} channels.")
    pos = np.clip(r, 0, None).reshape(c, -1).sum(axis=1)
    neg = np.clip(r, None, 0).reshape(c, -1).sum(axis=1)
    tp, tn = float(pos.sum()), float(neg.sum())
    return [
        {
            "channel": i,
            "name": names[i],
            "positive": float(pos[i]),
            "negative": float(neg[i]),
            "net": float(pos[i] + neg[i]),
            "positive_share": float(pos[i]) / tp if tp else float("nan"),
            "negative_share": float(neg[i]) / tn if tn else float("nan"),
        }
        for i in range(c)
    ]


#: The four scalar readouts of :func:`mask_report` that tables show (relevance mass, rank accuracy, inclusivity).
MASK_READOUTS = ("relevance_mass", "rank_accuracy", "ground_truth_inclusivity", "input_inclusivity")


def mask_report(relevance: np.ndarray, mask: np.ndarray, image: np.ndarray | None = None, mode: str = "positive",
                threshold: float = 0.0, smooth: float = 0.0, input_threshold: float | None = None) -> dict:
    """All readouts against a ground-truth mask (channel-summed relevance), as one JSON-ready dict."""
    r = _spatial(relevance)
    out = {
        "mask_voxels": int(_mask(mask, r.shape).sum()),
        "relevance_mass": relevance_mass(r, mask, "positive")["fraction"],
        "relevance_mass_signed": relevance_mass(r, mask, "signed")["fraction"],
        "rank_accuracy": rank_accuracy(r, mask),
        "ground_truth_inclusivity": ground_truth_inclusivity(r, mask, mode, threshold, smooth),
        "binarisation": {"mode": mode, "threshold": float(threshold), "smooth": float(smooth)},
    }
    if image is not None:
        out["input_inclusivity"] = input_inclusivity(r, image, input_threshold, mode, threshold, smooth)
    return out
