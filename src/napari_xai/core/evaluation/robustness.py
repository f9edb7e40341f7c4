"""Max-sensitivity, rank stability and infidelity of attribution maps (Yeh et al. 2019); formulas in docs/evaluation.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..errors import Cancelled, UserError
from ..methods.registry import RunContext
from ..volumes import Volume

__all__ = ["INFIDELITY_KINDS", "InfidelityResult", "SensitivityResult", "evaluate", "infidelity",
           "infidelity_perturbations", "intensity_ranges", "is_contribution_map", "max_sensitivity",
           "uniform_perturbations"]

#: Captum's default radius of ``sensitivity_max`` (here relative to the intensity range).
RADIUS = 0.02
#: Infidelity perturbations: Gaussian noise, or one cube set to the baseline.
INFIDELITY_KINDS = ("gaussian", "square")
NOISE = 0.1
CUBE = 8
REFERENCE = "Yeh et al. 2019, On the (in)fidelity and sensitivity of explanations"
#: Registry families whose maps are amounts of score (they sum to a score difference), and such gradient-family methods.
def is_contribution_map(method: str) -> bool:
    """Whether ``method``'s map multiplies by the input (an amount of score per voxel), not a sensitivity.

    LRP and the perturbation family (occlusion, region ablation, LIME,
    KernelSHAP) and input × gradient, integrated gradients, DeepLIFT and
    GradientSHAP are; saliency, SmoothGrad, guided backprop, deconvolution,
    the CAM family and attention gates are not.
    """
    from ..methods.catalogue import get_method

    entry = get_method(method)
    return entry.multiplies_input


def intensity_ranges(data: np.ndarray) -> np.ndarray:
    """(C,) max − min of each channel of (C, i, j, k) data over its finite voxels; 1 for a constant channel."""
    d = np.asarray(data, dtype=np.float64)
    out = np.ones(d.shape[0])
    for c in range(d.shape[0]):
        v = d[c][np.isfinite(d[c])]
        span = float(v.max() - v.min()) if v.size else 0.0
        out[c] = span if span > 0 else 1.0
    return out


def _rng(seed: int) -> np.random.Generator:
    if int(seed) < 0:
        raise UserError(f"the seed must be a non-negative integer, got {seed}.")
    return np.random.default_rng(int(seed))


def _channel(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)[:, None, None, None]


def uniform_perturbations(shape: tuple, radii: np.ndarray, samples: int, seed: int) -> Iterator[np.ndarray]:
    """The δ of :func:`max_sensitivity`: uniform in [−r_c, r_c] per voxel of channel c (see the module docstring)."""
    rng = _rng(seed)
    for _ in range(int(samples)):
        yield rng.uniform(-1.0, 1.0, size=tuple(shape)) * _channel(radii)


def infidelity_perturbations(data: np.ndarray, kind: str = "gaussian", samples: int = 64, seed: int = 0, *,
                             noise: float = NOISE, cube: int = CUBE, baseline: str = "zero") -> Iterator[np.ndarray]:
    """The I of :func:`infidelity` for the input ``data`` (C, i, j, k) (see the module docstring)."""
    from .flipping import replacement

    data = np.asarray(data, dtype=np.float32)
    rng = _rng(seed)
    if kind == "gaussian":
        sigma = _channel(float(noise) * intensity_ranges(data))
        for _ in range(int(samples)):
            yield rng.standard_normal(data.shape) * sigma
    elif kind == "square":
        removed = data.astype(np.float64) - replacement(data, baseline)
        edges = [min(int(cube), n) for n in data.shape[1:]]
        for _ in range(int(samples)):
            corner = [int(rng.integers(0, n - e + 1)) for n, e in zip(data.shape[1:], edges)]
            sl = (slice(None),) + tuple(slice(c, c + e) for c, e in zip(corner, edges))
            out = np.zeros(data.shape)
            out[sl] = removed[sl]
            yield out
    else:
        raise UserError(f"infidelity perturbation must be one of {', '.join(INFIDELITY_KINDS)}, got {kind!r}.")


def _check_counts(samples: int, what: str) -> None:
    if int(samples) < 1:
        raise UserError(f"{what} must be at least 1, got {samples}.")


def _finite_mean(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _num(v: float):
    """NaN is not JSON: ``None``."""
    return float(v) if np.isfinite(v) else None


# --------------------------------------------------------------------------- max-sensitivity


@dataclass
class SensitivityResult:
    """Relative changes of a method's map under random input perturbations (see the module docstring)."""

    method: str
    target: int
    target_name: str
    radius: float  # relative to the intensity range
    radii: list[float]  # absolute, per channel
    seed: int
    norm: float  # ||Φ(x)||
    sensitivities: list[float]  # ||Φ(x+δ) − Φ(x)|| / ||Φ(x)|| per sample
    differences: list[float]  # ||Φ(x+δ) − Φ(x)|| per sample
    spearman: list[float]  # rank correlation of each perturbed map with the original
    notes: list[str] = field(default_factory=list)

    @property
    def max(self) -> float:
        v = np.asarray(self.sensitivities, dtype=float)
        return float(np.nanmax(v)) if np.isfinite(v).any() else float("nan")

    @property
    def mean(self) -> float:
        return _finite_mean(self.sensitivities)

    @property
    def rank_stability(self) -> float:
        """Mean Spearman correlation of the perturbed maps with the original (undefined ones left out)."""
        return _finite_mean(self.spearman)

    def record(self) -> dict:
        return {"measure": "max-sensitivity", "reference": REFERENCE, "method": self.method, "target": self.target,
                "target_name": self.target_name, "radius": self.radius, "radii": self.radii,
                "samples": len(self.sensitivities), "seed": self.seed, "norm_original": self.norm,
                "max_sensitivity": _num(self.max), "mean_sensitivity": _num(self.mean),
                "rank_stability": _num(self.rank_stability),
                "sensitivities": [_num(v) for v in self.sensitivities], "differences": self.differences,
                "spearman": [_num(v) for v in self.spearman], "notes": list(self.notes)}


