"""Layer-wise relevance propagation: one engine for the composite presets and the designer's configurations.

Modules, from the bottom up: ``types`` (layer groups, the layer list),
``params`` (the unified rule's ten parameters, Table 1), ``rules`` (Zennit
hooks), ``canonizers`` (BatchNorm merging, residual sums, gates), ``config``
(configurations and their JSON files), ``composites`` (rules per layer, the
composite presets), ``capture`` (relevance at named layers), ``propagate``
(the engine) and ``methods`` (the registry entries). See ``docs/lrp-designer.md``.
"""

from __future__ import annotations

from .composites import COMPOSITES, CompositePreset, Resolved, default_config, resolve
from .config import FORMAT, LIBRARY_FORMAT, LayerFilter, LrpConfig, Segment, load_config, load_configs, save_configs
from .methods import register_all as _register_all
from .params import (
    CUSTOM, OLD_NAMES, PARAM_HELP, PARAM_NAMES, PRESETS, STEPS, GeneralisedGamma, InputBox, Preset, RuleParams, conserves,
    describe, formula, get_preset, match_preset, preset_params,
)
from .types import (
    LAYER_RULES, NORM_TYPES, STABILIZER, LayerInfo, is_output_reduction, layer_kind, list_layers, stabilizer_for,
    suggest_rule,
)

__all__ = [
    "COMPOSITES", "CONSERVATION_TOLERANCE", "CUSTOM", "FORMAT", "LAYER_RULES", "LIBRARY_FORMAT", "NORM_TYPES",
    "PARAM_HELP", "PARAM_NAMES", "OLD_NAMES", "PRESETS", "STABILIZER", "STEPS", "CompositePreset", "GeneralisedGamma", "InputBox",
    "LayerFilter", "LayerInfo", "LrpConfig", "PassRule", "Preset", "RelevanceCapture", "RelevanceFilterHooks",
    "ResidualSums", "Resolved", "RuleParams", "Segment", "SumRule", "UnifiedRule", "boundary_points",
    "conservation_report", "conserves", "default_config", "describe", "formula", "get_preset", "is_output_reduction",
    "layer_kind", "list_layers", "load_config", "load_configs", "make_hook", "match_preset", "merge_canonizer",
    "preset_params", "resolve", "run_config", "save_configs", "stabilizer_for", "suggest_rule",
    "verified_merges",
]

# Zennit and the torch-side modules load on first use, not with the registry (docs/performance.md, "Start-up")
_LAZY = {
    **dict.fromkeys(("UnifiedRule", "SumRule", "PassRule", "make_hook"), "rules"),
    **dict.fromkeys(("ResidualSums", "merge_canonizer", "verified_merges"), "canonizers"),
    **dict.fromkeys(("RelevanceCapture", "RelevanceFilterHooks"), "capture"),
    **dict.fromkeys(("CONSERVATION_TOLERANCE", "boundary_points", "conservation_report", "run_config"), "propagate"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_register_all()
