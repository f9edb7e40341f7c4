"""Concept Relevance Propagation (Achtibat et al., Nat. Mach. Intell. 2023) on our LRP engine.

CRP conditions an LRP backward pass on a set of *concepts*, here the channels of
one layer: at that layer's output, the relevance of every other channel is set
to zero, and the rest propagates to the input as usual. One heatmap per concept
says where in the input that concept carried the decision.

Why not ``zennit-crp``: its latest release (0.6.0) requires ``zennit<=0.4.6``,
while our rules, canonizers and presets need ``zennit>=0.5.1``; the two cannot
be installed together. The conditioning itself is small, and doing it on our
engine keeps every preset and designer configuration, our canonizers
(verified BatchNorm merges, residual sums, gates) and the conservation report.

How one pass serves many concepts (:func:`conditional_pass`):

1. one forward pass through the LRP-modified model (rules, canonizers), with
   the graph kept;
2. one backward pass from the target score to the layer's output tensor ``a``
   gives the relevance arriving at the layer, ``R`` (C, ...): the channels'
   relevances and their shares;
3. for each concept (a set of channels S), one backward pass *from* ``a`` to
   the input with ``R * mask_S`` as the incoming relevance. Every LRP rule is
   linear in its incoming relevance (for fixed activations), so the maps of
   disjoint sets add up: the sum over all channels' maps is the relevance that
   passed through the layer. When nothing bypasses the layer (no skip
   connection around it) that is the unconditioned LRP map.

Steps 1-2 are shared by all concepts; only the part of the backward pass below
the layer is repeated per concept. Relevance that bypasses the layer (a
residual skip around it) is in no concept's map; :func:`conditional_pass`
reports it as ``bypass`` when the unconditioned map is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import UserError
from ..methods._model import check_scores, model_session, require_eager, trace_model
from ..methods.registry import RunContext
from .canonizers import ResidualSums, merge_canonizer, verified_merges
from .capture import RelevanceFilterHooks
from .composites import default_config, final_rules, layer_map, resolve, unknown_layer
from .config import LrpConfig
from .types import list_layers, stabilizer_for

__all__ = ["ConditionalPass", "concept_layer_options", "conditional_pass", "default_concept_layer", "parse_channels"]


@dataclass
class ConditionalPass:
    """What one CRP pass produced (see :func:`conditional_pass`).

    Attributes
    ----------
    layer : str
        The conditioned layer.
    layer_relevance : torch.Tensor
        Relevance arriving at the layer's output, (C, ...) for the one input (detached).
    concepts : list of tuple of int
        The channel sets, in the order of ``maps``.
    maps : list of torch.Tensor
        Per concept, the conditional relevance at the input, (1, C_in, D, H, W).
    output_relevance : float
        The target score injected at the output.
    unconditioned : torch.Tensor or None
        The plain LRP map (1, C_in, D, H, W), when asked for.
    """

    layer: str
    layer_relevance: torch.Tensor
    concepts: list[tuple[int, ...]]
    maps: list[torch.Tensor]
    output_relevance: float
    unconditioned: torch.Tensor | None = None
    merged_batchnorm: int = 0
    residual_sums: int = 0
    record: dict = field(default_factory=dict)

    @property
    def channel_relevance(self) -> torch.Tensor:
        """(C,) relevance of each channel at the layer: ``layer_relevance`` summed over positions."""
        r = self.layer_relevance
        return r.reshape(r.shape[0], -1).sum(dim=1)


def default_concept_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last Conv layer (in execution order) with a 3D feature map, else the last layer with one."""
    layers = list_layers(model, x)
    convs = [l.name for l in layers if l.kind == "rule" and l.spatial and l.type.startswith("Conv")]
    if convs:
        return convs[-1]
    spatial = [l.name for l in layers if l.spatial]
    if not spatial:
        raise UserError("CRP needs a layer with channels and a 3D feature map, but this model has none.")
    return spatial[-1]


def concept_layer_options(model: nn.Module, x: torch.Tensor) -> tuple[list[str], str | None]:
    """The layers a user picks concepts from (Conv layers with a 3D map, run once) and the default among them.

    CRP also accepts any other layer with channels (an activation, a pooling) by name.
    """
    if isinstance(model, torch.jit.ScriptModule):
        return [], None
    names = [l.name for l in list_layers(model, x)
             if l.kind == "rule" and l.spatial and l.type.startswith("Conv") and l.calls <= 1]
    return names, (default_concept_layer(model, x) if names else None)