def max_sensitivity(
    volume: Volume,
    model: Any,
    method: str,
    params: dict | None = None,
    target: int | str | None = None,
    *,
    radius: float = RADIUS,
    samples: int = 10,
    seed: int = 0,
    original: Any = None,
    perturbations: Iterable[np.ndarray] | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **explain_kwargs,
) -> SensitivityResult:
    """Max-sensitivity, mean sensitivity and rank stability of ``method``'s map of ``volume``.

    Parameters
    ----------
    radius : float
        L∞ radius relative to each channel's intensity range (default 0.02, Captum's).
    samples : int
        Number of perturbations (one :func:`explain` call each).
    seed : int
        Seeds the perturbations and every :func:`explain` call.
    original : Relevance, optional
        The unperturbed map, if already computed with the same arguments (saves one call).
    perturbations : iterable of arrays, optional
        Use these δ (each (C, i, j, k) on the input grid) instead of random ones; ``samples`` is then ignored.
    explain_kwargs
        Go to every :func:`explain` call (``normalization``, ``input_shape``,
        ``segmentation``, ``mask``, ``point``, ``output_index``).
    """
    from ..explain import explain, same_target_kwargs
    from .similarity import rank_correlation, ranks

    if not np.isfinite(radius) or float(radius) < 0:
        raise UserError(f"the sensitivity radius must be a non-negative number, got {radius}.")
    if perturbations is None:
        _check_counts(samples, "the number of sensitivity samples")
    ctx = RunContext(progress=progress, should_stop=should_stop)
    n = int(samples) if perturbations is None else None
    total = (n or 1) + 1

    def sub(k: int, label: str):
        return lambda f, msg: ctx.step((k + min(max(f, 0.0), 1.0)) / total, f"{label}: {msg}")

    if original is None:
        original = explain(volume, model, method, params=params, target=target, seed=seed,
                           progress=sub(0, "original"), should_stop=should_stop, **explain_kwargs)
    kwargs = same_target_kwargs(original, explain_kwargs)
    data = volume.model_copy()
    radii = float(radius) * intensity_ranges(data)
    if perturbations is None:
        perturbations = uniform_perturbations(data.shape, radii, n, seed)
    phi = np.asarray(original.data, dtype=np.float64)
    norm = float(np.linalg.norm(phi))
    ranks0 = ranks(phi.sum(axis=0))
    notes: list[str] = []
    if norm == 0:
        notes.append("the original map is zero everywhere: relative sensitivity is undefined")
    sens, diffs, rho = [], [], []
    for k, delta in enumerate(perturbations, start=1):
        delta = np.asarray(delta, dtype=np.float64)
        if delta.shape != data.shape:
            raise UserError(f"perturbation {k} has shape {delta.shape} but the input has {data.shape}.")
        moved = Volume(data=(data + delta).astype(np.float32), affine=volume.affine, header=volume.header,
                       name=volume.name, source=volume.source)
        rel = explain(moved, model, original.method, params=params, target=original.target, seed=seed,
                      progress=sub(k, f"perturbation {k}" + (f"/{n}" if n else "")), should_stop=should_stop,
                      **kwargs)
        for w in rel.warnings:
            msg = f"perturbed input: {w}"
            if w not in original.warnings and msg not in notes:
                notes.append(msg)
        other = np.asarray(rel.data, dtype=np.float64)
        d = float(np.linalg.norm(other - phi))
        diffs.append(d)
        sens.append(d / norm if norm > 0 else float("nan"))
        rho.append(rank_correlation(ranks0, ranks(other.sum(axis=0))))
    if not sens:
        raise UserError("no perturbation to measure the sensitivity with.")
    ctx.step(1.0, f"{len(sens)} perturbations")
    return SensitivityResult(method=original.method, target=int(original.target), target_name=original.target_name,
                             radius=float(radius), radii=[float(r) for r in radii], seed=int(seed), norm=norm,
                             sensitivities=sens, differences=diffs, spearman=rho, notes=notes)


