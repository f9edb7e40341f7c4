"""Which rule each layer gets: a configuration resolved against a model, the layer map, the composites.

* :func:`resolve` checks a configuration against the model's layers and gives
  every Conv/Linear layer its rule; :func:`layer_map` is the one layer→rule
  mapping handed to Zennit (in the style of Zennit's ``LayerMapComposite``):
  rule layers get their rule, ``pass`` layers the pass rule, ``sum`` layers the
  sum rule, everything else the gradient.
* :data:`COMPOSITES`: the ``lrp-*`` composite methods (Zennit's EpsilonPlus,
  EpsilonPlusFlat, EpsilonAlpha2Beta1, EpsilonGammaBox, ...) as configurations.
* :func:`default_config`: Montavon et al.'s γ | ε | 0 composite for ``lrp``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..lazy import nn, torch
from .config import LrpConfig, Segment
from .params import GeneralisedGamma, InputBox, Rule, RuleParams, preset_params, rule_conserves
from .types import LayerInfo, LAYER_RULES, is_output_reduction, suggest_rule


__all__ = [
    "COMPOSITES", "CompositePreset", "Resolved", "default_config", "final_rules", "layer_map", "resolve", "unknown_layer",
]


@dataclass
class Resolved:
    """A configuration checked against a model's layers."""

    config: LrpConfig
    layers: list[LayerInfo]
    rules: dict[str, Rule]  # rule layer name -> rule (segment or default; see final_rules)
    owner: dict[str, str]  # rule layer name -> segment name ("" = default)
    spans: list[tuple[int, int]]  # per segment: first and last layer index
    kinds: dict[str, str]  # layer name -> kind after layer_rules

    def segment_layers(self, i: int) -> list[LayerInfo]:
        a, b = self.spans[i]
        return self.layers[a:b + 1]

    @property
    def conserving(self) -> bool:
        """True if every segment and default rule conserves relevance without biases (alpha - beta = 1, small epsilon)."""
        return all(rule_conserves(r) for r in self.rules.values())


