"""What every attribution method shares: the model session (eval, no in-place ops), tracing, the score function, the eager-module requirement, baselines and blur."""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import UserError
from ..lazy import F, TypeGroup, nn, torch
from .baselines import BASELINES
from .registry import Param, RunContext


# Activation modules. Captum's guided backprop / deconvolution only modify nn.ReLU.
ACTIVATIONS = TypeGroup(lambda: (
    nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.RReLU, nn.ReLU6, nn.ELU, nn.SELU, nn.CELU, nn.GELU,
    nn.SiLU, nn.Mish, nn.Softplus, nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Sigmoid,
))


LINEAR_TYPES = TypeGroup(lambda: (nn.modules.conv._ConvNd, nn.Linear))


BATCHNORM_TYPES = TypeGroup(lambda: (nn.modules.batchnorm._BatchNorm,))


def as_context(ctx: RunContext | None) -> RunContext:
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
            "explain a segmentation model (a logit map) with --segmentation (in napari: 'segmentation model')."
        )
    if target is not None and not 0 <= int(target) < out.shape[1]:
        raise UserError(f"target class {target} is out of range: the model has {out.shape[1]} classes (0..{out.shape[1] - 1}).")
    return out


@contextmanager
def _no_inplace(model: nn.Module, modules: list | None = None) -> Iterator[None]:
    """Temporarily switch ``inplace=True`` modules (e.g. ``ReLU(inplace=True)``) to out-of-place.

    In-place activations break Captum's module hooks and the tensor-identity
    tracing of :func:`trace_model`. Restored on exit. ``modules``: ``list(model.modules())`` when the caller
    has it.
    """
    changed = []
    for m in (model.modules() if modules is None else modules):
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
    eager = isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule)
    modules = list(model.modules()) if eager else None
    if modules is None or any(m.training for m in modules):  # eval() on a model all in eval mode changes nothing
        model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            if eager:
                with _no_inplace(model, modules):
                    yield
            else:
                yield
    finally:
        if was_training:
            model.train(True)


def fresh_input(x: torch.Tensor, grad: bool = False) -> torch.Tensor:
    """A normal (non-inference) detached copy of ``x``; call inside :func:`model_session`."""
    return x.detach().clone().requires_grad_(grad)


def ScoreFn(model: Any, ctx: RunContext, target: int | None, expected: int = 1, label: str = ""):  # noqa: N802
    """Wrap a model: progress/cancellation at each forward call, output checks, call count (an ``nn.Module``).

    ``expected`` is the number of forward calls the method will make; progress is
    reported as ``0.05 + 0.9 * done / expected``. (A function returning the module, so that defining the
    ``nn.Module`` class waits for torch: the registry imports without it.)
    """
    return _score_fn_class()(model, ctx, target, expected, label)


def _score_fn_class() -> type:
    cls = _SCORE_FN_CLASS.get("cls")
    if cls is not None:
        return cls

    class ScoreFnModule(nn.Module):
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
            out = self.model(x)
            want = getattr(self.ctx, "capture_input", None)
            if (want is not None and self.ctx.scores is None and torch.is_tensor(out) and x.shape == want.shape
                    and torch.equal(x.detach(), want)):
                self.ctx.scores = out.detach()  # the prediction, from the method's own pass (see explain)
            return check_scores(out, self.target)

    ScoreFnModule.__name__ = ScoreFnModule.__qualname__ = "ScoreFn"
    _SCORE_FN_CLASS["cls"] = ScoreFnModule
    return ScoreFnModule


_SCORE_FN_CLASS: dict[str, type] = {}


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
            if c.name and is_spatial(c.shape):
                seen.setdefault(c.name, None)
        return list(seen)

    def shape_of(self, name: str) -> tuple[int, ...] | None:
        for c in self.calls:
            if c.name == name:
                return c.shape
        return None


