"""Gradient, CAM and perturbation attribution methods (registry entries).

Every method here is one :class:`~napari_xai.core.registry.Method` entry with
the common call ``fn(model, x, target, params, ctx) -> MethodOutput``:

* ``model`` returns class scores (N, classes); eager ``nn.Module`` or TorchScript.
* ``x`` is the (1, C, D, H, W) input on the model's device, already normalised.
* ``target`` is an int class index (the pipeline resolves names / "predicted").

The relevance returned is (1, C, D, H, W) on the model grid, in the units of
the method (score units for Input×Gradient, IG, DeepLift, GradientSHAP,
occlusion and LRP; score per intensity unit for the plain gradient).

Gradient-family methods and Grad-CAM call Captum; DeepLift adds its own
MaxPool rule and works around a Captum fault (see :func:`_deeplift`).
Grad-CAM++ is computed here from the layer's activations and gradients
(Chattopadhay et al. 2018). Occlusion is computed here too (Zeiler & Fergus
2014) because Captum's sliding window leaves the last voxels of an axis
uncovered when ``(size - window)`` is not a multiple of the stride; ours adds
one end-aligned window per axis so every voxel is covered.

Shared helpers used by :mod:`napari_xai.core.lrp` live here too:
:func:`model_session`, :func:`trace_model`, :class:`ScoreFn`,
:func:`require_eager`, :func:`check_scores`.
"""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError
from .registry import Method, MethodOutput, Param, RunContext, register

__all__ = [
    "ModelTrace",
    "ScoreFn",
    "check_scores",
    "default_blur_sigma",
    "default_cam_layer",
    "gaussian_blur",
    "make_baseline",
    "model_session",
    "occlusion_windows",
    "require_eager",
    "spatial_layers",
    "trace_model",
]

# Activation modules. Captum's guided backprop / deconvolution only modify nn.ReLU.
ACTIVATIONS: tuple[type, ...] = (
    nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.RReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid,
)
LINEAR_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)
BATCHNORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._BatchNorm,)

BASELINES = ("zero", "min", "blur")


# --------------------------------------------------------------------------- helpers


def _ctx(ctx: RunContext | None) -> RunContext:
    return ctx if ctx is not None else RunContext()


def is_scripted(model: Any, ctx: RunContext | None = None) -> bool:
    """True for TorchScript modules (or when the context says the model is scripted)."""
    return bool(ctx is not None and ctx.is_scripted) or isinstance(model, torch.jit.ScriptModule)


def require_eager(model: Any, ctx: RunContext | None, method: str, why: str) -> None:
    """Raise :class:`UserError` if ``model`` is TorchScript (no module hooks possible)."""
    if is_scripted(model, ctx):
        raise UserError(
            f"method '{method}' needs an eager nn.Module ({why}), but the model is TorchScript; "
            "load it as a .py file with weights or a MONAI bundle, or use saliency, input-x-gradient, "
            "integrated-gradients, smoothgrad or occlusion."
        )


def require_hookable(model: Any, what: str, why: str) -> None:
    """Raise a one-line :class:`UserError` unless ``model`` (a loaded model or its module) is an eager
    ``nn.Module``: ``what`` ("dissection", ...) works on its layers (``why``), which TorchScript does not expose."""
    from torch import nn

    module = getattr(model, "module", model)
    if getattr(model, "is_scripted", False) or isinstance(module, torch.jit.ScriptModule) or not isinstance(module, nn.Module):
        raise UserError(f"{what} needs an eager nn.Module ({why}), but the model is TorchScript; "
                        "load it as file.py:Class with --weights.")


def check_scores(out: Any, target: int | None = None) -> torch.Tensor:
    """Check that a model output is a (N, classes) tensor and ``target`` indexes a class."""
    if isinstance(out, (tuple, list, dict)):
        raise UserError(
            f"the model returns a {type(out).__name__}, but attribution needs one tensor of class scores "
            "(N, classes); wrap the model so that forward() returns only the logits."
        )
    if not torch.is_tensor(out) or out.ndim != 2:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(
            f"the model output has shape {shape}, but attribution needs class scores of shape (N, classes); "
            "segmentation outputs are not supported yet."
        )
    if target is not None and not 0 <= int(target) < out.shape[1]:
        raise UserError(f"target class {target} is out of range: the model has {out.shape[1]} classes (0..{out.shape[1] - 1}).")
    return out


@contextmanager
def _no_inplace(model: nn.Module) -> Iterator[None]:
    """Temporarily switch ``inplace=True`` modules (e.g. ``ReLU(inplace=True)``) to out-of-place.

    In-place activations break Captum's module hooks and the tensor-identity
    tracing of :func:`trace_model`. Restored on exit.
    """
    changed = []
    for m in model.modules():
        if isinstance(getattr(m, "inplace", None), bool) and m.inplace:
            m.inplace = False
            changed.append(m)
    try:
        yield
    finally:
        for m in changed:
            m.inplace = True


@contextmanager
def model_session(model: Any) -> Iterator[None]:
    """Run attribution safely: eval mode, gradients on (even under inference/no-grad), no in-place modules.

    The user's model is restored on exit (training flag, ``inplace`` flags).
    """
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule):
                with _no_inplace(model):
                    yield
            else:
                yield
    finally:
        if was_training:
            model.train(True)