def unknown_layer(name: str, layers: list[LayerInfo], where: str) -> UserError:
    names = [l.name for l in layers]
    close = difflib.get_close_matches(name, names, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"the model's layers include {', '.join(names[:4])}, ..."
    return UserError(f"{where} refers to layer {name!r}, which this model does not have; {hint}")


def resolve(config: LrpConfig, layers: list[LayerInfo]) -> Resolved:
    """Check ``config`` against the layers and give every Conv/Linear layer its rule.

    Raises
    ------
    UserError
        For a layer name the model does not have, an empty segment (start after
        end, or no Conv/Linear layer inside), overlapping segments, or a layer
        with parameters that has no LRP rule.
    """
    config.check_names()
    index = {l.name: l.index for l in layers}
    where = f"configuration '{config.name}'"
    for name, rule in config.layer_rules.items():
        if name not in index:
            raise unknown_layer(name, layers, f"{where} layer_rules")
        if rule not in LAYER_RULES:
            raise UserError(f"{where}: layer_rules[{name!r}] must be one of {', '.join(LAYER_RULES)}, got {rule!r}.")
    for name in config.intermediate:
        if name not in index:
            raise unknown_layer(name, layers, f"{where} intermediate layer list")
    kinds = {l.name: config.layer_rules.get(l.name, l.kind) for l in layers}
    for l in layers:
        if kinds[l.name] == "none":
            raise UserError(suggest_rule(l.name, l.type, l.parameters))
    spans = []
    for s in config.segments:
        sw = f"{where} segment '{s.name}'"
        for end in (s.start, s.end):
            if end not in index:
                raise unknown_layer(end, layers, sw)
        a, b = index[s.start], index[s.end]
        if a > b:
            raise UserError(
                f"{sw} is empty: its start layer '{s.start}' (#{a}) runs after its end layer '{s.end}' (#{b}); "
                "swap start and end."
            )
        if not any(kinds[l.name] == "rule" for l in layers[a:b + 1]):
            raise UserError(
                f"{sw} (layers #{a}-#{b}) contains no Conv/Linear layer, so its rule would apply nowhere; "
                "extend it to a Conv or Linear layer."
            )
        spans.append((a, b))
    order = sorted(range(len(spans)), key=lambda i: spans[i])
    for i, j in zip(order, order[1:]):
        if spans[j][0] <= spans[i][1]:
            si, sj = config.segments[i], config.segments[j]
            shared = layers[spans[j][0]].name
            raise UserError(
                f"{where}: segments '{si.name}' (#{spans[i][0]}-#{spans[i][1]}) and '{sj.name}' "
                f"(#{spans[j][0]}-#{spans[j][1]}) overlap at layer '{shared}'; let '{sj.name}' start after "
                f"'{layers[spans[i][1]].name}'."
            )
    rules: dict[str, RuleParams] = {}
    owner: dict[str, str] = {}
    for l in layers:
        if kinds[l.name] != "rule":
            continue
        rules[l.name], owner[l.name] = config.default, ""
        for s, (a, b) in zip(config.segments, spans):
            if a <= l.index <= b:
                rules[l.name], owner[l.name] = s.rule, s.name
    return Resolved(config=config, layers=layers, rules=rules, owner=owner, spans=spans, kinds=kinds)


def default_config(layers: list[LayerInfo], name: str = "composite (γ | ε | 0)") -> LrpConfig:
    """The composite recommended by Montavon et al. 2019: LRP-γ low, LRP-ε middle, LRP-0 top.

    The Conv/Linear layers (execution order) are split in thirds; with fewer than
    three rule layers the whole network uses LRP-ε.
    """
    rule_layers = [l for l in layers if l.kind == "rule"]
    if len(rule_layers) < 3:
        if not rule_layers:
            raise UserError("the model has no Conv or Linear layer, so LRP has nothing to propagate through.")
        return LrpConfig(name="LRP-ε", segments=[Segment(rule_layers[0].name, rule_layers[-1].name,
                                                          preset_params("lrp-epsilon"), "all")])
    n = len(rule_layers)
    cut1, cut2 = n // 3, (2 * n) // 3
    groups = [rule_layers[:cut1], rule_layers[cut1:cut2], rule_layers[cut2:]]
    rules = [preset_params("lrp-gamma-rule", gamma1p=0.25), preset_params("lrp-epsilon"), RuleParams()]
    titles = ["lower", "middle", "upper"]
    segs = [Segment(g[0].name, g[-1].name, r, t) for g, r, t in zip(groups, rules, titles) if g]
    return LrpConfig(name=name, segments=segs, description="Montavon et al. 2019: gamma low, epsilon middle, 0 top.")


# --------------------------------------------------------------------------- the layer map


def final_rules(resolved: Resolved, modules: dict[str, nn.Module], first_layers: list[str]) -> dict[str, Rule]:
    """The rule of every rule layer: its segment's, else ``first`` (input layers), ``dense`` (Linear), ``default``."""
    cfg, first = resolved.config, set(first_layers)
    out: dict[str, Rule] = {}
    for name, rule in resolved.rules.items():
        if not resolved.owner[name]:  # outside every segment
            if cfg.first is not None and name in first:
                rule = cfg.first
            elif cfg.dense is not None and isinstance(modules.get(name), nn.Linear):
                rule = cfg.dense
        out[name] = rule
    return out


def layer_map(resolved: Resolved, rules: dict[str, Rule], x: torch.Tensor, stabilizer: float) -> Callable:
    """The Zennit ``module_map``: rule layers get their rule, pass layers the pass rule, sums the sum rule."""
    from zennit.layer import Sum

    from .rules import PassRule, SumRule, make_hook

    zero_bias = resolved.config.zero_bias
    hooks = {n: make_hook(r, zero_bias, stabilizer, x) for n, r in rules.items()}
    sum_rule, pass_rule, kinds = SumRule(stabilizer), PassRule(), resolved.kinds

    def module_map(_ctx, name, module):
        if name in hooks:
            return hooks[name]
        kind = kinds.get(name)
        if kind == "sum" or isinstance(module, Sum) or is_output_reduction(module):
            return sum_rule
        if kind == "pass":
            return pass_rule
        return None

    return module_map


# --------------------------------------------------------------------------- the composite methods


@dataclass(frozen=True)
class CompositePreset:
    """An ``lrp-*`` composite method: rule names for the first layer(s), convolutions and dense layers."""

    name: str
    first: str | None
    conv: str
    dense: str
    summary: str
    reference: str
    epsilon: float = 1e-6  # the default of the entry's 'epsilon' parameter

    @property
    def uses_gamma(self) -> bool:
        return "generalised-gamma" in (self.first, self.conv, self.dense)

    def config(self, epsilon: float, gamma: float | None = None) -> LrpConfig:
        """This composite as a configuration; ``epsilon`` of its epsilon rule (0 is treated as 1e-12)."""

        def rule(key: str) -> Rule:
            if key == "lrp-epsilon":
                return preset_params("lrp-epsilon", epsilon=max(float(epsilon), 1e-12))
            if key == "lrp-alpha1-beta0":  # z+ is alpha-beta with alpha 1, beta 0: the same terms
                return preset_params("lrp-alpha-beta", alpha=1.0, beta=0.0)
            if key == "z-box":
                return InputBox()
            if key == "generalised-gamma":
                if gamma is None:
                    raise ValueError(f"{self.name} needs gamma")
                return GeneralisedGamma(float(gamma))
            return preset_params(key)

        return LrpConfig(name=self.name, default=rule(self.conv), dense=rule(self.dense),
                         first=rule(self.first) if self.first else None, description=self.summary)


COMPOSITES: dict[str, CompositePreset] = {
    c.name: c
    for c in (
        CompositePreset("lrp-epsilon", None, "lrp-epsilon", "lrp-epsilon",
                  "LRP-epsilon on every Conv/Linear layer; epsilon -> 0 gives LRP-0 (= input x gradient on ReLU nets).",
                  "Bach et al. 2015, doi:10.1371/journal.pone.0130140", epsilon=0.25),
        CompositePreset("lrp-epsilon-plus", None, "lrp-z-plus", "lrp-epsilon",
                  "Zennit EpsilonPlus: z+ rule on convolutions, epsilon on dense layers.",
                  "Montavon et al. 2019, doi:10.1007/978-3-030-28954-6_10; Zennit EpsilonPlus"),
        CompositePreset("lrp-epsilon-plus-flat", "lrp-flat", "lrp-z-plus", "lrp-epsilon",
                  "Zennit EpsilonPlusFlat: flat rule on the input layer, z+ on convolutions, epsilon on dense layers.",
                  "Lapuschkin et al. 2019, doi:10.1038/s41467-019-08987-4; Zennit EpsilonPlusFlat"),
        CompositePreset("lrp-alpha1-beta0", None, "lrp-alpha1-beta0", "lrp-epsilon",
                  "alpha1-beta0 on convolutions (positive contributions only), epsilon on dense layers.",
                  "Bach et al. 2015; Montavon et al. 2017, doi:10.1016/j.patcog.2016.11.008"),
        CompositePreset("lrp-alpha2-beta1", None, "lrp-alpha-beta", "lrp-epsilon",
                  "Zennit EpsilonAlpha2Beta1: alpha2-beta1 on convolutions, epsilon on dense layers.",
                  "Bach et al. 2015; Zennit EpsilonAlpha2Beta1"),
        CompositePreset("lrp-gamma", "z-box", "generalised-gamma", "lrp-epsilon",
                  "Zennit EpsilonGammaBox: z-box on the input layer (box = input min/max), gamma on convolutions, epsilon on dense.",
                  "Montavon et al. 2019; Zennit EpsilonGammaBox"),
    )
}
