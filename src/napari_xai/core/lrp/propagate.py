"""The one LRP engine: ``run_config`` runs a configuration (a composite preset or a designer configuration).

It lists the layers, resolves the rules (``composites.py``), merges BatchNorm
(``canonizers.py``), runs the forward pass with residual sums made explicit and
the backward pass with Zennit's hooks (``rules.py``), captures relevance where
asked, and reports conservation (:func:`conservation_report`, one policy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn

from ..methods._model import check_scores, model_session, require_eager, trace_model
from ..methods.registry import MethodOutput, RunContext
from .canonizers import ResidualSums, merge_canonizer, verified_merges
from .capture import RelevanceCapture, RelevanceFilterHooks
from .composites import Resolved, default_config, final_rules, layer_map, resolve, unknown_layer
from .config import LrpConfig
from .params import formula, rule_conserves, rule_label
from .types import LayerInfo, list_layers, stabilizer_for

__all__ = [
    "CONSERVATION_TOLERANCE", "EXPLODE_RATIO", "VANISH_RATIO", "Propagation", "boundary_points",
    "conservation_report", "propagate", "run_config",
]

#: Conservation is reported as broken when |R_in / R_out - 1| exceeds this (for rules that should conserve).
CONSERVATION_TOLERANCE = 0.10
#: Whatever the rules, a relevance sum beyond this multiple of the output relevance is reported as "exploding".
EXPLODE_RATIO = 2.0
#: Whatever the rules, a relevance sum below this fraction of the output relevance is reported as "vanishing".
VANISH_RATIO = 0.05


# --------------------------------------------------------------------------- the pass


@dataclass
class Propagation:
    """What one LRP forward/backward pass produced (see :func:`propagate`)."""

    relevance: torch.Tensor  # (1, C, D, H, W) at the input, detached
    output_relevance: float  # the target score injected at the output
    merged_batchnorm: int
    residual_sums: int
    gates: int
    captured: dict[str, torch.Tensor]
    trace: Any  # the traced forward pass (:func:`trace_model`)
    filtered: int = 0  # how many layer outputs the relevance filter changed


def propagate(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    label: str,
    ctx: RunContext,
    module_map: Callable[[Any], Callable],
    rule_layers: list[str],
    points: dict[str, tuple[str, str]] | None = None,
    stabilizer: float = 1e-6,
    filters: tuple[list[str], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> Propagation:
    """One LRP forward/backward pass.

    Traces the model, warns about ``rule_layers`` that run more than once,
    merges BatchNorm (verified), attaches the hooks of ``module_map(trace)``
    (a Zennit ``module_map``), runs the forward pass with residual sums made
    explicit and relevance capture at ``points``, and injects the target score
    as the output relevance. ``filters`` = (layer names, function) changes the
    relevance arriving at those layers' outputs (:class:`RelevanceFilterHooks`).
    """
    from zennit.core import Composite

    require_eager(model, ctx, label, "LRP attaches rules to its layers")
    with model_session(model):
        ctx.step(0.05, f"{label}: tracing the model")
        trace = trace_model(model, x)
        shared = [n for n in rule_layers if trace.counts.get(n, 0) > 1]
        if shared:
            ctx.warn(
                f"{label}: layer(s) {', '.join(shared[:3])} run more than once per forward pass; Zennit keeps "
                "one input per layer, so their relevance is approximate."
            )
        name_map = verified_merges(model, x, trace.bn_pairs, ctx)
        composite = Composite(module_map=module_map(trace), canonizers=[merge_canonizer(name_map)] if name_map else [])
        xg = x.detach().clone().requires_grad_(True)
        sums = ResidualSums(stabilizer)
        ctx.step(0.2, f"{label}: forward")
        names, fn = filters if filters is not None else ([], None)
        with RelevanceFilterHooks(model, names, fn) as filt, RelevanceCapture(model, points or {}) as cap:
            with composite.context(model) as modified:
                with sums:
                    out = modified(xg)
                scores = check_scores(out, target)
                start = torch.zeros_like(scores)
                start[0, int(target)] = scores[0, int(target)].detach()
                ctx.step(0.5, f"{label}: relevance backward")
                (rel,) = torch.autograd.grad(scores, xg, grad_outputs=start)
    return Propagation(rel.detach(), float(start[0, int(target)]), len(name_map), sums.count,
                       getattr(sums, "gates", 0), dict(cap.relevance), trace, filt.count)


# --------------------------------------------------------------------------- conservation


def conservation_report(relevance: torch.Tensor, r_out: float, expected: bool, biased_layers: int, zero_bias: bool,
                        label: str, ctx: RunContext) -> dict:
    """Compare the input relevance with the relevance injected at the output, and warn where it matters.

    Warns when the relevance is not finite; when every rule should conserve
    (``expected``) but the ratio is more than :data:`CONSERVATION_TOLERANCE`
    off (naming biases or a layer without a rule as the cause); otherwise when
    the sum explodes (> :data:`EXPLODE_RATIO` times the score) or vanishes
    (< :data:`VANISH_RATIO` of it).
    """
    r_in = float(relevance.sum())
    ratio = r_in / r_out if abs(r_out) > 1e-12 else float("nan")
    report = {"input": r_in, "output": r_out, "ratio": ratio, "expected": expected, "biased_layers": biased_layers,
              "zero_bias": bool(zero_bias)}
    if not torch.isfinite(relevance).all():
        ctx.warn(f"{label}: the relevance has NaN/Inf values; try a larger epsilon or other rules.")
    elif expected and not abs(ratio - 1.0) <= CONSERVATION_TOLERANCE:
        cause = (
            f"{biased_layers} rule layer(s) have biases, which absorb or add relevance (set zero_bias in an LRP "
            "configuration to leave them out)"
            if biased_layers and not zero_bias
            else "a layer or operation without an LRP rule changes it"
        )
        ctx.warn(
            f"{label}: relevance is not conserved: the input relevance sums to {r_in:.4g}, {ratio:.3g} times the "
            f"target score {r_out:.4g} injected at the output (more than {CONSERVATION_TOLERANCE:.0%} off); {cause}."
        )
    elif abs(r_in) > EXPLODE_RATIO * abs(r_out) + 1e-12:
        ctx.warn(
            f"{label}: the relevance sums to {r_in:.4g}, {abs(r_in) / max(abs(r_out), 1e-12):.1f} times the target "
            f"score {r_out:.4g}; a layer without an LRP rule (e.g. a multiplicative gate) or near-zero denominators "
            "inflate it."
        )
    elif abs(r_out) > 1e-12 and abs(r_in) < VANISH_RATIO * abs(r_out):
        ctx.warn(
            f"{label}: only {100 * abs(r_in) / abs(r_out):.1f} % of the target score {r_out:.4g} reached the input "
            "(absorbed by biases and epsilon); a smaller 'epsilon' keeps more of it."
        )
    return report


# --------------------------------------------------------------------------- running a configuration


def boundary_points(resolved: Resolved) -> dict[str, tuple[str, str]]:
    """Capture points at every segment boundary: the relevance entering each segment's first layer from below.

    Key ``after <segment>``: the relevance at the *input* of the segment's start
    layer, i.e. after the segment's rule has been applied (the paper's
    intermediate heatmaps, Fig. 2C3).
    """
    return {f"after {s.name}": (s.start, "input") for s in resolved.config.segments}


def capture_points(resolved: Resolved, layers: list[LayerInfo], capture: list[str],
                   boundaries: bool) -> dict[str, tuple[str, str]]:
    """Segment boundaries (if asked), the configuration's intermediate layers and ``capture``."""
    points = boundary_points(resolved) if boundaries else {}
    names = {l.name for l in layers}
    for name in [*resolved.config.intermediate, *capture]:
        if name not in names:
            raise unknown_layer(name, layers, "the intermediate layer list")
        points.setdefault(name, (name, "output"))
    return points