def _fresh(x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """A normal (non-inference) detached copy of ``x``; call inside :func:`model_session`."""
    return x.detach().clone().requires_grad_(grad)


class ScoreFn(nn.Module):
    """Wrap a model: progress/cancellation at each forward call, output checks, call count.

    ``expected`` is the number of forward calls the method will make; progress is
    reported as ``0.05 + 0.9 * done / expected``.
    """

    def __init__(self, model: Any, ctx: RunContext, target: int | None, expected: int = 1, label: str = ""):
        super().__init__()
        self.model = model
        self.ctx = ctx
        self.target = target
        self.expected = max(int(expected), 1)
        self.label = label
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.ctx.step(0.05 + 0.9 * min(self.calls, self.expected) / self.expected, self.label)
        self.calls += 1
        return check_scores(self.model(x), self.target)


# --------------------------------------------------------------------------- model tracing


@dataclass
class Call:
    """One module call in a forward pass (in the order the calls finished)."""

    name: str
    kind: str
    shape: tuple[int, ...] | None
    is_relu: bool = False
    is_activation: bool = False
    is_conv3d: bool = False


@dataclass
class ModelTrace:
    """What one forward pass revealed about a model (cached per model and input shape)."""

    calls: list[Call]
    counts: dict[str, int]
    first_layers: list[str]
    bn_pairs: list[tuple[str, str]]
    output_shape: tuple[int, ...] | None
    relu_modules: int = 0

    def spatial(self) -> list[str]:
        """Module names with a 5D output of at least 2 voxels, in execution order (unique)."""
        seen: dict[str, None] = {}
        for c in self.calls:
            if c.name and _is_spatial(c.shape):
                seen.setdefault(c.name, None)
        return list(seen)

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        for c in self.calls:
            if c.name == name:
                return c.shape
        return None


def _is_spatial(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 5 and math.prod(shape[2:]) > 1


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def trace_model(model: nn.Module, x: torch.Tensor) -> ModelTrace:
    """Run one no-grad forward pass with hooks on every module and record what ran.

    Records, in execution order, each module's output shape; which Conv/Linear
    layers receive the raw input (the "first layers" for LRP's input rules);
    which BatchNorm layers directly consume a Conv/Linear output (tensor identity,
    so the pairs follow the execution order, not the registration order); and
    which activation modules ran. Cached per model, input shape, dtype and device.
    Call inside :func:`model_session` (in-place modules switched off).
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError("tracing layers needs an eager nn.Module, but the model is TorchScript.")
    modules = dict(model.named_modules())
    key = (tuple(x.shape), str(x.dtype), str(x.device), len(modules))
    per_model = _TRACES.setdefault(model, {})
    if key in per_model:
        return per_model[key]

    calls: list[Call] = []
    counts: dict[str, int] = {}
    first: list[str] = []
    pairs: list[tuple[str, str]] = []
    last_linear: list = [None, None]  # name, output tensor
    xin = _fresh(x)

    def make_hook(name: str):
        def hook(module, inputs, output):
            counts[name] = counts.get(name, 0) + 1
            shape = tuple(output.shape) if torch.is_tensor(output) else None
            calls.append(
                Call(
                    name=name,
                    kind=type(module).__name__,
                    shape=shape,
                    is_relu=isinstance(module, nn.ReLU),
                    is_activation=isinstance(module, ACTIVATIONS),
                    is_conv3d=isinstance(module, nn.Conv3d),
                )
            )
            inp = inputs[0] if isinstance(inputs, tuple) and inputs else None
            if isinstance(module, LINEAR_TYPES):
                if inp is xin and name not in first:
                    first.append(name)
                last_linear[0], last_linear[1] = name, output
            elif isinstance(module, BATCHNORM_TYPES):
                if (
                    inp is not None
                    and inp is last_linear[1]
                    and module.affine
                    and module.track_running_stats
                    and module.running_mean is not None
                ):
                    pairs.append((last_linear[0], name))

        return hook

    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            out = model(xin)
    finally:
        for h in handles:
            h.remove()
    out_shape = tuple(out.shape) if torch.is_tensor(out) else None
    if not first:  # the input passes through non-parametric ops first: take the first Conv/Linear that ran
        first = [c.name for c in calls if isinstance(modules.get(c.name), LINEAR_TYPES)][:1]
    # merge only modules that run once, each Conv/Linear into at most one BatchNorm
    used_lin: set[str] = set()
    good_pairs = []
    for lin, bn in pairs:
        if counts.get(lin) == 1 and counts.get(bn) == 1 and lin not in used_lin:
            used_lin.add(lin)
            good_pairs.append((lin, bn))
    trace = ModelTrace(
        calls=calls,
        counts=counts,
        first_layers=first,
        bn_pairs=good_pairs,
        output_shape=out_shape,
        relu_modules=sum(isinstance(m, nn.ReLU) for m in modules.values()),
    )
    per_model[key] = trace
    return trace


def spatial_layers(model: Any, x: torch.Tensor) -> list[str]:
    """Names (from ``named_modules``) of modules whose output is a 3D feature map.

    A feature map is a 5D output (N, C, d, h, w) with at least 2 voxels; names are
    in execution order. These are the valid Grad-CAM layers (the widget's layer
    dropdown). Returns ``[]`` for TorchScript models, which allow no hooks.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return []
    with model_session(model):
        return trace_model(model, x).spatial()


def default_cam_layer(trace: ModelTrace) -> str | None:
    """The last Conv3d (in execution order) with a spatial output, else the last spatial module."""
    convs = [c.name for c in trace.calls if c.is_conv3d and _is_spatial(c.shape)]
    if convs:
        return convs[-1]
    spatial = trace.spatial()
    return spatial[-1] if spatial else None


def _resolve_cam_layer(model: nn.Module, x: torch.Tensor, name: str | None, method: str) -> tuple[str, nn.Module]:
    trace = trace_model(model, x)
    valid = trace.spatial()
    hint = ", ".join(valid[-5:]) if valid else "none"
    if name is None or str(name).strip().lower() in ("", "none", "auto", "default"):
        chosen = default_cam_layer(trace)
        if chosen is None:
            raise UserError(f"method '{method}' needs a layer with a 3D (N, C, d, h, w) output, but this model has none.")
    else:
        chosen = str(name).strip()
        modules = dict(model.named_modules())
        if chosen not in modules:
            raise UserError(f"{method} layer {chosen!r} does not exist; layers with a spatial output include: {hint}.")
        if chosen not in valid:
            shape = trace.shape_of(chosen)
            what = f"output shape {shape}" if shape is not None else "no tensor output in a forward pass"
            raise UserError(
                f"{method} layer {chosen!r} has {what}, not a 3D feature map; choose one of: {hint}."
            )
    if trace.counts.get(chosen, 0) > 1:
        raise UserError(
            f"{method} layer {chosen!r} runs {trace.counts[chosen]} times per forward pass (a shared module); "
            f"choose a layer that runs once, e.g. {hint}."
        )
    return chosen, dict(model.named_modules())[chosen]


def _guided_warnings(model: nn.Module, x: torch.Tensor, ctx: RunContext, method: str) -> dict:
    """Warn when Captum's ReLU-only modification silently degrades to the plain gradient."""
    trace = trace_model(model, x)
    relu_calls = sum(c.is_relu for c in trace.calls)
    others: dict[str, int] = {}
    for c in trace.calls:
        if c.is_activation and not c.is_relu:
            others[c.kind] = others.get(c.kind, 0) + 1
    other_txt = ", ".join(f"{k} x{v}" for k, v in sorted(others.items()))
    if relu_calls == 0:
        what = f"it uses {other_txt}" if other_txt else "its activations are functional calls"
        unused = f" ({trace.relu_modules} nn.ReLU modules exist but never run)" if trace.relu_modules else ""
        ctx.warn(
            f"{method}: the model has no nn.ReLU module that runs ({what}){unused}; Captum only modifies nn.ReLU, "
            "so this result equals the plain gradient (saliency)."
        )
    elif others:
        ctx.warn(
            f"{method}: only {relu_calls} of {relu_calls + sum(others.values())} activation calls are nn.ReLU; "
            f"{other_txt} keep their plain gradient, so the result is only partly {method}."
        )
    return {"relu_calls": relu_calls, "other_activation_calls": sum(others.values())}


# --------------------------------------------------------------------------- baselines


def default_blur_sigma(shape: tuple[int, ...]) -> float:
    """Default Gaussian sigma (voxels) of the "blur" baseline: 1/8 of the smallest spatial extent, at least 1."""
    return max(1.0, min(int(s) for s in shape) / 8.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (N, C, D, H, W) tensor, ``sigma`` in voxels, edges replicated."""
    out = x
    channels = x.shape[1]
    for axis in range(3):
        radius = int(math.ceil(3.0 * sigma))
        if radius < 1:
            continue
        t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        kshape = [1, 1, 1, 1, 1]
        kshape[2 + axis] = kernel.numel()
        weight = kernel.view(kshape).repeat(channels, 1, 1, 1, 1)
        pad = [0] * 6  # F.pad order: last axis first
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), weight, groups=channels)
    return out


def make_baseline(x: torch.Tensor, kind: str, sigma: float | None = None) -> tuple[torch.Tensor, dict]:
    """Reference input for integrated gradients and occlusion.

    ``zero``: all zeros; ``min``: each channel's minimum intensity; ``blur``: the
    input blurred with a strong Gaussian (``sigma`` voxels, default
    :func:`default_blur_sigma`), which keeps the low frequencies and removes
    the structure. Returns the baseline and what was used.
    """
    if kind == "zero":
        return torch.zeros_like(x), {"baseline": "zero"}
    if kind == "min":
        return x.amin(dim=(2, 3, 4), keepdim=True).expand_as(x).clone(), {"baseline": "min"}
    if kind == "blur":
        s = float(sigma) if sigma else default_blur_sigma(tuple(x.shape[2:]))
        with torch.no_grad():
            return gaussian_blur(x, s), {"baseline": "blur", "blur_sigma": s}
    raise UserError(f"unknown baseline {kind!r}; use one of: {', '.join(BASELINES)}.")


# --------------------------------------------------------------------------- gradient family


def _saliency(model, x, target, params, ctx) -> MethodOutput:
    """Plain gradient of the target score with respect to the input (Simonyan et al. 2014).

    Signed by default (``absolute=false``): positive voxels raise the score when
    brightened, negative ones lower it. Set ``absolute=true`` for the classic
    magnitude map. Units: score per intensity unit.
    """
    from captum.attr import Saliency

    ctx = _ctx(ctx)
    with model_session(model):
        f = ScoreFn(model, ctx, target, 1, "saliency")
        rel = Saliency(f).attribute(_fresh(x, grad=True), target=int(target), abs=bool(params.get("absolute", False)))
    return MethodOutput(rel.detach(), {"forward_passes": f.calls})


def _input_x_gradient(model, x, target, params, ctx) -> MethodOutput:
    """Input times gradient (Shrikumar et al. 2016). Signed; equals LRP-0 on bias-free ReLU networks."""
    from captum.attr import InputXGradient

    ctx = _ctx(ctx)
    with model_session(model):
        f = ScoreFn(model, ctx, target, 1, "input x gradient")
        rel = InputXGradient(f).attribute(_fresh(x, grad=True), target=int(target))
    return MethodOutput(rel.detach(), {"forward_passes": f.calls})


def _score_gap(model: Any, x: torch.Tensor, base: torch.Tensor, target: int, rel: torch.Tensor) -> tuple[float, float, float]:
    """f(x) - f(baseline) (one forward pass of both), the relevance sum and their relative gap.

    The gap is ``|sum - difference| / |difference|``: completeness for integrated
    gradients, summation-to-delta for DeepLift. Call inside :func:`model_session`.
    """
    with torch.no_grad():
        scores = check_scores(model(torch.cat([x.detach(), base.detach()])), target)[:, int(target)]
    diff = float(scores[0] - scores[1])
    total = float(rel.detach().sum())
    return diff, total, abs(total - diff) / max(abs(diff), 1e-12)


def _integrated_gradients(model, x, target, params, ctx) -> MethodOutput:
    """Integrated gradients (Sundararajan et al. 2017), Gauss-Legendre quadrature with ``steps`` points.

    Completeness: the relevance sums to f(x) - f(baseline); the gap is reported
    as ``completeness_error`` (relative) and a warning is added above 5 %, with the
    advice to raise ``steps``. The path points are evaluated ``internal_batch_size``
    at a time, so memory does not grow with ``steps``.
    """
    from captum.attr import IntegratedGradients

    ctx = _ctx(ctx)
    steps = int(params.get("steps", 32))
    ibs = int(params.get("internal_batch_size") or 8)
    with model_session(model):
        xi = _fresh(x, grad=True)
        base, used = make_baseline(xi.detach(), params.get("baseline", "zero"), params.get("blur_sigma"))
        f = ScoreFn(model, ctx, target, math.ceil(steps / ibs), "integrated gradients")
        rel = IntegratedGradients(f).attribute(
            xi, baselines=base, target=int(target), n_steps=steps, internal_batch_size=min(ibs, steps)
        )
        diff, total, err = _score_gap(model, xi, base, target, rel)
    rel = rel.detach()
    used.update(
        steps=steps,
        internal_batch_size=min(ibs, steps),
        score_difference=diff,
        relevance_sum=total,
        completeness_error=err,
        forward_passes=f.calls + 1,
    )
    if err > 0.05 and abs(diff) > 1e-6:
        ctx.warn(
            f"integrated-gradients: the relevance sums to {total:.4g} but f(x) - f(baseline) = {diff:.4g} "
            f"({100 * err:.0f} % apart); increase 'steps' (now {steps})."
        )
    return MethodOutput(rel.detach(), used)


def _smoothgrad(model, x, target, params, ctx) -> MethodOutput:
    """SmoothGrad (Smilkov et al. 2017): mean gradient over noisy copies of the input.

    ``noise`` is relative to the intensity range: the Gaussian noise stdev passed
    to Captum's NoiseTunnel is ``noise * (max(x) - min(x))`` in intensity units
    (reported as ``noise_stdev``). Signed like ``saliency``. The noise comes from
    torch's global generator; the pipeline seeds it, so runs are reproducible.
    ``variant``: ``smoothgrad`` (mean gradient), ``smoothgrad-sq`` (mean squared
    gradient) or ``vargrad`` (variance of the gradient, Adebayo et al. 2018).
    """
    from captum.attr import NoiseTunnel, Saliency

    ctx = _ctx(ctx)
    samples = int(params.get("samples", 16))
    batch = int(params.get("batch_size") or 4)
    with model_session(model):
        xi = _fresh(x, grad=True)
        span = float(xi.detach().max() - xi.detach().min())
        stdev = float(params.get("noise", 0.15)) * span
        if span == 0.0:
            ctx.warn("smoothgrad: the input is constant, so the relative noise level gives zero noise (plain gradient).")
        f = ScoreFn(model, ctx, target, math.ceil(samples / batch), "smoothgrad")
        variant = str(params.get("variant") or "smoothgrad")
        rel = NoiseTunnel(Saliency(f)).attribute(
            xi,
            nt_type={"smoothgrad": "smoothgrad", "smoothgrad-sq": "smoothgrad_sq", "vargrad": "vargrad"}[variant],
            nt_samples=samples,
            nt_samples_batch_size=min(batch, samples),
            stdevs=stdev,
            target=int(target),
            abs=bool(params.get("absolute", False)),
        )
    return MethodOutput(rel.detach(), {"noise_stdev": stdev, "intensity_range": span, "forward_passes": f.calls,
                                       "variant": variant})


# Modules that are linear in their input in eval mode: the gradient through them already is DeepLift's multiplier.
DEEPLIFT_LINEAR: tuple[type, ...] = (
    nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.Identity,
    nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd, nn.Flatten, nn.Unflatten, nn.Upsample,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd, nn.modules.padding._ReplicationPadNd,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
)
# Nonlinear modules; those whose exact type is not in Captum's SUPPORTED_NON_LINEAR get no rescale rule.
NONLINEAR: tuple[type, ...] = ACTIVATIONS + (
    nn.modules.instancenorm._InstanceNorm, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd, nn.modules.pooling._LPPoolNd,
    nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d, nn.GLU, nn.LogSigmoid, nn.Hardsigmoid, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink,
)


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
      fixed upstream after 0.9). Each module with a rule gets a copy of its
      input, so the rescaled gradient reaches the first module's hook.
    * Captum's MaxPool rule spreads the score change back with ``max_unpool``,
      which keeps one value per input voxel, so relevance is lost where windows
      overlap; and it suffers from the fault above after a ReLU. MaxPools get
      :func:`_max_pool_multipliers` as a full backward hook instead; Captum
      skips modules that already have a backward hook.
    """
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def copy_input(module, inputs):
        return tuple(t.clone() if torch.is_tensor(t) else t for t in inputs)

    def keep(module, inputs, output):
        seen[id(module)] = (inputs[0].detach(), output.detach())

    def rule(module, grad_input, grad_output):
        if id(module) not in seen or grad_input[0] is None:
            return None
        u, o = seen.pop(id(module))
        return (_max_pool_multipliers(module, u, o, grad_input[0], grad_output[0]),) + tuple(grad_input[1:])

    handles = [m.register_forward_pre_hook(copy_input) for m in ruled]
    for m in pools:
        handles += [m.register_forward_hook(keep), m.register_full_backward_hook(rule)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))


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
    with Captum's rule gets a copy of its input.
    ``baseline`` as for integrated gradients. One forward/backward pass of the
    input and the baseline together. Units: score.
    """
    from captum.attr import DeepLift

    ctx = _ctx(ctx)
    require_eager(model, ctx, "deeplift", "Captum hooks its nonlinear modules")
    with model_session(model):
        found, ruled, pools = _deeplift_checks(model, x)
        xi = _fresh(x, grad=True)
        base, used = make_baseline(xi.detach(), params.get("baseline", "zero"), params.get("blur_sigma"))
        f = ScoreFn(model, ctx, target, 1, "deeplift")
        with warnings.catch_warnings(), _deeplift_hooks(ruled, pools):
            # Captum announces its temporary hooks on every call; they are removed again
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks and attributes on non-linear")
            rel = DeepLift(f).attribute(xi, baselines=base, target=int(target))
        diff, total, err = _score_gap(model, xi, base, target, rel)
    used.update(score_difference=diff, relevance_sum=total, summation_to_delta_error=err, forward_passes=f.calls + 1,
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


@contextmanager
def _numpy_random_from_torch() -> Iterator[None]:
    """Seed numpy's global generator from torch's for the block, then restore numpy's state.

    Captum's GradientShap draws its path points and baselines with ``np.random``;
    this makes them follow torch's generator, which the pipeline seeds.
    """
    import numpy as np

    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, (1,)).item()))
    try:
        yield
    finally:
        np.random.set_state(state)


def _gradient_shap(model, x, target, params, ctx) -> MethodOutput:
    """GradientSHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021) through Captum's ``GradientShap``.

    Mean over ``samples`` draws of (x + n - b) * gradient at b + a (x + n - b),
    with a uniform in [0, 1], b a baseline drawn from a distribution and n
    Gaussian noise on the input of stdev ``noise`` * (max(x) - min(x)) (reported
    as ``noise_stdev``; 0 = no noise, Captum's default). ``baseline``: ``uniform``
    draws each baseline voxel by voxel, uniformly between each channel's minimum
    and maximum (a fresh volume per sample; Sturmfels et al. 2020), ``zero``,
    ``min`` and ``blur`` use the one baseline of integrated gradients, which makes
    this a Monte-Carlo integrated gradients. In expectation the relevance sums to
    f(x) - E[f(b)] (without noise); for the fixed baselines the gap is reported as
    ``completeness_error``, a Monte-Carlo estimate that shrinks with ``samples``.
    The draws come from torch's global generator (Captum's numpy draws are seeded
    from it); the pipeline seeds it, so runs are reproducible. ``batch_size``
    samples run per forward/backward pass. Units: score.
    """
    from captum.attr import GradientShap

    ctx = _ctx(ctx)
    samples = int(params.get("samples", 32))
    batch = min(int(params.get("batch_size") or 4), samples)
    kind = str(params.get("baseline") or "uniform")
    with model_session(model):
        xi = _fresh(x, grad=True)
        span = float(xi.detach().max() - xi.detach().min())
        stdev = float(params.get("noise", 0.0)) * span
        if kind == "uniform":
            lo = xi.detach().amin(dim=(2, 3, 4), keepdim=True)
            hi = xi.detach().amax(dim=(2, 3, 4), keepdim=True)
            base, used = None, {"baseline": "uniform"}
        else:
            base, used = make_baseline(xi.detach(), kind, params.get("blur_sigma"))
        f = ScoreFn(model, ctx, target, math.ceil(samples / batch), "gradient shap")
        total = torch.zeros_like(xi)
        with _numpy_random_from_torch():
            for start in range(0, samples, batch):
                k = min(batch, samples - start)
                if base is None:
                    draws = lo + (hi - lo) * torch.rand((k,) + tuple(xi.shape[1:]), dtype=xi.dtype, device=xi.device)
                else:
                    draws = base
                rel = GradientShap(f).attribute(xi, baselines=draws, n_samples=k, stdevs=stdev, target=int(target))
                total += rel.detach() * k
        rel = total / samples
        used.update(noise_stdev=stdev, intensity_range=span, samples=samples, batch_size=batch, forward_passes=f.calls)
        if base is not None:
            diff, rsum, err = _score_gap(model, xi, base, target, rel)
            used.update(score_difference=diff, relevance_sum=rsum, completeness_error=err, forward_passes=f.calls + 1)
    return MethodOutput(rel, used)


@contextmanager
def _quiet_relu_hook_warning() -> Iterator[None]:
    # Captum announces its (temporary) ReLU hooks on every call; we remove them too and say so in the docs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        yield


def _modified_relu(kind: str):
    def run(model, x, target, params, ctx) -> MethodOutput:
        from captum.attr import Deconvolution, GuidedBackprop

        ctx = _ctx(ctx)
        require_eager(model, ctx, kind, "Captum hooks its nn.ReLU modules")
        with model_session(model):
            used = _guided_warnings(model, x, ctx, kind)
            f = ScoreFn(model, ctx, target, 1, kind)
            cls = GuidedBackprop if kind == "guided-backprop" else Deconvolution
            with _quiet_relu_hook_warning():
                rel = cls(f).attribute(_fresh(x, grad=True), target=int(target))
        return MethodOutput(rel.detach(), used)

    return run


_guided_backprop = _modified_relu("guided-backprop")
_guided_backprop.__doc__ = """Guided backpropagation (Springenberg et al. 2015): gradient with negative signals cut at every nn.ReLU.

Captum only overrides ``nn.ReLU`` modules. Networks with PReLU/LeakyReLU (common
in MONAI) or functional ReLUs get a warning: there the result is the plain
gradient, entirely or in part.
"""
_deconvolution = _modified_relu("deconvolution")
_deconvolution.__doc__ = """Deconvolution (Zeiler & Fergus 2014): backward pass that applies ReLU to the signal at every nn.ReLU.

Same nn.ReLU-only caveat and warning as guided backprop.
"""


# --------------------------------------------------------------------------- CAM family


def _grad_cam(model, x, target, params, ctx) -> MethodOutput:
    """Grad-CAM (Selvaraju et al. 2017) on a chosen layer, upsampled trilinearly to the input grid.

    Map = ReLU(sum_k a_k A_k) with a_k the spatial mean of d score / d A_k over
    the layer's feature maps A_k (ReLU optional: ``relu_attributions``). The
    default layer is the last Conv3d (in execution order) with a 3D output. The
    map is one for all channels: it is replicated per input channel. Units:
    score (per voxel of the layer's grid).
    """
    from captum.attr import LayerGradCam

    ctx = _ctx(ctx)
    require_eager(model, ctx, "grad-cam", "Grad-CAM hooks a layer")
    with model_session(model):
        name, layer = _resolve_cam_layer(model, x, params.get("layer"), "grad-cam")
        f = ScoreFn(model, ctx, target, 1, f"grad-cam on {name}")
        cam = LayerGradCam(f, layer).attribute(
            _fresh(x, grad=True), target=int(target), relu_attributions=bool(params.get("relu_attributions", True))
        )
    return MethodOutput(_cam_to_input(cam, x), {"layer": name, "layer_shape": list(cam.shape[2:])})


def _cam_to_input(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (1, 1, d, h, w) map on a layer's grid, upsampled trilinearly to ``x``'s grid and replicated per channel."""
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[2:]), interpolate_mode="trilinear")
    return up.expand(-1, x.shape[1], -1, -1, -1).contiguous()


