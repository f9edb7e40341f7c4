"""Infidelity: how well I·Φ predicts the score change f(x) − f(x − I) under perturbations I (Yeh et al. 2019;
docs/evaluation.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import Cancelled, UserError
from ..volumes import Volume
from .perturbations import (CUBE, INFIDELITY_KINDS, NOISE, REFERENCE, check_count, infidelity_perturbations,
                            json_number, removed_part)



@dataclass
class InfidelityResult:
    """Squared error of I·Φ as a predictor of the score change f(x) − f(x − I) (docs/evaluation.md)."""

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
                "unexplained": json_number(self.unexplained),
                "dots": self.dots, "deltas": self.deltas, "notes": list(self.notes)}


def _check_options(kind: str, noise: float, cube: int, baseline: str, multiply_by_inputs: bool) -> None:
    """One-line UserErrors for infidelity options that cannot work, before any model call."""
    from .flipping import BASELINES

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
    """Infidelity of the map ``relevance`` of ``volume`` for the model's ``target`` (docs/evaluation.md).

    Parameters
    ----------
    relevance : np.ndarray
        (C, i, j, k) or (i, j, k) on the volume's grid; a 3D map counts for every channel.
    kind : str
        ``gaussian`` (noise of std ``noise`` × intensity range) or ``square``
        (a cube of edge ``cube`` voxels set to ``baseline``).
    multiply_by_inputs : bool
        ``relevance`` is a contribution map: use I / (x − baseline) in the dot
        product (square removal only; docs/evaluation.md).
    perturbations : iterable of arrays, optional
        Use these I (each (C, i, j, k)) instead of random ones; ``samples`` is then ignored.
    scorer : perturbation.Scorer, optional
        Fixes model, target and grid; otherwise made from ``target`` and ``scorer_kwargs``
        (``normalization``, ``input_shape``, ``segmentation``, ``mask``, ``point``, ``output_index``).
    """
    from .flipping import Scorer

    _check_options(kind, noise, cube, baseline, multiply_by_inputs)
    if perturbations is None:
        check_count(samples, "the number of infidelity samples")
    data = volume.model_copy()
    phi = np.asarray(relevance, dtype=np.float64)
    if phi.ndim == 3 and phi.shape == data.shape[1:]:
        phi = np.broadcast_to(phi, data.shape)
    if phi.shape != data.shape:
        raise UserError(f"the relevance has shape {phi.shape} but the input has {data.shape}; explain this input first.")
    phi = np.nan_to_num(phi, nan=0.0, posinf=0.0, neginf=0.0)
    span = None
    if multiply_by_inputs:
        span = removed_part(data, baseline)
    scorer = scorer or Scorer(model, volume, target, **scorer_kwargs)
    t = scorer.target
    if perturbations is None:
        perturbations = infidelity_perturbations(data, kind, samples, seed, noise=noise, cube=cube, baseline=baseline)
        n: int | None = int(samples)
    else:
        n = None
    dots, deltas = _dots_and_deltas(scorer, data, phi, span, perturbations, n, progress, should_stop)
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


def _dots_and_deltas(scorer: Any, data: np.ndarray, phi: np.ndarray, span: np.ndarray | None,
                     perturbations: Iterable[np.ndarray], n: int | None, progress: Callable[[float, str], None] | None,
                     should_stop: Callable[[], bool] | None) -> tuple[list[float], list[float]]:
    """I·Φ (I / span · Φ with a ``span``) and f(x) − f(x − I) for every perturbation I, scored in batches."""
    from .flipping import BATCH

    t = scorer.target
    f0 = float(scorer.base_logits[t])
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
    return dots, deltas