def channel_sum_to_grid(rel: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray | None:
    """Sum a captured (1, C, d, h, w) relevance over channels and bring it to ``shape``, keeping its total."""
    from ..geometry import relevance_to_grid

    if rel.ndim != 5:
        return None
    summed = rel.detach().float().sum(dim=1)[0].cpu().numpy()
    return relevance_to_grid(summed[None], tuple(shape))[0].astype(np.float32)


def _intermediate(prop: Propagation, points: dict, shape: tuple[int, ...], label: str, ctx: RunContext):
    """Captured relevance: sums per point and channel-summed volumes on the input grid."""
    volumes, sums = {}, {}
    for key in points:
        t = prop.captured.get(key)
        if t is None:
            continue
        sums[key] = float(t.sum())
        vol = channel_sum_to_grid(t, shape)
        if vol is not None:
            volumes[key] = vol
    missing = [k for k in points if k not in prop.captured]
    if missing:
        ctx.warn(f"{label}: no relevance reached {', '.join(missing[:3])} (the layer's input is not on the path to the target).")
    return volumes, sums


def _filters(config: LrpConfig, resolved: Resolved, layers: list[LayerInfo]):
    if config.filter is None:
        return None
    order = {l.name: l.index for l in layers}
    ruled = sorted(resolved.rules, key=lambda n: order.get(n, 0))
    # every rule layer but the last: at the output the relevance is the target score itself
    return ruled[:-1], config.filter.apply


def _biased_layers(model: nn.Module, names: Iterable[str]) -> int:
    modules = dict(model.named_modules())
    return sum(1 for n in names if getattr(modules.get(n), "bias", None) is not None
               and bool(torch.any(modules[n].bias.detach() != 0)))


def run_config(model: nn.Module, x: torch.Tensor, target: int, config: LrpConfig | None, ctx=None,
               capture: Iterable[str] = (), boundaries: bool = True, label: str | None = None) -> MethodOutput:
    """Run LRP with a configuration; relevance (1, C, D, H, W) and what was used.

    Parameters
    ----------
    model : nn.Module
        Eager model returning (N, classes) (segmentation networks wrapped in
        :class:`~napari_xai.core.segmentation.SegmentationScores`).
    x : torch.Tensor
        Input (1, C, D, H, W).
    target : int
        Class to explain; the relevance injected at the output is its score.
    config : LrpConfig or None
        None uses :func:`~napari_xai.core.lrp.composites.default_config`.
    ctx : RunContext, optional
    capture : iterable of str
        Extra layers whose incoming relevance (at their output) is returned.
    boundaries : bool
        Also return the relevance at each segment boundary.
    label : str, optional
        Prefix of progress messages and warnings (default ``lrp '<name>'``).

    Returns
    -------
    MethodOutput
        ``used`` holds the resolved rules, the conservation report and
        ``intermediate_sums``; ``used["_arrays"]["intermediate"]`` maps each
        capture point to a channel-summed (D, H, W) volume on the input grid
        (not JSON: the pipeline moves it to :attr:`Relevance.intermediate`);
        ``used["_arrays"]["captured"]`` holds the raw (1, C, ...) relevance
        tensor at each ``capture`` layer.
    """
    ctx = ctx if ctx is not None else RunContext()
    require_eager(model, ctx, "lrp", "LRP attaches rules to its layers")
    layers = list_layers(model, x)
    config = config if config is not None else default_config(layers)
    label = label or f"lrp '{config.name}'"
    resolved = resolve(config, layers)
    capture = list(capture)
    points = capture_points(resolved, layers, capture, boundaries)
    stab = stabilizer_for(x.dtype)
    modules = dict(model.named_modules())
    rules: dict = {}

    def module_map(trace):
        rules.update(final_rules(resolved, modules, trace.first_layers))
        return layer_map(resolved, rules, x, stab)

    prop = propagate(model, x, target, label, ctx, module_map, list(resolved.rules), points, stab,
                     _filters(config, resolved, layers))
    # a filter changes the relevance on purpose; merging BatchNorm adds a bias
    expected = all(rule_conserves(r) for r in rules.values()) and config.filter is None
    biased = _biased_layers(model, resolved.rules) + prop.merged_batchnorm
    report = conservation_report(prop.relevance, prop.output_relevance, expected, biased, config.zero_bias, label, ctx)
    volumes, sums = _intermediate(prop, points, tuple(x.shape[2:]), label, ctx)
    used: dict[str, Any] = {
        "configuration": config.to_dict(),
        "segments": [
            {"name": s.name, "start": s.start, "end": s.end, "preset": s.preset, "formula": formula(s.rule),
             "first": a, "last": b, "rule_layers": sum(1 for o in resolved.owner.values() if o == s.name)}
            for s, (a, b) in zip(config.segments, resolved.spans)
        ],
        "default_rule_layers": sum(1 for o in resolved.owner.values() if o == ""),
        "merged_batchnorm": prop.merged_batchnorm,
        "residual_sums": prop.residual_sums,
        "gates": prop.gates,
        "output_relevance": report["output"],
        "relevance_sum": report["input"],
        "conservation": report,
        "intermediate_sums": sums,
        "filter": config.filter.to_dict() if config.filter is not None else None,
        "filtered_layers": prop.filtered,
        "_arrays": {"intermediate": volumes, "captured": {k: prop.captured[k] for k in capture if k in prop.captured}},
    }
    if config.first is not None or config.dense is not None:  # a composite: its rules by layer type
        used["rules"] = {"first": rule_label(config.first or config.default), "conv": rule_label(config.default),
                         "dense": rule_label(config.dense or config.default)}
        used["first_layers"] = [n for n in prop.trace.first_layers if n in rules] if config.first is not None else []
    return MethodOutput(prop.relevance, used)