def _grad_cam_plus_plus(model, x, target, params, ctx) -> MethodOutput:
    """Grad-CAM++ (Chattopadhay et al. 2018) on a chosen layer, upsampled trilinearly to the input grid.

    With A_k the layer's feature maps and g_k = d score / d A_k, the paper's
    exponential trick (Y = exp(score), exact for piecewise-linear networks) gives
    per voxel v: alpha_k(v) = g_k(v)^2 / (2 g_k(v)^2 + g_k(v)^3 sum_u A_k(u))
    (0 where the denominator is 0), channel weights
    w_k = sum_v alpha_k(v) relu(g_k(v)) and the map ReLU(sum_k w_k A_k)
    (ReLU optional: ``relu_attributions``). The paper's weights carry a further
    factor exp(score), the same for every channel; it is left out (no overflow
    for large logits; units as Grad-CAM's, score per voxel of the layer's grid), so
    the paper's map is exp(``score``) times this one. Where g_k is constant over
    the grid (a layer followed only by global average pooling and linear layers)
    alpha = 1 / (2 + g_k sum A_k); MONAI's ``GradCAMpp`` sums A_k(u) g_k(u)^3
    voxel by voxel instead of g_k(v)^3 sum_u A_k(u), which differs from the
    paper elsewhere. Layer choice, checks and upsampling as for ``grad-cam``;
    one forward and one backward pass; the map is replicated per input channel.
    """
    ctx = _ctx(ctx)
    require_eager(model, ctx, "grad-cam-plus-plus", "it hooks a layer")
    with model_session(model):
        name, layer = _resolve_cam_layer(model, x, params.get("layer"), "grad-cam-plus-plus")
        f = ScoreFn(model, ctx, target, 1, f"grad-cam++ on {name}")
        kept: list[torch.Tensor] = []

        def keep(module, inputs, output):
            kept.append(output)
            return output.clone()  # in-place operations later in the forward pass cannot alter the kept maps

        handle = layer.register_forward_hook(keep)
        try:
            score = f(_fresh(x, grad=True))[0, int(target)]
        finally:
            handle.remove()
        (grad,) = torch.autograd.grad(score, kept[0], allow_unused=True)
    if grad is None:
        raise UserError(f"grad-cam-plus-plus: the target score does not depend on layer {name!r}; choose another layer.")
    acts, grad = kept[0].detach(), grad.detach()
    space = tuple(range(2, acts.ndim))
    g2 = grad * grad
    denom = 2.0 * g2 + acts.sum(dim=space, keepdim=True) * g2 * grad
    nonzero = denom != 0
    alpha = torch.where(nonzero, g2 / torch.where(nonzero, denom, torch.ones_like(denom)), torch.zeros_like(denom))
    weights = (alpha * F.relu(grad)).sum(dim=space, keepdim=True)
    cam = (weights * acts).sum(dim=1, keepdim=True)
    if bool(params.get("relu_attributions", True)):
        cam = F.relu(cam)
    used = {"layer": name, "layer_shape": list(cam.shape[2:]), "score": float(score.detach())}
    return MethodOutput(_cam_to_input(cam, x), used)


