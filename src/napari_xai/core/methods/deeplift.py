"""DeepLIFT (rescale rule, through Captum) with our MaxPool rule and conservation corrections."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator


from ..lazy import F, TypeGroup, nn, torch
from ..errors import UserError
from ._model import (ACTIVATIONS, BASELINE_PARAM, BLUR_SIGMA_PARAM, ScoreFn, as_context, fresh_input, make_baseline, model_session,
    require_eager, summation_gap, trace_model)
from .registry import MethodOutput, entry


# Modules that are linear in their input in eval mode: the gradient through them already is DeepLift's multiplier.
DEEPLIFT_LINEAR = TypeGroup(lambda: (
    nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Identity,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.Flatten, nn.Unflatten, nn.Upsample,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
))


# Nonlinear modules; those whose exact type is not in Captum's SUPPORTED_NON_LINEAR get no rescale rule.
NONLINEAR = TypeGroup(lambda: ACTIVATIONS.types + (
    nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd,
    nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU, nn.LogSigmoid, nn.Hardsigmoid, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink,
))


def _deeplift_kind(module: nn.Module) -> str:
    """How our DeepLift treats a leaf module.

    ``maxpool`` (our rule), ``rule`` (Captum's rescale rule), ``linear``,
    ``unhandled`` (nonlinear, plain gradient) or ``unknown``.
    """
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    if isinstance(module, nn.modules.pooling._MaxPoolNd) and not module.return_indices:
        return "maxpool"
    if type(module) in SUPPORTED_NON_LINEAR:  # Captum matches the exact type, not subclasses
        return "rule"
    if isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
        return "linear"  # running statistics in eval mode: an affine map
    if isinstance(module, NONLINEAR):
        return "unhandled"
    return "linear" if isinstance(module, DEEPLIFT_LINEAR) else "unknown"


def _deeplift_checks(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, dict[str, int]], list[nn.Module], list[nn.Module]]:
    """Classify the leaf-module calls of one forward pass for DeepLift.

    Returns the calls by type of ``unhandled`` and ``unknown`` modules, the
    modules that get Captum's rule and the MaxPools (our rule). A module with a
    rule that runs more than once per forward pass cannot keep its input for
    the backward pass (Captum fails on it); that is a :class:`UserError`.
    """
    trace = trace_model(model, x)
    modules = dict(model.named_modules())
    found: dict[str, dict[str, int]] = {"unhandled": {}, "unknown": {}}
    ruled: dict[str, list[str]] = {"rule": [], "maxpool": []}
    for c in trace.calls:
        m = modules.get(c.name)
        if m is None or next(m.children(), None) is not None:
            continue
        kind = _deeplift_kind(m)
        if kind in found:
            found[kind][c.kind] = found[kind].get(c.kind, 0) + 1
        elif kind in ruled and c.name not in ruled[kind]:
            ruled[kind].append(c.name)
    reused = [n for n in ruled["rule"] + ruled["maxpool"] if trace.counts.get(n, 0) > 1]
    if reused:
        what = ", ".join(f"'{n}' ({type(modules[n]).__name__}) runs {trace.counts[n]} times" for n in reused)
        raise UserError(
            f"deeplift: module {what} per forward pass, but a DeepLift rule keeps one input per module; "
            "give each use its own module instance, or use integrated-gradients."
        )
    return found, [modules[n] for n in ruled["rule"]], [modules[n] for n in ruled["maxpool"]]


def _max_pool_multipliers(module: nn.Module, u: torch.Tensor, o: torch.Tensor, grad_in: torch.Tensor,
                          grad_out: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """DeepLift multipliers of a MaxPool for the stacked batch [input; baseline] (Captum's cross-maximum rule).

    Per window j with output o_x (input) and o_r (baseline) and multiplier m_j,
    m_j (max(o_x, o_r) - o_r) goes to the input's argmax and m_j (o_x - max(o_x, o_r))
    to the baseline's argmax; the sums per voxel (added up where windows
    overlap) divided by the voxel's change are the multipliers, so
    sum_i mult_i (u_x - u_r)_i = sum_j m_j (o_x - o_r)_j. Voxels that did not
    change keep the gradient.
    """
    pool = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}[u.ndim]
    ux, ur = u.chunk(2)
    ox, orf = o.chunk(2)
    m = grad_out.chunk(2)[0]
    opts = dict(kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
                dilation=module.dilation, ceil_mode=module.ceil_mode, return_indices=True)
    ix, ir = pool(ux, **opts)[1], pool(ur, **opts)[1]
    cross = torch.maximum(ox, orf)
    mass = torch.zeros_like(ux).flatten(2)
    mass.scatter_add_(2, ix.flatten(2), (m * (cross - orf)).flatten(2))
    mass.scatter_add_(2, ir.flatten(2), (m * (ox - cross)).flatten(2))
    du = (ux - ur).flatten(2)
    mult = torch.where(du.abs() < eps, grad_in.chunk(2)[0].flatten(2), mass / torch.where(du.abs() < eps, 1.0, du))
    return torch.cat([mult, mult]).view_as(u)


@contextmanager
def _deeplift_hooks(ruled: list[nn.Module], pools: list[nn.Module]) -> Iterator[None]:
    """Our MaxPool rule and a fix for Captum 0.9, for the block; registered before Captum's own hooks.

    * Captum records a module's output gradient with a tensor hook on its output.
      When that tensor is directly the input of the next module with a rule (ReLU
      then ReLU), the hook fires before the next module has rescaled the gradient
      and summation-to-delta fails for non-zero baselines (captum issue #1104,
      fixed upstream after 0.9). Each module with a rule gets a view of its
      input (a tensor of its own with a node of its own in the graph, no copy of
      the data), so the rescaled gradient reaches the first module's hook.
    * Captum's MaxPool rule spreads the score change back with ``max_unpool``,
      which keeps one value per input voxel, so relevance is lost where windows
      overlap; and it suffers from the fault above after a ReLU. MaxPools get
      :func:`_max_pool_multipliers` as a full backward hook instead; Captum
      skips modules that already have a backward hook.
    """
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def own_input(module, inputs):
        return tuple(t.view_as(t) if torch.is_tensor(t) else t for t in inputs)

    def keep(module, inputs, output):
        seen[id(module)] = (inputs[0].detach(), output.detach())

    def rule(module, grad_input, grad_output):
        if id(module) not in seen or grad_input[0] is None:
            return None
        u, o = seen.pop(id(module))
        return (_max_pool_multipliers(module, u, o, grad_input[0], grad_output[0]),) + tuple(grad_input[1:])

    handles = [m.register_forward_pre_hook(own_input) for m in ruled]
    for m in pools:
        handles += [m.register_forward_hook(keep), m.register_full_backward_hook(rule)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


@entry("deeplift", "gradient",
       "DeepLIFT rescale rule (Captum); sums to f(x) - f(baseline), warns on nonlinearities without a rule.",
       BASELINE_PARAM, BLUR_SIGMA_PARAM, needs_module=True, multiplies_input=True,
       reference="Shrikumar, Greenside & Kundaje 2017, arXiv:1704.02685")
def _deeplift(model, x, target, params, ctx) -> MethodOutput:
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017), through Captum's ``DeepLift``.

    Each nonlinearity passes (change of output) / (change of input) between the
    input and the baseline instead of its gradient, so the relevance sums to
    f(x) - f(baseline) exactly (summation-to-delta) when every nonlinearity has the
    rule. The gap is reported as ``summation_to_delta_error`` (relative) and a
    warning is added above 1 %.
    Rules exist for MaxPool modules (ours, see below) and, in Captum, for
    modules of exactly the types nn.ReLU, ELU, LeakyReLU, Sigmoid, Tanh,
    Softplus and Softmax. Other nonlinear modules (PReLU, GELU, SiLU, InstanceNorm, GroupNorm, LayerNorm,
    adaptive max pooling, subclasses of the supported types, ...), common in MONAI
    networks, and functional calls such as ``torch.relu`` in ``forward`` pass
    the plain gradient: a warning names the modules found and gives the measured
    gap. A module with a rule that runs twice per forward pass (one ReLU
    instance reused) is a one-line error, since Captum cannot handle it.
    Two faults of Captum 0.9 are avoided: two modules with a rule in direct
    succession (ReLU then MaxPool) lose the summation for non-zero baselines
    (captum issue #1104), and its MaxPool rule loses relevance where windows
    overlap (kernel larger than stride, as in the stem of MONAI's DenseNet).
    MaxPool modules therefore get our own implementation of Captum's
    cross-maximum rule, with overlapping windows added up, and every module
    with Captum's rule gets a view of its input as a tensor of its own.
    ``baseline`` as for integrated gradients. One forward/backward pass of the
    input and the baseline together; f(x) - f(baseline) for the summation check
    comes from that pass's scores. Units: score.
    """
    from captum.attr import DeepLift

    ctx = as_context(ctx)
    require_eager(model, ctx, "deeplift", "Captum hooks its nonlinear modules")
    with model_session(model):
        found, ruled, pools = _deeplift_checks(model, x)
        xi = fresh_input(x, grad=True)
        base, used = make_baseline(xi.detach(), params["baseline"], params["blur_sigma"])
        f = ScoreFn(model, ctx, target, 1, "deeplift")
        # Captum runs the input and the baseline as one batch [x; baseline]; its scores give f(x) - f(baseline)
        # for the summation check (no pass of their own). Registered before Captum's hook, which restacks them.
        kept: list[torch.Tensor] = []
        keep = f.register_forward_hook(lambda m, i, o: kept.append(o.detach()) if not kept else None)
        try:
            with warnings.catch_warnings(), _deeplift_hooks(ruled, pools):
                # Captum announces its temporary hooks on every call; they are removed again
                warnings.filterwarnings("ignore", message="Setting forward, backward hooks and attributes on non-linear")
                rel = DeepLift(f).attribute(xi, baselines=base, target=int(target))
        finally:
            keep.remove()
        n, t = len(xi), int(target)  # kept[0]: the scores of [x; baseline], n rows each
        diff, total, err = summation_gap(float(kept[0][:n, t].sum() - kept[0][n:, t].sum()), rel)
    used.update(score_difference=diff, relevance_sum=total, summation_to_delta_error=err, forward_passes=f.calls,
                unhandled_modules=_counts_text(found["unhandled"]))
    gap = f"the relevance sums to {total:.4g} and f(x) - f(baseline) = {diff:.4g} ({100 * err:.2g} % apart)"
    if found["unhandled"]:
        ctx.warn(
            f"deeplift: no rescale rule for {_counts_text(found['unhandled'])} (there is one only for MaxPool and "
            f"for exactly nn.ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, Softmax), so the plain gradient passes "
            f"through them: {gap}."
        )
    elif err > 0.01 and abs(diff) > 1e-6:
        unknown = f"modules of types {_counts_text(found['unknown'])} or " if found["unknown"] else ""
        ctx.warn(
            f"deeplift: summation-to-delta fails, {gap}: the model applies nonlinear {unknown}functions outside "
            "nn.Modules (e.g. torch.relu in forward), which pass the plain gradient."
        )
    return MethodOutput(rel.detach(), used)