def parse_channels(spec: Any, n_channels: int, layer: str) -> list[int] | None:
    """Channel indices from ``"3,5,12"``, ``"4-7"``, an int or a sequence; ``None``/``""`` -> None; ``"all"`` -> all."""
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if isinstance(spec, str) and spec.strip().lower() == "all":
        return list(range(n_channels))
    items: list[int] = []
    try:
        if isinstance(spec, (int,)):
            items = [int(spec)]
        elif isinstance(spec, str):  # also "[3, 5]": a list as a record writes it
            for part in spec.strip().strip("[]()").replace(";", ",").replace(" ", ",").split(","):
                part = part.strip()
                if not part:
                    continue
                if "-" in part[1:]:
                    a, b = part.split("-", 1) if not part.startswith("-") else (part, "")
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise ValueError
                    items.extend(range(lo, hi + 1))
                else:
                    items.append(int(part))
        else:
            items = [int(c) for c in spec]
    except (TypeError, ValueError):
        raise UserError(f"channels must be channel numbers like 3,5,12 or 4-7 (or 'all'), got {spec!r}.") from None
    bad = [c for c in items if not 0 <= c < n_channels]
    if bad:
        raise UserError(f"channel {bad[0]} does not exist: layer {layer!r} has {n_channels} channels (0..{n_channels - 1}).")
    if not items:
        raise UserError(f"channels {spec!r} names no channel; give channel numbers like 3,5,12 or 'all'.")
    return sorted(set(items))


def _check_layer(model: nn.Module, x: torch.Tensor, layer: str | None) -> str:
    layers = list_layers(model, x)
    if layer is None or not str(layer).strip() or str(layer).strip().lower() in ("auto", "default", "none"):
        return default_concept_layer(model, x)
    name = str(layer).strip()
    info = {l.name: l for l in layers}
    if name not in info:
        raise unknown_layer(name, layers, "CRP")
    shape = info[name].output_shape
    if shape is None or len(shape) < 2:
        raise UserError(f"CRP layer {name!r} has output {shape}, no channels; choose a Conv layer or its activation.")
    if info[name].calls > 1:
        raise UserError(f"CRP layer {name!r} runs {info[name].calls} times per forward pass (a shared module); "
                        "choose a layer that runs once.")
    return name


def conditional_pass(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    config: LrpConfig | None,
    layer: str | None,
    select: Callable[[torch.Tensor, str], Sequence[Sequence[int]]],
    ctx: RunContext | None = None,
    unconditioned: bool = False,
    label: str = "crp",
    batch: int = 8,
    expected: int | Callable[[int], int] | None = None,
) -> ConditionalPass:
    """One forward pass, the relevance at ``layer``, then one conditional map per concept.

    Parameters
    ----------
    model : nn.Module
        Eager model returning (N, classes) (segmentation targets wrapped as for LRP).
    x : torch.Tensor
        Input (1, C, D, H, W) on the model grid.
    target : int
        Class whose score is injected at the output.
    config : LrpConfig or None
        Any LRP configuration (a composite preset's or the designer's); None: the γ | ε | 0 composite.
    layer : str or None
        Module name whose output channels are the concepts; None: the last Conv layer with a 3D output.
    select : callable
        ``select(layer_relevance (C, ...), layer name) -> list of channel sets``: which concepts to propagate,
        chosen after the relevance at the layer is known (e.g. the top-k channels).
    ctx : RunContext, optional
    unconditioned : bool
        Also return the plain LRP map (the first backward pass then runs to the input).
    batch : int
        Concepts propagated together: the forward pass runs on ``batch`` copies of the input (one more for the
        plain map with ``unconditioned``), and each backward pass below the layer carries one concept per copy
        (batched convolutions are several times faster per map on a CPU than one at a time). Memory grows with
        the copies. 1 propagates the concepts one by one. A model that fails on a batch (or changes it) falls
        back to one copy, with a warning.
    expected : int or callable, optional
        How many concepts ``select`` will return (or ``expected(n_channels)``), to size the batch.

    Returns
    -------
    ConditionalPass
    """
    ctx = ctx if ctx is not None else RunContext()
    require_eager(model, ctx, label, "CRP attaches LRP rules to its layers")
    name = _check_layer(model, x, layer)
    layers = list_layers(model, x)
    info = {l.name: l for l in layers}[name]
    n_ch = int(info.output_shape[1]) if info.output_shape else 1
    want = expected(n_ch) if callable(expected) else expected
    b = 1 if int(batch) <= 1 else min(int(batch), int(want) if want else int(batch)) + (1 if unconditioned else 0)
    if b > 1:
        try:
            return _run(model, x, target, config, name, layers, select, ctx, unconditioned, label, b)
        except (UserError, KeyboardInterrupt):
            raise
        except _BatchRefused as exc:
            ctx.warn(f"{label}: the model does not take a batch of {b} copies ({exc}); concepts propagate one by one.")
    return _run(model, x, target, config, name, layers, select, ctx, unconditioned, label, 1)


class _BatchRefused(Exception):
    pass