# --------------------------------------------------------------------------- infidelity


@dataclass
class InfidelityResult:
    """Squared error of I·Φ as a predictor of the score change f(x) − f(x − I) (see the module docstring)."""

    kind: str
    settings: dict  # noise / cube and baseline
    seed: int
    target: int
    target_name: str
    normalize: bool
    dots: list[float]  # I_k · Φ (with multiply_by_inputs: I_k / (x − baseline) · Φ)
    deltas: list[float]  # f(x) − f(x − I_k)
    notes: list[str] = field(default_factory=list)
    multiply_by_inputs: bool = False

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.dots, dtype=np.float64), np.asarray(self.deltas, dtype=np.float64)

    @property
    def beta(self) -> float:
        """The scale of Φ that fits the score changes best (least squares); 0 when every I·Φ is 0."""
        a, b = self._arrays()
        den = float((a * a).sum())
        return float((a * b).sum() / den) if den > 0 else 0.0

    @property
    def raw(self) -> float:
        a, b = self._arrays()
        return float(np.mean((a - b) ** 2))

    @property
    def normalized(self) -> float:
        a, b = self._arrays()
        return float(np.mean((self.beta * a - b) ** 2))

    @property
    def value(self) -> float:
        return self.normalized if self.normalize else self.raw

    @property
    def unexplained(self) -> float:
        """:attr:`value` / mean Δf²: with ``normalize``, the share of the score changes the map does not
        predict (0 = all, 1 = no better than predicting no change; never above 1). NaN when no score changed."""
        msq = float(np.mean(self._arrays()[1] ** 2))
        return self.value / msq if msq > 0 else float("nan")

    def record(self) -> dict:
        return {"measure": "infidelity", "reference": REFERENCE, "perturbation": self.kind, **self.settings,
                "samples": len(self.dots), "seed": self.seed, "target": self.target, "target_name": self.target_name,
                "normalize": self.normalize, "multiply_by_inputs": self.multiply_by_inputs, "infidelity": self.value, "infidelity_raw": self.raw,
                "infidelity_normalized": self.normalized, "beta": self.beta,
                "mean_squared_score_change": float(np.mean(self._arrays()[1] ** 2)),
                "unexplained": _num(self.unexplained),
                "dots": self.dots, "deltas": self.deltas, "notes": list(self.notes)}