def is_spatial(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 5 and math.prod(shape[2:]) > 1


_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def input_cache(store: "weakref.WeakKeyDictionary[nn.Module, dict]", model: nn.Module, x: torch.Tensor,
                what: str) -> tuple[dict[str, nn.Module], dict, tuple]:
    """``model``'s named modules, its cache in ``store`` and the key of ``x`` there (shape, dtype, device and the
    number of modules); a one-line :class:`UserError` for TorchScript, which allows no hooks (``what`` needs them)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise UserError(f"{what} needs an eager nn.Module, but the model is TorchScript; "
                        "load it as a .py file with weights.")
    modules = dict(model.named_modules())
    return modules, store.setdefault(model, {}), (tuple(x.shape), str(x.dtype), str(x.device), len(modules))


def hooked_forward(model: nn.Module, x: torch.Tensor, modules: dict[str, nn.Module], make_hook: Any) -> Any:
    """One no-grad forward pass of ``x`` with ``make_hook(name)`` as forward hook on each of ``modules``;
    the hooks are removed afterwards."""
    handles = [m.register_forward_hook(make_hook(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def trace_model(model: nn.Module, x: torch.Tensor) -> ModelTrace:
    """Run one no-grad forward pass with hooks on every module and record what ran.

    Records, in execution order, each module's output shape; which Conv/Linear
    layers receive the raw input (the "first layers" for LRP's input rules);
    which BatchNorm layers directly consume a Conv/Linear output (tensor identity,
    so the pairs follow the execution order, not the registration order); and
    which activation modules ran. Cached per model, input shape, dtype and device.
    Call inside :func:`model_session` (in-place modules switched off).
    """
    modules, per_model, key = input_cache(_TRACES, model, x, "tracing layers")
    if key in per_model:
        return per_model[key]

    calls: list[Call] = []
    counts: dict[str, int] = {}
    first: list[str] = []
    pairs: list[tuple[str, str]] = []
    last_linear: list = [None, None]  # name, output tensor
    xin = fresh_input(x)

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

    out = hooked_forward(model, xin, modules, make_hook)
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
    """The baseline of kind ``kind`` (:data:`BASELINE_KINDS`) for ``x`` (N, C, D, H, W): a reference input for
    the attribution methods, or what flipped voxels become.

    ``zero``: all zeros; ``min`` / ``mean``: each channel's minimum / mean intensity; ``blur``: the
    input blurred with a strong Gaussian (``sigma`` voxels, default
    :func:`default_blur_sigma`), which keeps the low frequencies and removes
    the structure. Returns the baseline and what was used.
    """
    if kind == "zero":
        return torch.zeros_like(x), {"baseline": "zero"}
    if kind in ("min", "mean"):
        level = x.amin(dim=(2, 3, 4), keepdim=True) if kind == "min" else x.mean(dim=(2, 3, 4), keepdim=True)
        return level.expand_as(x).clone(), {"baseline": kind}
    if kind == "blur":
        s = float(sigma) if sigma else default_blur_sigma(tuple(x.shape[2:]))
        with torch.no_grad():
            return gaussian_blur(x, s), {"baseline": "blur", "blur_sigma": s}
    raise UserError(f"unknown baseline {kind!r}; use one of: {', '.join(BASELINES)}.")


def score_gap(model: Any, x: torch.Tensor, base: torch.Tensor, target: int, rel: torch.Tensor) -> tuple[float, float, float]:
    """f(x) - f(baseline) (one forward pass of both), the relevance sum and their relative gap.

    The gap is ``|sum - difference| / |difference|``: completeness for integrated
    gradients, summation-to-delta for DeepLift. Call inside :func:`model_session`.
    """
    with torch.no_grad():
        scores = check_scores(model(torch.cat([x.detach(), base.detach()])), target)[:, int(target)]
    return summation_gap(float(scores[0] - scores[1]), rel)


def summation_gap(diff: float, rel: torch.Tensor) -> tuple[float, float, float]:
    """``diff`` = f(x) - f(baseline), the relevance sum and their relative gap ``|sum - diff| / |diff|``."""
    total = float(rel.detach().sum())
    return diff, total, abs(total - diff) / max(abs(diff), 1e-12)


BASELINE_PARAM = Param(
    "baseline", str, "zero",
    "Reference input: zero (all zeros), min (each channel's minimum intensity) or blur (strong Gaussian blur of the input).",
    choices=BASELINES,
)


BLUR_SIGMA_PARAM = Param("blur_sigma", float, None, "Gaussian sigma in voxels for baseline=blur; empty = 1/8 of the smallest axis.",
                    minimum=0.1)
