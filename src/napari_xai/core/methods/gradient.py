"""Gradient methods: saliency, input x gradient, integrated gradients, SmoothGrad/VarGrad, GradientSHAP, guided backprop and deconvolution (Captum)."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Iterator

from ..lazy import nn, torch
from ._model import (BASELINE_PARAM, BASELINES, BLUR_SIGMA_PARAM, ScoreFn, as_context, fresh_input, make_baseline, model_session,
    require_eager, score_gap, trace_model)
from .registry import MethodOutput, Param, RunContext, entry



def guided_warnings(model: nn.Module, x: torch.Tensor, ctx: RunContext, method: str) -> dict:
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


_ABS = Param("absolute", bool, False, "Return |gradient| instead of the signed gradient.")


@entry("saliency", "gradient", "Gradient of the target score w.r.t. the input (signed by default).", _ABS,
       reference="Simonyan, Vedaldi & Zisserman 2014, arXiv:1312.6034")
def _saliency(model, x, target, params, ctx) -> MethodOutput:
    """Plain gradient of the target score with respect to the input (Simonyan et al. 2014).

    Signed by default (``absolute=false``): positive voxels raise the score when
    brightened, negative ones lower it. Set ``absolute=true`` for the classic
    magnitude map. Units: score per intensity unit.
    """
    from captum.attr import Saliency

    ctx = as_context(ctx)
    with model_session(model):
        f = ScoreFn(model, ctx, target, 1, "saliency")
        rel = Saliency(f).attribute(fresh_input(x, grad=True), target=int(target), abs=bool(params["absolute"]))
    return MethodOutput(rel.detach(), {"forward_passes": f.calls})


@entry("input-x-gradient", "gradient", "Input times gradient; sums to the score on bias-free ReLU networks.",
       reference="Shrikumar et al. 2016, arXiv:1605.01713", multiplies_input=True)
def _input_x_gradient(model, x, target, params, ctx) -> MethodOutput:
    """Input times gradient (Shrikumar et al. 2016). Signed; equals LRP-0 on bias-free ReLU networks."""
    from captum.attr import InputXGradient

    ctx = as_context(ctx)
    with model_session(model):
        f = ScoreFn(model, ctx, target, 1, "input x gradient")
        rel = InputXGradient(f).attribute(fresh_input(x, grad=True), target=int(target))
    return MethodOutput(rel.detach(), {"forward_passes": f.calls})


@entry(
    "integrated-gradients", "gradient",
    "Path integral of gradients from a baseline to the input; sums to f(x) - f(baseline).",
    Param("steps", int, 32, "Number of points on the path (Gauss-Legendre); more = closer completeness.", minimum=2, maximum=4096),
    BASELINE_PARAM,
    Param("internal_batch_size", int, 8, "Path points per forward/backward pass; bounds memory independent of steps.", minimum=1, maximum=4096),
    BLUR_SIGMA_PARAM,
    reference="Sundararajan, Taly & Yan 2017, arXiv:1703.01365", multiplies_input=True,
)
def _integrated_gradients(model, x, target, params, ctx) -> MethodOutput:
    """Integrated gradients (Sundararajan et al. 2017), Gauss-Legendre quadrature with ``steps`` points.

    Completeness: the relevance sums to f(x) - f(baseline); the gap is reported
    as ``completeness_error`` (relative) and a warning is added above 5 %, with the
    advice to raise ``steps``. The path points are evaluated ``internal_batch_size``
    at a time, so memory does not grow with ``steps``.
    """
    from captum.attr import IntegratedGradients

    ctx = as_context(ctx)
    steps = int(params["steps"])
    ibs = int(params["internal_batch_size"])
    with model_session(model):
        xi = fresh_input(x, grad=True)
        base, used = make_baseline(xi.detach(), params["baseline"], params["blur_sigma"])
        f = ScoreFn(model, ctx, target, math.ceil(steps / ibs), "integrated gradients")
        rel = IntegratedGradients(f).attribute(
            xi, baselines=base, target=int(target), n_steps=steps, internal_batch_size=min(ibs, steps)
        )
        diff, total, err = score_gap(model, xi, base, target, rel)
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


@entry(
    "smoothgrad", "gradient", "Mean gradient over noisy copies of the input; noise relative to the intensity range.",
    Param("samples", int, 16, "Number of noisy copies.", minimum=1, maximum=4096),
    Param("noise", float, 0.15, "Noise stdev as a fraction of the input's intensity range (max - min).", minimum=0.0, maximum=2.0),
    Param("batch_size", int, 4, "Noisy copies per forward/backward pass (memory).", minimum=1, maximum=1024),
    _ABS,
    Param("variant", str, "smoothgrad", "Mean gradient (smoothgrad), mean squared gradient (smoothgrad-sq) or "
          "the gradient's variance over the noisy copies (vargrad).", choices=("smoothgrad", "smoothgrad-sq", "vargrad")),
    reference="Smilkov et al. 2017, arXiv:1706.03825; VarGrad: Adebayo et al. 2018, arXiv:1810.03307",
)
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

    ctx = as_context(ctx)
    samples = int(params["samples"])
    batch = int(params["batch_size"])
    with model_session(model):
        xi = fresh_input(x, grad=True)
        span = float(xi.detach().max() - xi.detach().min())
        stdev = float(params["noise"]) * span
        if span == 0.0:
            ctx.warn("smoothgrad: the input is constant, so the relative noise level gives zero noise (plain gradient).")
        f = ScoreFn(model, ctx, target, math.ceil(samples / batch), "smoothgrad")
        variant = str(params["variant"])
        rel = NoiseTunnel(Saliency(f)).attribute(
            xi,
            nt_type={"smoothgrad": "smoothgrad", "smoothgrad-sq": "smoothgrad_sq", "vargrad": "vargrad"}[variant],
            nt_samples=samples,
            nt_samples_batch_size=min(batch, samples),
            stdevs=stdev,
            target=int(target),
            abs=bool(params["absolute"]),
        )
    return MethodOutput(rel.detach(), {"noise_stdev": stdev, "intensity_range": span, "forward_passes": f.calls,
                                       "variant": variant})


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


@entry(
    "gradient-shap", "gradient",
    "Expected gradients over random baselines and path points (Captum's GradientShap), optional input noise.",
    Param("samples", int, 32, "Number of random draws (baseline, path point, noise).", minimum=1, maximum=4096),
    Param("baseline", str, "uniform", "Baseline distribution: uniform (fresh uniform noise in each channel's "
          "intensity range per draw) or the single zero, min or blur baseline of integrated-gradients.",
          choices=("uniform",) + BASELINES),
    Param("noise", float, 0.0, "Stdev of Gaussian noise on the input as a fraction of its intensity range "
          "(max - min); 0 = none.", minimum=0.0, maximum=2.0),
    Param("batch_size", int, 4, "Draws per forward/backward pass (memory).", minimum=1, maximum=1024),
    BLUR_SIGMA_PARAM,
    reference="Lundberg & Lee 2017, arXiv:1705.07874; Erion et al. 2021, doi:10.1038/s42256-021-00343-w",
    multiplies_input=True,
)
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

    ctx = as_context(ctx)
    samples = int(params["samples"])
    batch = min(int(params["batch_size"]), samples)
    kind = str(params["baseline"])
    with model_session(model):
        xi = fresh_input(x, grad=True)
        span = float(xi.detach().max() - xi.detach().min())
        stdev = float(params["noise"]) * span
        if kind == "uniform":
            lo = xi.detach().amin(dim=(2, 3, 4), keepdim=True)
            hi = xi.detach().amax(dim=(2, 3, 4), keepdim=True)
            base, used = None, {"baseline": "uniform"}
        else:
            base, used = make_baseline(xi.detach(), kind, params["blur_sigma"])
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
            diff, rsum, err = score_gap(model, xi, base, target, rel)
            used.update(score_difference=diff, relevance_sum=rsum, completeness_error=err, forward_passes=f.calls + 1)
    return MethodOutput(rel, used)


@contextmanager
def quiet_relu_hook_warning() -> Iterator[None]:
    # Captum announces its (temporary) ReLU hooks on every call; we remove them too and say so in the docs.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU activations")
        yield


def _modified_relu(kind: str):
    def run(model, x, target, params, ctx) -> MethodOutput:
        from captum.attr import Deconvolution, GuidedBackprop

        ctx = as_context(ctx)
        require_eager(model, ctx, kind, "Captum hooks its nn.ReLU modules")
        with model_session(model):
            used = guided_warnings(model, x, ctx, kind)
            f = ScoreFn(model, ctx, target, 1, kind)
            cls = GuidedBackprop if kind == "guided-backprop" else Deconvolution
            with quiet_relu_hook_warning():
                rel = cls(f).attribute(fresh_input(x, grad=True), target=int(target))
        return MethodOutput(rel.detach(), used)

    return run


guided_backprop = entry(
    "guided-backprop", "gradient", "Gradient with negative signals cut at each nn.ReLU (warns when the model has none).",
    needs_module=True, reference="Springenberg et al. 2015, arXiv:1412.6806",
)(_modified_relu("guided-backprop"))


_deconvolution = entry(
    "deconvolution", "gradient", "DeconvNet backward pass: ReLU applied to the backward signal at each nn.ReLU.",
    needs_module=True, reference="Zeiler & Fergus 2014, arXiv:1311.2901",
)(_modified_relu("deconvolution"))