def _run(model, x, target, config, name, layers, select, ctx, unconditioned, label, b) -> ConditionalPass:
    from zennit.core import Composite

    config = config if config is not None else default_config(layers)
    resolved = resolve(config, layers)
    modules = dict(model.named_modules())
    stab = stabilizer_for(x.dtype)
    with model_session(model):
        ctx.step(0.05, f"{label}: tracing the model")
        trace = trace_model(model, x)
        name_map = verified_merges(model, x, trace.bn_pairs, ctx)
        rules = final_rules(resolved, modules, trace.first_layers)
        composite = Composite(module_map=layer_map(resolved, rules, x, stab),
                              canonizers=[merge_canonizer(name_map)] if name_map else [])
        kept: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, output):
            if "a" not in kept and torch.is_tensor(output) and output.requires_grad:
                kept["a"] = output

        # the relevance filter of a configuration applies to the rule layers' outputs, except at the conditioned
        # layer: there the relevance is read once and then masked per concept
        filt_names: list[str] = []
        filt_fn = None
        if config.filter is not None:
            order = {l.name: l.index for l in layers}
            filt_names = [n for n in sorted(resolved.rules, key=lambda n: order.get(n, 0))[:-1] if n != name]
            filt_fn = config.filter.apply
        handle = modules[name].register_forward_hook(keep)  # before Zennit's hooks: the layer's own output
        xg = x.detach().expand(b, *x.shape[1:]).clone().requires_grad_(True)
        sums = ResidualSums(stab)
        try:
            with RelevanceFilterHooks(model, filt_names, filt_fn):
                with composite.context(model) as modified:
                    ctx.step(0.15, f"{label}: forward")
                    with sums:
                        if b > 1:
                            try:
                                out = modified(xg)
                            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                                raise _BatchRefused(str(exc).splitlines()[0][:120] if str(exc) else "error") from None
                        else:
                            out = modified(xg)
                    if b > 1 and not (torch.is_tensor(out) and out.ndim == 2 and out.shape[0] == b):
                        raise _BatchRefused(f"output {tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
                    scores = check_scores(out, target)
                    a = kept.get("a")
                    if a is None:
                        raise UserError(f"CRP layer {name!r} did not run with a gradient in the forward pass; "
                                        "choose a layer on the path to the output.")
                    if a.ndim < 2:
                        raise UserError(f"CRP layer {name!r} gives {tuple(a.shape)}, no channels; choose a Conv layer.")
                    if b > 1 and a.shape[0] != b:
                        raise _BatchRefused(f"layer output {tuple(a.shape)}")
                    start = torch.zeros_like(scores)
                    start[:, int(target)] = scores[:, int(target)].detach()  # the same score for every copy
                    ctx.step(0.3, f"{label}: relevance at {name}")
                    # the part above the layer only: each channel's relevance at the layer
                    (rel_a,) = torch.autograd.grad(scores, a, grad_outputs=start, retain_graph=True,
                                                   allow_unused=True)
                    if rel_a is None:
                        raise UserError(f"no relevance reached layer {name!r}; it is not on the path to the target.")
                    rel_a = rel_a.detach()
                    n_ch = int(rel_a.shape[1])
                    concepts = [tuple(sorted({int(c) for c in g})) for g in select(rel_a[0], name)]
                    for g in concepts:
                        bad = [c for c in g if not 0 <= c < n_ch]
                        if bad:
                            raise UserError(f"channel {bad[0]} does not exist: layer {name!r} has {n_ch} channels "
                                            f"(0..{n_ch - 1}).")
                    maps: list[torch.Tensor] = []
                    full = None
                    view = (b, n_ch) + (1,) * (rel_a.ndim - 2)
                    slots: list[Any] = (["full"] if unconditioned else []) + list(concepts)
                    for i in range(0, len(slots), b):
                        chunk = slots[i:i + b]
                        ctx.step(0.35 + 0.6 * i / max(len(slots), 1),
                                 f"{label}: concepts {i + 1}-{i + len(chunk)} of {len(slots)}")
                        mask = torch.zeros((b, n_ch), dtype=rel_a.dtype, device=rel_a.device)
                        for j, g in enumerate(chunk):
                            mask[j, list(range(n_ch)) if g == "full" else list(g)] = 1
                        incoming = rel_a.expand(b, *rel_a.shape[1:]) * mask.view(view)
                        if chunk[0] == "full":
                            # the plain map needs the whole backward pass (relevance that bypasses the layer too):
                            # copy 0 starts at the output and passes the layer unchanged; the other copies start
                            # with nothing at the output and get their concept's relevance at the layer
                            first = torch.zeros_like(start)
                            first[0] = start[0]
                            h = a.register_hook(lambda g, inc=incoming: torch.cat([g[:1], inc[1:]]))
                            try:
                                (m,) = torch.autograd.grad(scores, xg, grad_outputs=first, retain_graph=True)
                            finally:
                                h.remove()
                        else:
                            (m,) = torch.autograd.grad(a, xg, grad_outputs=incoming, retain_graph=True)
                        for j, g in enumerate(chunk):
                            if g == "full":
                                full = m[j:j + 1].detach()
                            else:
                                maps.append(m[j:j + 1].detach())
        finally:
            handle.remove()
    return ConditionalPass(layer=name, layer_relevance=rel_a[0], concepts=concepts, maps=maps,
                           output_relevance=float(start[0, int(target)]), unconditioned=full,
                           merged_batchnorm=len(name_map), residual_sums=sums.count,
                           record={"configuration": config.to_dict(), "batch": b})
