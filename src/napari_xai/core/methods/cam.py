"""Class activation maps of one layer: Grad-CAM, Grad-CAM++ (Chattopadhay et al. 2018) and guided Grad-CAM; the default layer."""

from __future__ import annotations

from typing import Any


from ..lazy import F, nn, torch
from ..errors import UserError
from ._model import ModelTrace, ScoreFn, as_context, fresh_input, is_spatial, model_session, require_eager, trace_model
from .gradient import guided_warnings, quiet_relu_hook_warning
from .registry import MethodOutput, Param, entry



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
    convs = [c.name for c in trace.calls if c.is_conv3d and is_spatial(c.shape)]
    if convs:
        return convs[-1]
    spatial = trace.spatial()
    return spatial[-1] if spatial else None


def cam_layer_options(model: Any, x: torch.Tensor) -> tuple[list[str], str | None]:
    """The layers Grad-CAM accepts on ``x`` (3D feature maps of modules that run once) and the one it uses when
    none is given (:func:`default_cam_layer`); nothing for TorchScript, which allows no hooks."""
    if isinstance(model, torch.jit.ScriptModule):
        return [], None
    with model_session(model):
        trace = trace_model(model, x)
    return [n for n in trace.spatial() if trace.counts.get(n, 0) <= 1], default_cam_layer(trace)


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


_LAYER = Param(
    "layer", "layer", None,
    "Module name (as in named_modules) with a 3D feature map; empty = last Conv3d with a spatial output.",
    layers=cam_layer_options,
)


_CAM_RELU = Param("relu_attributions", bool, True, "Keep only positive evidence (ReLU of the weighted map), as in the paper.")


@entry("grad-cam", "cam", "Gradient-weighted class activation map of one layer, upsampled trilinearly.",
       _LAYER, _CAM_RELU, needs_module=True, signed=False, reference="Selvaraju et al. 2017, arXiv:1610.02391")
def _grad_cam(model, x, target, params, ctx) -> MethodOutput:
    """Grad-CAM (Selvaraju et al. 2017) on a chosen layer, upsampled trilinearly to the input grid.

    Map = ReLU(sum_k a_k A_k) with a_k the spatial mean of d score / d A_k over
    the layer's feature maps A_k (ReLU optional: ``relu_attributions``). The
    default layer is the last Conv3d (in execution order) with a 3D output. The
    map is one for all channels: it is replicated per input channel. Units:
    score (per voxel of the layer's grid).
    """
    from captum.attr import LayerGradCam

    ctx = as_context(ctx)
    require_eager(model, ctx, "grad-cam", "Grad-CAM hooks a layer")
    with model_session(model):
        name, layer = _resolve_cam_layer(model, x, params["layer"], "grad-cam")
        f = ScoreFn(model, ctx, target, 1, f"grad-cam on {name}")
        cam = LayerGradCam(f, layer).attribute(
            fresh_input(x, grad=True), target=int(target), relu_attributions=bool(params["relu_attributions"])
        )
    return MethodOutput(_cam_to_input(cam, x), {"layer": name, "layer_shape": list(cam.shape[2:])})


def _cam_to_input(cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (1, 1, d, h, w) map on a layer's grid, upsampled trilinearly to ``x``'s grid and replicated per channel."""
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[2:]), interpolate_mode="trilinear")
    return up.expand(-1, x.shape[1], -1, -1, -1).contiguous()


@entry("grad-cam-plus-plus", "cam",
       "Grad-CAM++: channel weights from positive gradients weighted per voxel (alpha); upsampled trilinearly.",
       _LAYER, _CAM_RELU, needs_module=True, signed=False, reference="Chattopadhay et al. 2018, arXiv:1710.11063")
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
    ctx = as_context(ctx)
    require_eager(model, ctx, "grad-cam-plus-plus", "it hooks a layer")
    with model_session(model):
        name, layer = _resolve_cam_layer(model, x, params["layer"], "grad-cam-plus-plus")
        f = ScoreFn(model, ctx, target, 1, f"grad-cam++ on {name}")
        kept: list[torch.Tensor] = []

        def keep(module, inputs, output):
            kept.append(output)
            return output.clone()  # in-place operations later in the forward pass cannot alter the kept maps

        handle = layer.register_forward_hook(keep)
        try:
            score = f(fresh_input(x, grad=True))[0, int(target)]
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
    if bool(params["relu_attributions"]):
        cam = F.relu(cam)
    used = {"layer": name, "layer_shape": list(cam.shape[2:]), "score": float(score.detach())}
    return MethodOutput(_cam_to_input(cam, x), used)


@entry("guided-grad-cam", "cam", "Guided backprop times the upsampled Grad-CAM map.", _LAYER,
       needs_module=True, reference="Selvaraju et al. 2017, arXiv:1610.02391")
def _guided_grad_cam(model, x, target, params, ctx) -> MethodOutput:
    """Guided Grad-CAM: guided backprop times the (ReLU'd, trilinearly upsampled) Grad-CAM map.

    Signed per channel (the guided gradient keeps its sign). Carries the guided
    backprop warning for networks without nn.ReLU modules.
    """
    from captum.attr import GuidedGradCam

    ctx = as_context(ctx)
    require_eager(model, ctx, "guided-grad-cam", "it hooks a layer and the nn.ReLU modules")
    with model_session(model):
        name, layer = _resolve_cam_layer(model, x, params["layer"], "guided-grad-cam")
        used = guided_warnings(model, x, ctx, "guided-grad-cam")
        f = ScoreFn(model, ctx, target, 2, f"guided grad-cam on {name}")
        with quiet_relu_hook_warning():
            rel = GuidedGradCam(f, layer).attribute(fresh_input(x, grad=True), target=int(target), interpolate_mode="trilinear")
    used["layer"] = name
    return MethodOutput(rel.detach(), used)
