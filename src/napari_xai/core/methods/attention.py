"""Trainable attention maps: the coefficients of a network's own attention gates.

Attention-gated networks (Schlemper et al. 2019; Oktay et al. 2018's Attention
U-Net, MONAI's :class:`monai.networks.nets.AttentionUnet`) multiply skip
features by coefficients in [0, 1] that the network computes itself. Those
coefficients are an explanation the model was trained to produce; this module
reads them out with forward hooks (registry entry ``attention-gates``).

A *gate* is a module with a child ``psi`` that is an ``nn.Sequential`` ending
in ``nn.Sigmoid``: MONAI's ``attentionunet.AttentionBlock`` (``psi`` = 1x1x1
convolution, BatchNorm, Sigmoid, output (N, 1, d, h, w)) and the common
PyTorch copies of it. The hooked module is that ``psi``. Any other module whose
output is a single-channel spatial map (N, 1, d, h, w) with values in [0, 1]
can be named with the ``layer`` parameter.

The coefficients do not depend on the target class: the map is the same for
every class and every segmentation mask.
"""

from __future__ import annotations

import math
from typing import Any


from ..lazy import F, nn, torch
from ..errors import UserError
from ._model import model_session, require_eager
from .registry import MethodOutput, Param, RunContext, entry


__all__ = ["COMBINE", "combine_maps", "find_gates", "gate_maps", "gate_options"]

COMBINE = ("mean", "max", "product")
_AUTO = ("", "none", "auto", "default")
_TOL = 1e-6  # float slack on the [0, 1] check


def _is_gate(module: nn.Module) -> bool:
    psi = getattr(module, "psi", None)
    return isinstance(psi, nn.Sequential) and len(psi) > 0 and isinstance(psi[-1], nn.Sigmoid)


def find_gates(model: nn.Module, modules: dict | None = None) -> list[str]:
    """Names (``named_modules``) of the ``psi`` modules of every attention gate, outermost first (``modules``:
    ``dict(model.named_modules())`` when the caller has it)."""
    items = model.named_modules() if modules is None else modules.items()
    return [f"{name}.psi" if name else "psi" for name, m in items if _is_gate(m)]


def _is_map(out: Any, batch: int) -> bool:
    """A single-channel spatial map (N, 1, d, h, w) of at least 2 voxels with values in [0, 1]."""
    if not (torch.is_tensor(out) and out.ndim == 5 and out.shape[0] == batch and out.shape[1] == 1):
        return False
    if math.prod(out.shape[2:]) < 2 or not torch.is_floating_point(out):
        return False
    return bool(out.min() >= -_TOL) and bool(out.max() <= 1 + _TOL)


def _forward_with_hooks(model: nn.Module, x: torch.Tensor, wanted: list[str] | None, ctx: RunContext | None = None,
                        modules: dict | None = None):
    """One no-grad forward pass: the output of each ``wanted`` module and call counts.

    Returns ``(outputs, counts, candidates)``. With ``wanted=None`` every module
    is hooked and ``candidates`` lists the modules whose output is a
    single-channel map in [0, 1] (one name per output tensor: the outermost
    module that returned it), in execution order, for the hints of error
    messages; otherwise only the wanted modules are hooked (a hook on every
    module and a min/max of every map cost 10-15 % of the pass) and
    ``candidates`` is empty. When ``ctx.capture_input`` is ``x``, the model's
    output is left in ``ctx.scores`` (the prediction, see ``explain``).
    """
    outputs: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    seen: dict[int, str] = {}  # id(output tensor) -> name of the outermost module that returned it
    keep: list[torch.Tensor] = []  # keeps the ids in ``seen`` unique during the pass
    every = wanted is None

    def make_hook(name: str):
        def hook(module, inputs, out):
            counts[name] = counts.get(name, 0) + 1
            if torch.is_tensor(out) and (every or name in wanted):
                outputs[name] = out.detach()
            if every and _is_map(out, x.shape[0]):
                seen[id(out)] = name  # containers finish after their children: the last name is the outermost
                keep.append(out)

        return hook

    modules = dict(model.named_modules()) if modules is None else modules
    names = [n for n in modules if n] if every else [n for n in dict.fromkeys(wanted) if n in modules]
    handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
    try:
        with model_session(model), torch.no_grad():
            out = model(x.detach().clone())
    finally:
        for h in handles:
            h.remove()
    if ctx is not None and ctx.capture_input is x and ctx.scores is None:
        ctx.scores = out
    return outputs, counts, list(dict.fromkeys(seen.values()))


def _hint(candidates: list[str]) -> str:
    return ", ".join(candidates[:8]) + (f" (+{len(candidates) - 8} more)" if len(candidates) > 8 else "") if candidates else "none"


