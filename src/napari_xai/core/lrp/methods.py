"""The LRP entries of the method registry: the composites, each Table 1 rule on every layer, and ``lrp``.

All of them run through the one engine, :func:`~napari_xai.core.lrp.propagate.run_config`:
a composite or a Table 1 rule is a configuration built from the entry's
parameters; ``lrp`` takes the configuration from a file (the LRP designer's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..methods.registry import Method, MethodOutput, Param, register
from .composites import COMPOSITES, CompositePreset
from .config import LrpConfig
from .params import PARAM_HELP, PRESETS, formula, preset_params
from .types import NORM_TYPES

if TYPE_CHECKING:  # torch loads on first use (docs/performance.md, "Start-up")
    from torch import nn

__all__ = ["register_all"]

#: Keys of a composite's record (its provenance); the designer's ``lrp`` keeps the whole record.
_COMPOSITE_KEYS = ("rules", "first_layers", "merged_batchnorm", "residual_sums", "gates", "output_relevance",
                   "relevance_sum", "conservation")


def _run(model: nn.Module, x, target: int, config: LrpConfig, ctx, label: str) -> MethodOutput:
    from .propagate import run_config

    return run_config(model, x, target, config, ctx, boundaries=False, label=label)


def _composite_entry(c: CompositePreset) -> Method:
    def fn(model, x, target, params, ctx):
        out = _run(model, x, target, c.config(params["epsilon"], params["gamma"] if c.uses_gamma else None), ctx, c.name)
        used: dict[str, Any] = {k: out.used[k] for k in _COMPOSITE_KEYS}
        norms = sum(isinstance(m, NORM_TYPES) for m in model.modules())
        used["pass_norm_layers"] = norms - used["merged_batchnorm"]
        return MethodOutput(out.relevance, used)

    fn.__name__ = c.name.replace("-", "_")
    fn.__doc__ = c.summary
    eps_help = (
        "Stabiliser added to each layer's pre-activation z (z + eps*sign z); larger absorbs weak, noisy "
        "contributions. 0 is treated as 1e-12."
        if c.dense == c.conv
        else "Epsilon of the dense (nn.Linear) layers' epsilon rule. 0 is treated as 1e-12."
    )
    params = [Param("epsilon", float, c.epsilon, eps_help, minimum=0.0)]
    if c.uses_gamma:
        params.append(Param("gamma", float, 0.25, "Gamma rule: weight of positive contributions (w + gamma*w+).",
                            minimum=0.0, maximum=100.0))
    return Method(name=c.name, family="lrp", summary=c.summary, fn=fn, params=tuple(params), needs_module=True,
                  multiplies_input=True,
                  signed=True, reference=c.reference)


def _rule_entry(name: str) -> Method:
    p = PRESETS[name]

    def fn(model, x, target, params, ctx):
        rule = preset_params(name, **params)
        out = _run(model, x, target, LrpConfig(name=name, default=rule), ctx, name)
        used = {"rule": name, "formula": formula(rule)}
        used.update({k: out.used[k] for k in _COMPOSITE_KEYS if k in out.used})
        return MethodOutput(out.relevance, used)

    fn.__name__ = name.replace("-", "_")
    summary = f"{p.title} (Table 1 of Huang et al.) on every Conv/Linear layer: {p.formula}."
    fn.__doc__ = summary
    params = tuple(Param(k, float, getattr(p.params, k), PARAM_HELP[k], minimum=0.0) for k in p.free)
    return Method(name=name, family="lrp", summary=summary, fn=fn, params=params, needs_module=True, signed=True,
                  multiplies_input=True,
                  reference=p.reference)


def _lrp_configured(model, x, target, params, ctx) -> MethodOutput:
    """LRP with a designer configuration: the unified rule (Huang et al. Eqn. 5) per segment of layers.

    ``config`` is a JSON file written by the LRP designer (or by hand, see
    ``docs/lrp-designer.md``) or an :class:`~napari_xai.core.lrp.config.LrpConfig`; without one, the composite of
    Montavon et al. 2019 is used (LRP-gamma on the lower third of the Conv/Linear layers in
    execution order, LRP-epsilon in the middle, LRP-0 on top). The run reports
    relevance conservation (input sum against the target score) and warns when
    rules that should conserve are more than 10 % off.
    """
    from .config import load_config
    from .propagate import run_config

    given = params["config"]
    if isinstance(given, LrpConfig):  # from the designer or a comparison: no file behind it
        cfg, given = given, None
    else:
        cfg = load_config(given, params["configuration"] or None) if given else None
    out = run_config(model, x, target, cfg, ctx, boundaries=bool(params["boundaries"]))
    # the provenance names the file (if any); the full configuration is in out.used["configuration"]
    out.used["config"] = given
    return out


def register_all() -> None:
    """Register the composites, the Table 1 rules and ``lrp`` (in this order: the listing order)."""
    for c in COMPOSITES.values():
        register(_composite_entry(c))
    for name in PRESETS:  # each Table 1 rule on every layer; lrp-epsilon is also a composite (the same thing)
        if name not in COMPOSITES:
            register(_rule_entry(name))
    register(Method(
        name="lrp",
        family="lrp",
        summary="LRP with a designer configuration: unified rule (10 parameters) per layer segment; default gamma|epsilon|0.",
        fn=_lrp_configured,
        params=(
            Param("config", str, None, "LRP configuration JSON (from the LRP designer); empty = gamma | epsilon | 0 composite."),
            Param("configuration", str, None, "Name of the configuration inside a library file; empty = its active one."),
            Param("boundaries", bool, True, "Also keep the relevance at each segment boundary (shown as layers in napari)."),
        ),
        needs_module=True,
        signed=True,
        reference="Huang et al., A Visual Designer of LRP Models (unified rule, Eqn. 5); Montavon et al. 2019",
        multiplies_input=True,
        has_intermediate=True,
        takes_config=True,
    ))
