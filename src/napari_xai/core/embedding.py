"""Dimensionality reduction of learned features: a cohort's subjects as points, and which ones lie apart.

A network's representation of a subject is the activation of one layer, most
often the features the classifier reads (the input of the last linear layer).
Reduced to two dimensions they show how the network separates the subjects
and which subjects it sees as unusual (review: Huff et al. 2021, Phys Med
Biol 66 04TR01, section 2.2; Faust et al. 2018 used the nearest neighbours of
such an embedding to find outliers). The pieces here are pure;
``napari-xai embed`` (``cli/embed.py``) runs them over a cohort:

* :func:`features` - one subject's activation vector at a layer, from one
  no-grad forward pass on exactly the input :func:`napari_xai.core.explain.explain`
  gives the model, read with a forward hook. Spatial maps are averaged over
  space (global average pooling: one value per channel) unless ``pool=False``;
* :func:`pca` - principal components by SVD of the centred (optionally
  standardised) subject x feature matrix;
* :func:`knn_outliers` - each subject's mean distance to its k nearest other
  subjects, a robust z-score of that distance, the flag, and (with labels) the
  share of neighbours with the same label;
* :func:`pc_correlations` - Pearson's r of each component with each covariate.

PCA is linear: it keeps the directions of largest variance, not the
neighbourhoods t-SNE keeps. Distances in the space of *all* components equal
the distances between the centred (standardised) feature vectors, so the
outlier test on all components is the test in the feature space itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import UserError
from .volumes import Volume

__all__ = [
    "OUTLIER_Z",
    "LayerFeatures",
    "check_layer",
    "Outliers",
    "PCAResult",
    "features",
    "knn_outliers",
    "pc_correlations",
    "pca",
    "robust_z",
]

#: Robust z-score above which a subject is flagged (Iglewicz & Hoaglin 1993 recommend 3.5 for the modified z-score).
OUTLIER_Z = 3.5
_MAD_TO_SD = 0.6745  # the MAD of a normal distribution is 0.6745 standard deviations
_MEANAD_TO_SD = 0.7979  # the mean absolute deviation of a normal distribution is sqrt(2/pi) standard deviations
INPUT_SUFFIX = ":input"


@dataclass
class LayerFeatures:
    """One subject's activation vector at one layer, and the model's prediction from the same forward pass."""

    values: np.ndarray  # (F,) float64
    layer: str  # the spec that selects it again: "name" (output) or "name:input"
    description: str  # e.g. "input of classifier (Linear)"
    shape: tuple[int, ...]  # the activation's shape without the batch axis, before pooling
    pooled: bool  # spatial positions were averaged (one value per channel)
    probabilities: np.ndarray | None = None  # class probabilities (softmax; sigmoid for one output); None if no class scores
    class_names: list[str] = field(default_factory=list)

    @property
    def predicted(self) -> int | None:
        return None if self.probabilities is None else int(np.argmax(self.probabilities))


def _reduce(t: Any, pool: bool, channels_last: bool) -> np.ndarray:
    """A (1, ...) activation as a vector: spatial/token positions averaged per channel when ``pool``."""
    a = t.detach()[0].float()
    if pool and a.ndim >= 2:
        a = a.mean(dim=tuple(range(a.ndim - 1))) if channels_last else a.mean(dim=tuple(range(1, a.ndim)))
    return a.reshape(-1).cpu().numpy().astype(np.float64)


def _parse_layer(layer: str | None) -> tuple[str | None, bool]:
    text = "" if layer is None else str(layer).strip()
    if text.lower() in ("", "auto", "default", "penultimate"):
        return None, False
    if text.lower().endswith(INPUT_SUFFIX):
        return text[: -len(INPUT_SUFFIX)].strip(), True
    return text, False


def _layer_hint(modules: dict) -> str:
    names = [n for n in modules if n]
    shown = names[-8:]
    return ", ".join(shown) + (f" (and {len(names) - len(shown)} more)" if len(names) > len(shown) else "") if names else "none"


def check_layer(model: Any, layer: str | None) -> tuple[str | None, bool]:
    """``(module name or None for the default, whether its input is meant)``; a one-line error for a bad layer.

    Checks what can be checked without a forward pass: an eager module, and a
    name that exists in ``named_modules()``.
    """
    from .methods._model import require_hookable

    module = model.module
    require_hookable(model, "reading features", "forward hooks")
    name, want_input = _parse_layer(layer)
    modules = dict(module.named_modules())
    if name is not None and name not in modules:
        raise UserError(f"layer {name!r} does not exist in the model; layers include: {_layer_hint(modules)} "
                        f"(a name gives the module's output, NAME{INPUT_SUFFIX} its input).")
    return name, want_input


def features(model: Any, volume: Volume, layer: str | None = None, *, pool: bool = True,
             normalization: str | None = None, input_shape=None) -> LayerFeatures:
    """The activations of one layer for one subject, as a vector.

    Parameters
    ----------
    model : LoadedModel
        An eager ``nn.Module`` model (hooks do not reach inside TorchScript).
    volume : Volume
        The subject; it is prepared exactly as :func:`~napari_xai.core.explain.explain`
        prepares it (:func:`~napari_xai.core.explain.prepare_input`: resampling to the
        model grid and the model's intensity normalisation).
    layer : str, optional
        ``None`` (default): the input of the last ``nn.Linear`` that runs in the
        forward pass - the penultimate features the classifier reads; for a
        model without a linear layer, the output of the last leaf module whose
        output is a spatial map (N, C, ...). ``"name"``: the output of the module
        of that name (as in ``named_modules()``); ``"name:input"``: its input.
        A module that runs several times gives its last call.
    pool : bool
        Average spatial maps over their positions: an (N, C, d, h, w) map gives
        C values (global average pooling), the (N, T, F) input of a linear
        layer gives F values. A flat (N, F) activation is used as it is.
        ``False`` keeps every position (flattened in C order).
    normalization, input_shape
        Overrides of the model's normalisation and grid, as in ``explain``.

    Returns
    -------
    LayerFeatures
        The vector, the layer it came from, and the class probabilities of the
        same forward pass (``None`` when the output is not (N, classes) scores).
    """
    import torch
    from torch import nn

    from .explain import forward, prepare_input
    from .models import check_output

    module = model.module
    name, want_input = check_layer(model, layer)
    modules = dict(module.named_modules())
    found: dict[str, Any] = {}

    def keep(key: str, what: str, m: nn.Module, t: Any, channels_last: bool) -> None:
        # keep a copy (a later in-place op must not change it) and reduce once after the pass: the last call of
        # a layer wins, and the default layer's candidates are replaced many times
        if torch.is_tensor(t) and t.ndim >= 1 and t.shape[0] == 1:
            found[key] = (what, type(m).__name__, t.detach().clone(), channels_last)

    def make_hook(mname: str, m: nn.Module):
        leaf = not any(True for _ in m.children())

        def hook(mod, inputs, output):
            first = inputs[0] if isinstance(inputs, tuple) and inputs else None
            if name is None:
                if isinstance(mod, nn.Linear):
                    keep("auto", f"{mname}{INPUT_SUFFIX}", mod, first, True)
                elif leaf and torch.is_tensor(output) and output.ndim >= 3:
                    keep("spatial", mname, mod, output, False)
            elif mname == name:
                # a linear layer's features are on the last axis, everything else is channels-first
                keep("named", f"{mname}{INPUT_SUFFIX}" if want_input else mname, mod,
                     first if want_input else output, isinstance(mod, nn.Linear))

        return hook

    x, _, _, _ = prepare_input(volume, model, normalization, input_shape)
    targets = modules.items() if name is None else [(name, modules[name])]
    handles = [m.register_forward_hook(make_hook(n, m)) for n, m in targets]
    try:
        out = forward(module, x)
    finally:
        for h in handles:
            h.remove()
    got = found.get("named") or found.get("auto") or found.get("spatial")
    if got is None:
        if name is None:
            raise UserError("the model has no linear layer and no layer with a spatial output; choose a layer by name.")
        raise UserError(f"layer {name!r} returned no tensor for a single input in the forward pass (it did not run, "
                        "or returned a tuple); choose another layer.")
    spec, kind, t, channels_last = got
    shape = tuple(t.shape[1:])
    values = _reduce(t, pool and t.ndim > 2, channels_last)
    if not np.all(np.isfinite(values)):
        raise UserError(f"the features at {spec} contain NaN or Inf; check the input and its normalisation.")
    probs, names = None, []
    try:
        scores = check_output(out)
    except UserError:  # not class scores (a segmentation map, a tuple): features without a prediction
        scores = None
    if scores is not None:
        p = torch.sigmoid(scores)[0] if scores.shape[1] == 1 else torch.softmax(scores.float(), dim=1)[0]
        probs = p.detach().cpu().numpy().astype(float)
        names = model.class_names_for(len(probs))
    mname, is_input = (spec[: -len(INPUT_SUFFIX)], True) if spec.endswith(INPUT_SUFFIX) else (spec, False)
    desc = f"{'input' if is_input else 'output'} of {mname or 'the model'} ({kind})"
    return LayerFeatures(values=values, layer=spec, description=desc, shape=shape,
                         pooled=bool(pool and len(shape) > 1), probabilities=probs, class_names=names)


@dataclass
class PCAResult:
    """Principal components of an (n subjects, p features) matrix."""

    scores: np.ndarray  # (n, k): the subjects' coordinates on the components
    components: np.ndarray  # (k, p): unit-length directions in feature space
    explained_variance: np.ndarray  # (k,): variance along each component (n - 1 in the denominator)
    explained_variance_ratio: np.ndarray  # (k,): share of the total variance
    mean: np.ndarray  # (p,)
    scale: np.ndarray | None  # (p,) standard deviations divided out, or None


def pca(matrix: np.ndarray, k: int | None = 2, standardize: bool = False) -> PCAResult:
    """Principal component analysis by singular value decomposition (numpy only).

    The columns are centred (and, with ``standardize``, divided by their standard
    deviation; constant columns stay 0), then ``X = U S Vt``: the components are
    the rows of ``Vt``, the scores ``U S`` and the variances ``S**2 / (n - 1)``.
    ``k=None`` keeps every component (at most min(n, p)). A component's sign is
    arbitrary; it is fixed so that its loading of largest magnitude is positive.
    """
    x = np.asarray(matrix, dtype=np.float64)
    if x.ndim != 2:
        raise UserError(f"PCA needs a 2D (subjects, features) matrix, got shape {x.shape}.")
    n, p = x.shape
    if n < 2 or p < 1:
        raise UserError(f"PCA needs at least 2 subjects and 1 feature, got {n} subject(s) and {p} feature(s).")
    if not np.all(np.isfinite(x)):
        raise UserError("the feature matrix contains NaN or Inf.")
    mean = x.mean(axis=0)
    xc = x - mean
    scale = None
    if standardize:
        scale = xc.std(axis=0, ddof=1)
        scale[scale == 0] = 1.0
        xc = xc / scale
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    total = float((s**2).sum())
    if total <= 0 or not np.isfinite(total):
        raise UserError("every subject has the same features: there is no variance to reduce.")
    kk = min(n, p) if k is None else int(k)
    if kk < 1:
        raise UserError(f"the number of components must be at least 1, got {k}.")
    kk = min(kk, s.size)
    u, s, vt = u[:, :kk], s[:kk], vt[:kk]
    flip = np.sign(vt[np.arange(kk), np.argmax(np.abs(vt), axis=1)])
    flip[flip == 0] = 1.0
    vt = vt * flip[:, None]
    u = u * flip[None, :]
    return PCAResult(scores=u * s, components=vt, explained_variance=s**2 / (n - 1),
                     explained_variance_ratio=s**2 / total, mean=mean, scale=scale)


def robust_z(values: Sequence[float]) -> np.ndarray:
    """Modified z-scores ``0.6745 (v - median) / MAD`` (Iglewicz & Hoaglin 1993).

    When more than half the values are equal the MAD is 0; then the mean
    absolute deviation is used (``(v - median) / (1.2533 MeanAD)``), and if
    that is 0 too every score is 0. Deviations below 1e-9 of the values'
    magnitude count as 0, so round-off does not make large scores.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v
    med = float(np.median(v))
    dev = v - med
    tol = 1e-9 * float(np.abs(v).max())
    mad = float(np.median(np.abs(dev)))
    if mad > tol:
        return _MAD_TO_SD * dev / mad
    meanad = float(np.mean(np.abs(dev)))
    if meanad > tol:
        return _MEANAD_TO_SD * dev / meanad
    return np.zeros_like(v)


@dataclass
class Outliers:
    """Nearest-neighbour distances of each subject and which subjects lie apart."""

    distance: np.ndarray  # (n,) mean distance to the k nearest other subjects
    z: np.ndarray  # (n,) robust z-score of ``distance``
    flagged: np.ndarray  # (n,) bool: z > threshold
    neighbours: np.ndarray  # (n, k) indices of the k nearest other subjects, nearest first
    k: int
    threshold: float
    agreement: np.ndarray | None = None  # (n,) share of the k neighbours with the subject's label (with labels)


def knn_outliers(points: np.ndarray, k: int = 3, threshold: float = OUTLIER_Z, labels: Sequence | None = None) -> Outliers:
    """Mean Euclidean distance of each subject to its ``k`` nearest other subjects, scored robustly.

    ``points`` are rows (subjects) of PCA scores or of features. The score of a
    subject is the mean distance to its k nearest neighbours; it is flagged when
    the robust z-score of that distance (:func:`robust_z`: median and MAD over
    the subjects) exceeds ``threshold`` (default 3.5). Only large distances
    count: a subject in a dense region is not an outlier. With ``labels`` (e.g.
    the predicted classes) ``agreement`` is the share of each subject's k
    neighbours that carry the same label, the k-nearest-neighbour check of
    Faust et al. (2018): a subject whose neighbours mostly have another label
    sits among the other class.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n = x.shape[0]
    if int(k) != k or k < 1:
        raise UserError(f"k (nearest neighbours) must be a positive integer, got {k}.")
    k = int(k)
    if n < k + 1:
        raise UserError(f"{k} nearest neighbours need at least {k + 1} subjects, got {n}; use a smaller k.")
    if not np.all(np.isfinite(x)):
        raise UserError("the points contain NaN or Inf.")
    d = np.stack([np.sqrt(((x - x[i]) ** 2).sum(axis=1)) for i in range(n)])
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    dist = np.take_along_axis(d, order, axis=1).mean(axis=1)
    z = robust_z(dist)
    agreement = None
    if labels is not None:
        lab = np.asarray(list(labels), dtype=object)
        if lab.shape[0] != n:
            raise UserError(f"{lab.shape[0]} labels for {n} subjects.")
        agreement = np.array([np.mean(lab[order[i]] == lab[i]) for i in range(n)], dtype=float)
    return Outliers(distance=dist, z=z, flagged=z > float(threshold), neighbours=order, k=k,
                    threshold=float(threshold), agreement=agreement)


def pc_correlations(scores: np.ndarray, covariates: dict[str, Sequence[float]], n_components: int = 2) -> list[dict]:
    """Pearson's r (and p, n) of each of the first components with each numeric covariate.

    ``covariates[name]`` holds one value per row of ``scores`` (NaN = missing,
    left out pairwise). The sign of r follows the sign convention of :func:`pca`,
    which is arbitrary: read |r|, or the sign against the scatter plot.
    """
    from .cohort import pearson

    s = np.asarray(scores, dtype=float)
    out = []
    for c in range(min(int(n_components), s.shape[1])):
        for name, values in covariates.items():
            r, p, n = pearson(s[:, c], values)
            out.append({"component": f"PC{c + 1}", "covariate": name, "n": n, "r": r, "p": p})
    return out