def _guided_grad_cam(model, x, target, params, ctx) -> MethodOutput:
    """Guided Grad-CAM: guided backprop times the (ReLU'd, trilinearly upsampled) Grad-CAM map.

    Signed per channel (the guided gradient keeps its sign). Carries the guided
    backprop warning for networks without nn.ReLU modules.
    """
    from captum.attr import GuidedGradCam

    ctx = _ctx(ctx)
    require_eager(model, ctx, "guided-grad-cam", "it hooks a layer and the nn.ReLU modules")
    with model_session(model):
        name, layer = _resolve_cam_layer(model, x, params.get("layer"), "guided-grad-cam")
        used = _guided_warnings(model, x, ctx, "guided-grad-cam")
        f = ScoreFn(model, ctx, target, 2, f"guided grad-cam on {name}")
        with _quiet_relu_hook_warning():
            rel = GuidedGradCam(f, layer).attribute(_fresh(x, grad=True), target=int(target), interpolate_mode="trilinear")
    used["layer"] = name
    return MethodOutput(rel.detach(), used)


# --------------------------------------------------------------------------- occlusion


def occlusion_windows(size: int, window: int, stride: int) -> list[int]:
    """Start indices of windows along one axis: ``0, stride, 2*stride, ...`` plus an end-aligned last window.

    The extra window at ``size - window`` makes sure the last voxels are covered
    when ``size - window`` is not a multiple of ``stride``.
    """
    window = min(window, size)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def default_occlusion_window(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Default occlusion window: about 1/8 of each axis (at least 1 voxel), so about 512 windows."""
    return tuple(max(1, int(round(int(s) / 8.0))) for s in shape)  # type: ignore[return-value]


def _occlusion(model, x, target, params, ctx) -> MethodOutput:
    """Occlusion (Zeiler & Fergus 2014): replace a 3D window by the baseline and record the score drop.

    Relevance of a voxel = mean over the windows covering it of
    f(x) - f(x with the window replaced by the baseline); positive where hiding
    the voxel lowers the target score. Windows step by ``stride`` and one extra
    window is aligned to the end of each axis, so every voxel is covered when
    stride <= window. ``perturbations_per_eval`` occluded copies run per forward
    pass. With ``per_channel`` each channel is occluded on its own (C times the
    passes); otherwise all channels are hidden together and the map is the same
    for every channel. Units: score.
    """
    ctx = _ctx(ctx)
    shape = tuple(int(s) for s in x.shape[2:])
    window = tuple(params.get("window") or default_occlusion_window(shape))
    window = tuple(min(w, s) for w, s in zip(window, shape))
    stride = tuple(params.get("stride") or window)
    ppe = int(params.get("perturbations_per_eval") or 8)
    per_channel = bool(params.get("per_channel", False))
    if any(s > w for s, w in zip(stride, window)):
        ctx.warn("occlusion: a stride larger than the window leaves voxels between windows uncovered; their relevance is 0.")
    starts = [occlusion_windows(n, w, s) for n, w, s in zip(shape, window, stride)]
    boxes = [
        tuple(slice(a, a + w) for a, w in zip(corner, window)) for corner in itertools.product(*starts)
    ]
    channels = x.shape[1]
    groups = [slice(c, c + 1) for c in range(channels)] if per_channel else [slice(0, channels)]
    jobs = [(g, b) for g in groups for b in boxes]
    n_passes = 1 + math.ceil(len(jobs) / ppe)
    if len(jobs) > 20000:
        ctx.warn(f"occlusion: {len(jobs)} occluded volumes to evaluate; a larger window or stride is much faster.")
    with model_session(model), torch.no_grad():
        xi = _fresh(x)
        base, used = make_baseline(xi, params.get("baseline", "zero"), None)
        f = ScoreFn(model, ctx, target, n_passes, "occlusion")
        ref = f(xi)[0, int(target)]
        total = torch.zeros_like(xi)
        count = torch.zeros_like(xi)
        for start in range(0, len(jobs), ppe):
            chunk = jobs[start:start + ppe]
            batch = xi.repeat(len(chunk), 1, 1, 1, 1)
            for i, (g, b) in enumerate(chunk):
                batch[(i, g) + b] = base[(0, g) + b]
            drop = ref - f(batch)[:, int(target)]
            for i, (g, b) in enumerate(chunk):
                total[(0, g) + b] += drop[i]
                count[(0, g) + b] += 1
        rel = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    used.update(window=window, stride=stride, windows=len(boxes), forward_passes=f.calls, perturbations_per_eval=ppe)
    return MethodOutput(rel, used)


# --------------------------------------------------------------------------- registry entries

_ABS = Param("absolute", bool, False, "Return |gradient| instead of the signed gradient.")
_BASELINE = Param(
    "baseline", str, "zero",
    "Reference input: zero (all zeros), min (each channel's minimum intensity) or blur (strong Gaussian blur of the input).",
    choices=BASELINES,
)
_BLUR_SIGMA = Param("blur_sigma", float, None, "Gaussian sigma in voxels for baseline=blur; empty = 1/8 of the smallest axis.",
                    minimum=0.1)

register(Method(
    name="saliency",
    family="gradient",
    summary="Gradient of the target score w.r.t. the input (signed by default).",
    fn=_saliency,
    params=(_ABS,),
    reference="Simonyan, Vedaldi & Zisserman 2014, arXiv:1312.6034",
))
register(Method(
    name="input-x-gradient",
    family="gradient",
    summary="Input times gradient; sums to the score on bias-free ReLU networks.",
    fn=_input_x_gradient,
    reference="Shrikumar et al. 2016, arXiv:1605.01713",
))
register(Method(
    name="integrated-gradients",
    family="gradient",
    summary="Path integral of gradients from a baseline to the input; sums to f(x) - f(baseline).",
    fn=_integrated_gradients,
    params=(
        Param("steps", int, 32, "Number of points on the path (Gauss-Legendre); more = closer completeness.", minimum=2, maximum=4096),
        _BASELINE,
        Param("internal_batch_size", int, 8, "Path points per forward/backward pass; bounds memory independent of steps.", minimum=1, maximum=4096),
        _BLUR_SIGMA,
    ),
    reference="Sundararajan, Taly & Yan 2017, arXiv:1703.01365",
))
register(Method(
    name="smoothgrad",
    family="gradient",
    summary="Mean gradient over noisy copies of the input; noise relative to the intensity range.",
    fn=_smoothgrad,
    params=(
        Param("samples", int, 16, "Number of noisy copies.", minimum=1, maximum=4096),
        Param("noise", float, 0.15, "Noise stdev as a fraction of the input's intensity range (max - min).", minimum=0.0, maximum=2.0),
        Param("batch_size", int, 4, "Noisy copies per forward/backward pass (memory).", minimum=1, maximum=1024),
        _ABS,
        Param("variant", str, "smoothgrad", "Mean gradient (smoothgrad), mean squared gradient (smoothgrad-sq) or "
              "the gradient's variance over the noisy copies (vargrad).", choices=("smoothgrad", "smoothgrad-sq", "vargrad")),
    ),
    reference="Smilkov et al. 2017, arXiv:1706.03825; VarGrad: Adebayo et al. 2018, arXiv:1810.03307",
))
register(Method(
    name="deeplift",
    family="gradient",
    summary="DeepLIFT rescale rule (Captum); sums to f(x) - f(baseline), warns on nonlinearities without a rule.",
    fn=_deeplift,
    params=(_BASELINE, _BLUR_SIGMA),
    needs_module=True,
    reference="Shrikumar, Greenside & Kundaje 2017, arXiv:1704.02685",
))
register(Method(
    name="gradient-shap",
    family="gradient",
    summary="Expected gradients over random baselines and path points (Captum's GradientShap), optional input noise.",
    fn=_gradient_shap,
    params=(
        Param("samples", int, 32, "Number of random draws (baseline, path point, noise).", minimum=1, maximum=4096),
        Param("baseline", str, "uniform", "Baseline distribution: uniform (fresh uniform noise in each channel's "
              "intensity range per draw) or the single zero, min or blur baseline of integrated-gradients.",
              choices=("uniform",) + BASELINES),
        Param("noise", float, 0.0, "Stdev of Gaussian noise on the input as a fraction of its intensity range "
              "(max - min); 0 = none.", minimum=0.0, maximum=2.0),
        Param("batch_size", int, 4, "Draws per forward/backward pass (memory).", minimum=1, maximum=1024),
        _BLUR_SIGMA,
    ),
    reference="Lundberg & Lee 2017, arXiv:1705.07874; Erion et al. 2021, doi:10.1038/s42256-021-00343-w",
))
register(Method(
    name="guided-backprop",
    family="gradient",
    summary="Gradient with negative signals cut at each nn.ReLU (warns when the model has none).",
    fn=_guided_backprop,
    needs_module=True,
    reference="Springenberg et al. 2015, arXiv:1412.6806",
))
register(Method(
    name="deconvolution",
    family="gradient",
    summary="DeconvNet backward pass: ReLU applied to the backward signal at each nn.ReLU.",
    fn=_deconvolution,
    needs_module=True,
    reference="Zeiler & Fergus 2014, arXiv:1311.2901",
))
_LAYER = Param(
    "layer", str, None,
    "Module name (as in named_modules) with a 3D feature map; empty = last Conv3d with a spatial output.",
)
_CAM_RELU = Param("relu_attributions", bool, True, "Keep only positive evidence (ReLU of the weighted map), as in the paper.")
register(Method(
    name="grad-cam",
    family="cam",
    summary="Gradient-weighted class activation map of one layer, upsampled trilinearly.",
    fn=_grad_cam,
    params=(_LAYER, _CAM_RELU),
    needs_module=True,
    signed=False,
    reference="Selvaraju et al. 2017, arXiv:1610.02391",
))
register(Method(
    name="grad-cam-plus-plus",
    family="cam",
    summary="Grad-CAM++: channel weights from positive gradients weighted per voxel (alpha); upsampled trilinearly.",
    fn=_grad_cam_plus_plus,
    params=(_LAYER, _CAM_RELU),
    needs_module=True,
    signed=False,
    reference="Chattopadhay et al. 2018, arXiv:1710.11063",
))
register(Method(
    name="guided-grad-cam",
    family="cam",
    summary="Guided backprop times the upsampled Grad-CAM map.",
    fn=_guided_grad_cam,
    params=(_LAYER,),
    needs_module=True,
    reference="Selvaraju et al. 2017, arXiv:1610.02391",
))
register(Method(
    name="occlusion",
    family="perturbation",
    summary="Score drop when a 3D window is replaced by a baseline, averaged over covering windows.",
    fn=_occlusion,
    params=(
        Param("window", "ints3", None, "Window size in voxels (d,h,w or one number); empty = about 1/8 of each axis.", minimum=1),
        Param("stride", "ints3", None, "Step between windows in voxels; empty = the window (no overlap).", minimum=1),
        _BASELINE,
        Param("perturbations_per_eval", int, 8, "Occluded volumes per forward pass (memory vs speed).", minimum=1, maximum=1024),
        Param("per_channel", bool, False, "Occlude each channel on its own (C times slower) instead of all together."),
    ),
    reference="Zeiler & Fergus 2014, arXiv:1311.2901",
))