def infidelity(
    model: Any,
    volume: Volume,
    relevance: np.ndarray,
    target: int | str | None = None,
    *,
    kind: str = "gaussian",
    samples: int = 64,
    seed: int = 0,
    noise: float = NOISE,
    cube: int = CUBE,
    baseline: str = "zero",
    normalize: bool = True,
    multiply_by_inputs: bool = False,
    perturbations: Iterable[np.ndarray] | None = None,
    scorer: Any = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **scorer_kwargs,
) -> InfidelityResult:
    """Infidelity of the map ``relevance`` of ``volume`` for the model's ``target`` (see the module docstring).

    Parameters
    ----------
    relevance : np.ndarray
        (C, i, j, k) or (i, j, k) on the volume's grid; a 3D map counts for every channel.
    kind : str
        ``gaussian`` (noise of std ``noise`` × intensity range) or ``square``
        (a cube of edge ``cube`` voxels set to ``baseline``).
    multiply_by_inputs : bool
        ``relevance`` is a contribution map: use I / (x − baseline) in the dot
        product (square removal only; see the module docstring).
    perturbations : iterable of arrays, optional
        Use these I (each (C, i, j, k)) instead of random ones; ``samples`` is then ignored.
    scorer : perturbation.Scorer, optional
        Fixes model, target and grid; otherwise made from ``target`` and ``scorer_kwargs``
        (``normalization``, ``input_shape``, ``segmentation``, ``mask``, ``point``, ``output_index``).
    """
    from .flipping import BASELINES, BATCH, Scorer

    if kind not in INFIDELITY_KINDS:
        raise UserError(f"infidelity perturbation must be one of {', '.join(INFIDELITY_KINDS)}, got {kind!r}.")
    if kind == "gaussian" and not (np.isfinite(noise) and float(noise) > 0):
        raise UserError(f"the infidelity noise must be a positive number, got {noise}.")
    if kind == "square" and int(cube) < 1:
        raise UserError(f"the cube edge must be at least 1 voxel, got {cube}.")
    if baseline not in BASELINES:
        raise UserError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}.")
    if multiply_by_inputs and kind != "square":
        raise UserError("multiply_by_inputs divides the perturbation by x − baseline, which needs square removal; "
                        "dividing gaussian noise by near-zero intensities is meaningless.")
    if perturbations is None:
        _check_counts(samples, "the number of infidelity samples")
    data = volume.model_copy()
    phi = np.asarray(relevance, dtype=np.float64)
    if phi.ndim == 3 and phi.shape == data.shape[1:]:
        phi = np.broadcast_to(phi, data.shape)
    if phi.shape != data.shape:
        raise UserError(f"the relevance has shape {phi.shape} but the input has {data.shape}; explain this input first.")
    phi = np.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)
    span = None
    if multiply_by_inputs:
        from .flipping import replacement

        span = data.astype(np.float64) - replacement(data, baseline)
    scorer = scorer or Scorer(model, volume, target, **scorer_kwargs)
    t = scorer.target
    f0 = float(scorer.base_logits[t])
    if perturbations is None:
        perturbations = infidelity_perturbations(data, kind, samples, seed, noise=noise, cube=cube, baseline=baseline)
        n: int | None = int(samples)
    else:
        n = None
    stop = should_stop or (lambda: False)
    dots: list[float] = []
    deltas: list[float] = []

    def flush(batch: list[np.ndarray]) -> None:
        if stop():
            raise Cancelled("cancelled by the user")
        z = scorer.logits(batch)[:, t]
        deltas.extend(f0 - float(v) for v in z)
        if progress is not None:
            progress(min(1.0, len(deltas) / n) if n else 0.5, f"infidelity: {len(deltas)}" + (f"/{n}" if n else "")
                     + " perturbations")

    batch: list[np.ndarray] = []
    for k, pert in enumerate(perturbations, start=1):
        pert = np.asarray(pert, dtype=np.float64)
        if pert.shape != data.shape:
            raise UserError(f"perturbation {k} has shape {pert.shape} but the input has {data.shape}.")
        share = pert if span is None else np.divide(pert, span, out=np.zeros_like(pert), where=span != 0)
        dots.append(float((share * phi).sum()))
        batch.append((data - pert).astype(np.float32))
        if len(batch) == BATCH:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    if not dots:
        raise UserError("no perturbation to measure the infidelity with.")
    notes = []
    if not any(dots):
        notes.append("I·Φ is 0 for every perturbation (a zero map, or perturbations where the map is 0)")
    if not any(deltas):
        notes.append("no perturbation changed the target score")
    settings = {"noise": float(noise)} if kind == "gaussian" else {"cube": int(cube), "baseline": baseline}
    name = scorer.names[t] if t < len(scorer.names) else str(t)
    return InfidelityResult(kind=kind, settings=settings, seed=int(seed), target=int(t), target_name=name,
                            normalize=bool(normalize), dots=dots, deltas=deltas, notes=notes,
                            multiply_by_inputs=bool(multiply_by_inputs))


