"""The ``crp`` entry of the registry (family ``concepts``): LRP conditioned on channels of one layer.

Concept Relevance Propagation (Achtibat et al. 2023) on our LRP engine
(:mod:`napari_xai.core.lrp.conditional`, which says why not ``zennit-crp``). The
map is the relevance that flows through the chosen channels of ``layer``, under
any LRP composite, Table 1 rule or designer configuration. Per-concept maps come
back as intermediate maps (``channel 12``), so ``explain()`` takes them to the
volume grid with the main map; :func:`napari_xai.core.concepts.top_concepts` is
built on that.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import UserError
from .registry import Method, MethodOutput, Param, register

__all__ = ["CRP_RULES", "concept_config", "crp_method"]


def _rule_names() -> tuple[str, ...]:
    from ..lrp.composites import COMPOSITES
    from ..lrp.params import PRESETS

    return tuple(COMPOSITES) + tuple(n for n in PRESETS if n not in COMPOSITES) + ("lrp",)


#: The LRP rule sets CRP can condition: every composite, every Table 1 rule, and ``lrp`` (a designer configuration).
CRP_RULES: tuple[str, ...] = _rule_names()


def concept_config(rules: str, epsilon: float | None = None, gamma: float = 0.25, config: Any = None,
                   configuration: str | None = None):
    """The :class:`~napari_xai.core.lrp.config.LrpConfig` of an LRP method name (or None: the γ | ε | 0 composite).

    ``rules`` is a composite (``lrp-epsilon-plus`` ...), a Table 1 rule (``lrp-z-plus`` ...) or ``lrp``; for
    ``lrp``, ``config`` is a designer configuration (JSON file or ``LrpConfig``), empty for the γ | ε | 0 composite.
    ``epsilon`` None takes the composite's own default.
    """
    from ..lrp.composites import COMPOSITES
    from ..lrp.config import LrpConfig, load_config
    from ..lrp.params import PRESETS, preset_params

    if rules == "lrp":
        if config is None or (isinstance(config, str) and not config.strip()):
            return None
        if isinstance(config, LrpConfig):
            return config
        return load_config(config, configuration or None)
    if config not in (None, ""):
        raise UserError(f"a configuration file applies to rules 'lrp' (the designer's), not to {rules!r}; "
                        "leave 'config' empty or set rules=lrp.")
    if rules in COMPOSITES:
        c = COMPOSITES[rules]
        return c.config(c.epsilon if epsilon is None else epsilon, gamma if c.uses_gamma else None)
    if rules in PRESETS:
        p = PRESETS[rules]
        kw = {"epsilon": epsilon} if epsilon is not None and "epsilon" in p.free else {}
        if "gamma1p" in p.free:
            kw["gamma1p"] = gamma
        return LrpConfig(name=rules, default=preset_params(rules, **kw))
    raise UserError(f"unknown LRP rules {rules!r} for crp; use one of {', '.join(CRP_RULES)}.")


def _peak(rel, chans: list[int], grid_affine, model_shape) -> dict:
    """Where the chosen channels' relevance at the layer is largest: layer voxel, model-grid voxel, world mm."""
    r = rel[chans].sum(dim=0) if rel.ndim >= 2 else rel
    if r.ndim != 3:
        return {}
    flat = int(r.reshape(-1).argmax())
    idx = np.unravel_index(flat, tuple(r.shape))
    scale = np.asarray(model_shape, float) / np.asarray(r.shape, float)
    vox = (np.asarray(idx, float) + 0.5) * scale - 0.5  # voxel centres, as a trilinear resize with align_corners=False
    out = {"peak_relevance": float(r.reshape(-1)[flat]), "peak_layer_voxel": [int(i) for i in idx],
           "peak_model_voxel": [round(float(v), 3) for v in vox]}
    if grid_affine is not None:
        A = np.asarray(grid_affine, float)
        out["peak_mm"] = [round(float(v), 3) for v in (A[:3, :3] @ vox + A[:3, 3])]
    return out