def gate_maps(model: nn.Module, x: torch.Tensor, layer: str | None = None,
              ctx: RunContext | None = None) -> dict[str, torch.Tensor]:
    """The attention coefficients (1, 1, d, h, w) of each gate, by hooked module name.

    ``layer``: one module name or several separated by commas; empty (or
    ``auto``) = every gate found by :func:`find_gates`. Raises a one-line
    :class:`UserError` when the model has no gate, a name does not exist, or a
    module's output is not a single-channel map in [0, 1]. One forward pass
    hooks only the gates; a second one, with every module hooked, runs only to
    list the choices in an error message.
    """
    text = "" if layer is None else str(layer).strip()
    modules = dict(model.named_modules())
    gates = find_gates(model, modules)
    names = gates if text.lower() in _AUTO else [n.strip() for n in text.split(",") if n.strip()]
    outputs, counts, _ = _forward_with_hooks(model, x, names, ctx, modules) if names else ({}, {}, [])

    def choices() -> str:
        candidates = _forward_with_hooks(model, x, None, None, modules)[2]
        found = [g for g in gates if g in candidates]
        return _hint(found + [c for c in candidates if c not in found])  # the gates first in every hint

    if not names:
        raise UserError(
            "this model has no attention gates (modules of type AttentionBlock); pick one with layer=NAME "
            f"(single-channel maps in [0, 1] here: {choices()}) or use another method."
        )
    for name in names:
        if name not in modules:
            raise UserError(f"attention-gates layer {name!r} does not exist; single-channel maps in [0, 1]: {choices()}.")
        if counts.get(name, 0) == 0:
            raise UserError(f"attention-gates layer {name!r} does not run in a forward pass; choose one of: {choices()}.")
        if counts[name] > 1:
            raise UserError(
                f"attention-gates layer {name!r} runs {counts[name]} times per forward pass (a shared module); "
                f"choose one of: {choices()}."
            )
        out = outputs.get(name)
        if not _is_map(out, x.shape[0]):
            what = f"output shape {tuple(out.shape)}" if torch.is_tensor(out) else "no tensor output"
            if torch.is_tensor(out) and out.ndim == 5 and out.shape[1] == 1 and out.numel():
                what += f" with values in [{float(out.min()):.3g}, {float(out.max()):.3g}]"
            raise UserError(
                f"attention-gates layer {name!r} has {what}, not a single-channel map (N, 1, d, h, w) in [0, 1]; "
                f"choose one of: {choices()}."
            )
    return {name: outputs[name][:1].float().clamp(0.0, 1.0) for name in names}


def combine_maps(maps: list[torch.Tensor], combine: str) -> torch.Tensor:
    """Combine (1, 1, D, H, W) maps of one grid voxel by voxel: ``mean``, ``max`` or ``product``."""
    stack = torch.cat(maps, dim=1)
    if combine == "mean":
        return stack.mean(dim=1, keepdim=True)
    if combine == "max":
        return stack.amax(dim=1, keepdim=True)
    if combine == "product":
        return stack.prod(dim=1, keepdim=True)
    raise UserError(f"combine must be one of {', '.join(COMBINE)}; got {combine!r}.")


def gate_options(model: Any, x: Any) -> tuple[list[str], str | None]:
    """The attention gates of ``model`` (:func:`find_gates`); empty means every gate, so there is no one default."""
    return (find_gates(model) if isinstance(model, nn.Module) and not isinstance(model, torch.jit.ScriptModule)
            else []), None


@entry(
    "attention-gates", "attention",
    "Coefficients in [0, 1] of the model's own attention gates (e.g. MONAI AttentionUnet), upsampled "
    "trilinearly; the same map for every target class.",
    Param("layer", "layer", None,
          "Gate module name(s) (named_modules, comma-separated) whose output is an (N, 1, d, h, w) map in [0, 1]; "
          "empty = every attention gate (the 'psi' of each AttentionBlock).", layers=gate_options),
    Param("combine", str, "mean", "How the upsampled gate maps are combined per voxel: mean, max, or product "
          "(high only where every gate is open).", choices=COMBINE),
    needs_module=True, signed=False, has_intermediate=True, target_independent=True,
    reference="Schlemper et al. 2019, Med. Image Anal. 53:197-207, arXiv:1808.08114; "
              "Oktay et al. 2018, arXiv:1804.03999",
)
def _attention_gates(model, x, target, params, ctx) -> MethodOutput:
    """Attention coefficients of the model's attention gates, upsampled trilinearly to the input grid.

    Gates: every module with a ``psi`` child that is an ``nn.Sequential``
    ending in ``nn.Sigmoid`` (MONAI's ``AttentionBlock`` in ``AttentionUnet``;
    Schlemper et al. 2019), or the module(s) named by ``layer`` (any module,
    or several separated by commas, whose output is a single-channel map
    (N, 1, d, h, w) with values in [0, 1]). Each gate's map is upsampled
    trilinearly (``align_corners=False``) to the model's input grid and the
    maps are combined per voxel: ``mean``, ``max`` or ``product`` (high only
    where every gate passes the signal). With two or more gates each gate's
    map is also returned (napari: one layer per gate). Values stay in [0, 1]:
    the pipeline interpolates the map to the volume grid without the
    total-keeping factor used for relevance. The map is read from one forward
    pass and does not depend on the target class or segmentation mask; the
    target is recorded only for provenance (``target_independent``). The map
    is one for all channels: it is replicated per input channel.
    """
    ctx = ctx if ctx is not None else RunContext()
    require_eager(model, ctx, "attention-gates", "it hooks the attention gates")
    combine = str(params["combine"])
    ctx.step(0.1, "attention gates: forward pass")
    maps = gate_maps(model, x, params["layer"], ctx)
    size = tuple(int(s) for s in x.shape[2:])
    up = {n: F.interpolate(m, size=size, mode="trilinear", align_corners=False) for n, m in maps.items()}
    combined = combine_maps(list(up.values()), combine).clamp(0.0, 1.0)
    ctx.step(0.9, "attention gates: combined")
    used: dict = {
        "layer": ", ".join(maps),
        "gates": list(maps),
        "gate_shapes": {n: list(m.shape[2:]) for n, m in maps.items()},
        "gate_means": {n: float(m.mean()) for n, m in maps.items()},
        "combine": combine,
        "target_independent": True,
    }
    arrays: dict = {"per_voxel": True}
    if len(up) > 1:
        arrays["intermediate"] = {n: m[0, 0].cpu().numpy() for n, m in up.items()}
    used["_arrays"] = arrays
    rel = combined.to(x.dtype).expand(-1, x.shape[1], -1, -1, -1).contiguous()
    return MethodOutput(rel, used)
