"""Robustness of attribution maps: max-sensitivity and rank stability (``sensitivity.py``), infidelity
(``infidelity.py``) and :func:`evaluate`, both for one method (Yeh et al. 2019; formulas in docs/evaluation.md)."""

from __future__ import annotations

from typing import Any, Callable

from ..methods.registry import RunContext
from ..volumes import Volume
from .infidelity import InfidelityResult, infidelity
from .perturbations import (CUBE, INFIDELITY_KINDS, NOISE, RADIUS, REFERENCE, infidelity_perturbations, intensity_ranges,
                            uniform_perturbations)
from .sensitivity import SensitivityResult, max_sensitivity

__all__ = ["CUBE", "INFIDELITY_KINDS", "InfidelityResult", "NOISE", "RADIUS", "REFERENCE", "SensitivityResult",
           "evaluate", "infidelity", "infidelity_perturbations", "intensity_ranges", "is_contribution_map",
           "max_sensitivity", "uniform_perturbations"]


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