def _crp(model, x, target, params, ctx) -> MethodOutput:
    """CRP: relevance conditioned on channels of one layer (Achtibat et al. 2023), on our LRP engine.

    One forward pass and one backward pass to ``layer`` give each channel's
    relevance there; then, per concept, the relevance of the other channels is
    set to zero at the layer's output and the rest propagates to the input with
    the same LRP rules. ``channels`` empty: the ``top`` most relevant channels.
    With ``each``, every channel of the set also gets its own map (intermediate
    map ``channel N``) and the main map is their sum (LRP is linear in the
    relevance it propagates); without it, one pass conditions on the whole set.
    """
    import torch

    from ..lrp.conditional import conditional_pass, parse_channels

    config = concept_config(params["rules"], params["epsilon"], params["gamma"], params["config"],
                            params["configuration"])
    chosen: dict[str, Any] = {}

    def select(rel_a, layer):
        n = int(rel_a.shape[0])
        per = rel_a.reshape(n, -1).sum(dim=1)
        chans = parse_channels(params["channels"], n, layer)
        if chans is None:
            k = min(int(params["top"]), n)
            chans = [int(c) for c in torch.argsort(per, descending=True, stable=True)[:k]]
        chosen["channels"] = chans
        chosen["per_channel"] = per
        return [[c] for c in chans] if params["each"] else [chans]

    def expected(n: int) -> int:
        if not params["each"]:
            return 1
        chans = parse_channels(params["channels"], n, "the layer")
        return len(chans) if chans is not None else min(int(params["top"]), n)

    cp = conditional_pass(model, x, target, config, params["layer"], select, ctx,
                          unconditioned=bool(params["unconditioned"]), batch=int(params["batch"]), expected=expected)
    chans = chosen["channels"]
    maps = cp.maps
    total_map = maps[0].clone() if len(maps) == 1 else torch.stack(maps).sum(dim=0)
    per = chosen["per_channel"]
    layer_total = float(per.sum())
    set_rel = float(per[chans].sum())
    map_sum = float(total_map.sum())
    arrays: dict[str, Any] = {}
    if params["each"]:
        for c, m in zip(chans, maps):
            arrays[f"channel {c}"] = m[0].sum(dim=0).float().cpu().numpy()
    if cp.unconditioned is not None:
        arrays["unconditioned"] = cp.unconditioned[0].sum(dim=0).float().cpu().numpy()
    used: dict[str, Any] = {
        "layer": cp.layer,
        "channels": [int(c) for c in chans],
        "channel_relevance": [float(v) for v in per],
        "layer_relevance": layer_total,
        "concept_relevance": set_rel,
        "concept_share": set_rel / layer_total if abs(layer_total) > 1e-12 else float("nan"),
        "output_relevance": cp.output_relevance,
        "relevance_sum": map_sum,
        "conservation": {"layer": set_rel, "input": map_sum,
                         "ratio": map_sum / set_rel if abs(set_rel) > 1e-12 else float("nan")},
        "merged_batchnorm": cp.merged_batchnorm,
        "residual_sums": cp.residual_sums,
        "configuration": cp.record["configuration"],
        "layer_shape": list(cp.layer_relevance.shape),
        "batch_used": cp.record["batch"],
        **_peak(cp.layer_relevance, chans, ctx.grid_affine, tuple(x.shape[2:])),
    }
    if isinstance(params["config"], str) or params["config"] is None:
        used["config"] = params["config"]
    else:
        used["config"] = None  # an in-memory configuration: recorded in full under "configuration"
    if cp.unconditioned is not None:
        used["unconditioned_sum"] = float(cp.unconditioned.sum())
    used["_arrays"] = {"intermediate": arrays}
    return MethodOutput(total_map, used)


crp_method = register(Method(
    name="crp",
    family="concepts",
    summary="Concept Relevance Propagation: LRP conditioned on channels of one layer (one map per concept).",
    fn=_crp,
    params=(
        Param("layer", str, None, "Layer whose output channels are the concepts; empty = the last Conv layer with a 3D output."),
        Param("channels", str, None, "Channels to condition on, e.g. 3,5,12 or 4-7 or all; empty = the 'top' most relevant."),
        Param("top", int, 1, "Without 'channels': how many of the most relevant channels form the concept set.",
              minimum=1, maximum=4096),
        Param("each", bool, False, "Also give every channel of the set its own conditional map (intermediate maps)."),
        Param("rules", str, "lrp-epsilon-plus", "LRP rules: a composite, a Table 1 rule, or lrp (a designer configuration).",
              choices=CRP_RULES),
        Param("config", str, None, "With rules=lrp: LRP configuration JSON from the designer; empty = gamma | epsilon | 0."),
        Param("configuration", str, None, "With rules=lrp: name of the configuration inside a library file."),
        Param("epsilon", float, None, "Epsilon of the rules' epsilon layers; empty = the composite's default.", minimum=0.0),
        Param("gamma", float, 0.25, "Gamma of rules with a gamma (lrp-gamma, the gamma rule).", minimum=0.0, maximum=100.0),
        Param("unconditioned", bool, False, "Also give the plain (unconditioned) LRP map as an intermediate map."),
        Param("batch", int, 8, "Concept maps propagated together (the forward pass runs on this many copies, +1 for 'unconditioned'); 1 = one by one.",
              minimum=1, maximum=256),
    ),
    needs_module=True,
    signed=True,
    reference="Achtibat et al., From attribution maps to human-understandable explanations through Concept "
              "Relevance Propagation, Nat. Mach. Intell. 5, 1006-1019 (2023), doi:10.1038/s42256-023-00711-8",
    multiplies_input=True,
    has_intermediate=True,
))
