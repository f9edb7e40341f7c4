"""Max-sensitivity and rank stability of an attribution map under small input perturbations (Yeh et al. 2019;
docs/evaluation.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from ..errors import UserError
from ..methods.registry import RunContext
from ..volumes import Volume
from .perturbations import RADIUS, REFERENCE, check_count, finite_mean, intensity_ranges, json_number, uniform_perturbations



@dataclass
class SensitivityResult:
    """Relative changes of a method's map under random input perturbations (docs/evaluation.md)."""

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
        return finite_mean(self.sensitivities)

    @property
    def rank_stability(self) -> float:
        """Mean Spearman correlation of the perturbed maps with the original (undefined ones left out)."""
        return finite_mean(self.spearman)

    def record(self) -> dict:
        return {"measure": "max-sensitivity", "reference": REFERENCE, "method": self.method, "target": self.target,
                "target_name": self.target_name, "radius": self.radius, "radii": self.radii,
                "samples": len(self.sensitivities), "seed": self.seed, "norm_original": self.norm,
                "max_sensitivity": json_number(self.max), "mean_sensitivity": json_number(self.mean),
                "rank_stability": json_number(self.rank_stability),
                "sensitivities": [json_number(v) for v in self.sensitivities], "differences": self.differences,
                "spearman": [json_number(v) for v in self.spearman], "notes": list(self.notes)}


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
        check_count(samples, "the number of sensitivity samples")
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