# --------------------------------------------------------------------------- both, for one method


def evaluate(
    volume: Volume,
    model: Any,
    method: str,
    params: dict | None = None,
    target: int | str | None = None,
    *,
    radius: float = RADIUS,
    samples: int = 10,
    kind: str = "gaussian",
    noise: float = NOISE,
    cube: int = CUBE,
    baseline: str = "zero",
    infidelity_samples: int = 64,
    normalize: bool = True,
    multiply_by_inputs: bool | str = False,
    seed: int = 0,
    scorer: Any = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **explain_kwargs,
) -> dict:
    """Explain once, then :func:`max_sensitivity` and :func:`infidelity` of that map.

    Returns ``{"relevance": Relevance, "sensitivity": SensitivityResult,
    "infidelity": InfidelityResult, "scorer": Scorer}``. A ``scorer`` (for the
    same target) may be shared between methods; otherwise one is made for the
    map's class. ``multiply_by_inputs="auto"`` sets it for contribution maps
    (:func:`is_contribution_map`) under square removal.
    """
    from ..explain import explain, same_target_kwargs
    from .flipping import Scorer

    ctx = RunContext(progress=progress, should_stop=should_stop)
    share = {"explain": 0.05, "sensitivity": 0.85}

    def part(lo: float, hi: float, label: str):
        return lambda f, msg: ctx.step(lo + (hi - lo) * min(max(f, 0.0), 1.0), f"{label}: {msg}")

    rel = explain(volume, model, method, params=params, target=target, seed=seed,
                  progress=part(0.0, share["explain"], "original"), should_stop=should_stop, **explain_kwargs)
    hi = share["explain"] + share["sensitivity"]
    sens = max_sensitivity(volume, model, method, params, radius=radius, samples=samples, seed=seed, original=rel,
                           progress=part(share["explain"], hi, "sensitivity"), should_stop=should_stop,
                           **explain_kwargs)
    if scorer is None or scorer.target != rel.target:
        scorer = Scorer(model, volume, rel.target, **same_target_kwargs(rel, explain_kwargs))
    if multiply_by_inputs == "auto":
        multiply_by_inputs = kind == "square" and is_contribution_map(rel.method)
    infd = infidelity(model, volume, rel.data, kind=kind, samples=infidelity_samples, seed=seed, noise=noise,
                      cube=cube, baseline=baseline, normalize=normalize, multiply_by_inputs=bool(multiply_by_inputs),
                      scorer=scorer,
                      progress=part(hi, 1.0, "infidelity"), should_stop=should_stop)
    ctx.step(1.0, "done")
    return {"relevance": rel, "sensitivity": sens, "infidelity": infd, "scorer": scorer}
