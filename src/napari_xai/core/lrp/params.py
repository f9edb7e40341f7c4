"""The parameters of the unified LRP rule (Huang et al., Eqn. 5), Table 1's presets, and the composite-only rules.

Rules are data here (no Zennit): :class:`RuleParams` (the ten parameters; every
Table 1 rule is a parameter set in :data:`PRESETS`), and the two rules the
Zennit composites use that Eqn. 5 cannot express, :class:`InputBox` and
:class:`GeneralisedGamma`. ``rules.py`` turns each into a Zennit hook. The
formula and its conventions are in ``docs/lrp-designer.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable, Union

from ..errors import UserError

__all__ = [
    "CUSTOM", "PARAM_HELP", "PARAM_NAMES", "OLD_NAMES", "PRESETS", "PresetTable", "STEPS", "GeneralisedGamma", "InputBox", "Preset", "Rule",
    "RuleParams", "conserves", "describe", "formula", "get_preset", "match_preset", "preset_params", "rule_conserves",
    "rule_from_dict", "rule_label", "rule_to_dict",
]


@dataclass(frozen=True)
class RuleParams:
    """The ten parameters of the unified LRP rule (Eqn. 5 of Huang et al.).

    Attributes
    ----------
    alpha, beta : float
        Step 1: weights of the positive and negative contribution terms.
    theta0, theta1 : float
        Step 2: activation term ``theta0 + theta1 * a``.
    gamma0, gamma1, gamma1p, gamma1n, gamma2 : float
        Step 3: weight term ``gamma0 + gamma1*w + gamma1p*w+ (or gamma1n*w-) + gamma2*w^2``.
    epsilon : float
        Step 4: added to the denominator with its sign (noise suppression).
    """

    alpha: float = 1.0
    beta: float = 0.0
    epsilon: float = 0.0
    theta0: float = 0.0
    theta1: float = 1.0
    gamma0: float = 0.0
    gamma1: float = 1.0
    gamma1p: float = 0.0
    gamma1n: float = 0.0
    gamma2: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict | None, where: str = "rule") -> "RuleParams":
        """Build from a dict, checking names and values; missing names keep the LRP-0 values."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(PARAM_NAMES))
        if unknown:
            raise UserError(
                f"{where}: unknown LRP parameter(s) {', '.join(unknown)}; the ten parameters are {', '.join(PARAM_NAMES)}."
            )
        values = {}
        for k, v in data.items():
            try:
                values[k] = float(v)
            except (TypeError, ValueError):
                raise UserError(f"{where}: parameter {k} must be a number, got {v!r}.") from None
        params = cls(**values)
        params.validate(where)
        return params

    def validate(self, where: str = "rule") -> None:
        """Raise :class:`UserError` for values the rule cannot use."""
        for f in fields(self):
            v = getattr(self, f.name)
            if not math.isfinite(v):
                raise UserError(f"{where}: parameter {f.name} must be finite, got {v}.")
        if self.alpha < 0 or self.beta < 0:
            raise UserError(f"{where}: alpha and beta must be >= 0 (got alpha={self.alpha:g}, beta={self.beta:g}).")
        if self.epsilon < 0:
            raise UserError(f"{where}: epsilon must be >= 0, got {self.epsilon:g}.")
        if self.alpha == 0 and self.beta == 0:
            raise UserError(f"{where}: alpha and beta are both 0, so no relevance is propagated; use alpha=1, beta=0.")
        if self.theta0 == 0 and self.theta1 == 0:
            raise UserError(f"{where}: theta0 and theta1 are both 0, so no activation enters; use theta0=0, theta1=1.")
        pos = (self.gamma0, self.gamma1, self.gamma1p, self.gamma2)
        neg = (self.gamma0, self.gamma1, self.gamma1n, self.gamma2)
        if self.alpha > 0 and not any(pos):
            raise UserError(f"{where}: gamma0, gamma1, gamma1p and gamma2 are all 0, so the alpha term has no weights; set gamma1=1.")
        if self.beta > 0 and not any(neg):
            raise UserError(f"{where}: beta > 0 needs a weight term for negative contributions; set gamma1n=1.")

    def replace(self, **changes: float) -> "RuleParams":
        return replace(self, **changes)


PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in fields(RuleParams))

#: The paper's four-step parameter guide (§5), one entry per step.
STEPS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "Step 1: positive/negative contributions",
        ("alpha", "beta"),
        "Weigh the relevance from positive (alpha) and negative (beta) contributions. Keep alpha - beta = 1 "
        "to conserve relevance; raising both (alpha=1, beta=0 -> alpha=2, beta=1) focuses on small but "
        "important features and brings back negative evidence.",
    ),
    (
        "Step 2: activation effect",
        ("theta0", "theta1"),
        "Tune how much the layer input (activation) matters. In most cases theta0=0, theta1=1 (activations "
        "included); theta0=1, theta1=0 ignores activations (LRP-w2, LRP-flat: input layer, unbounded inputs).",
    ),
    (
        "Step 3: weight effect",
        ("gamma0", "gamma1", "gamma1p", "gamma1n", "gamma2"),
        "Tune how the filter weights enter: original weight (gamma1), positive part (gamma1p), negative part "
        "(gamma1n, used by the beta term), squared weight (gamma2); gamma0 is a constant for when weights "
        "should not matter (LRP-flat).",
    ),
    (
        "Step 4: suppression",
        ("epsilon",),
        "Suppress noise: epsilon is added to each denominator (with its sign) and absorbs weak, contradictory "
        "contributions; larger epsilon gives sparser, less noisy maps but conserves less relevance.",
    ),
)

PARAM_HELP: dict[str, str] = {
    "alpha": "Step 1 - weight of the positive-contribution term. alpha - beta = 1 conserves relevance; "
    "raise alpha and beta together (alpha=2, beta=1) to focus on small but important features.",
    "beta": "Step 1 - weight of the negative-contribution (inhibitory) term, subtracted. 0 keeps only positive "
    "evidence (LRP-alpha1beta0 = z+); 1 with alpha=2 shows negative evidence too.",
    "theta0": "Step 2 - constant activation term. 0 in most cases; 1 (with theta1=0) when activations should "
    "not be involved (LRP-w2, LRP-flat).",
    "theta1": "Step 2 - factor of the activation a_i. 1 in most cases (activations included); 0 to ignore them.",
    "gamma0": "Step 3 - constant weight term; 1 with the other gammas 0 spreads relevance uniformly over the "
    "receptive field (LRP-flat).",
    "gamma1": "Step 3 - factor of the original weight w (1 for LRP-0, LRP-epsilon, LRP-gamma).",
    "gamma1p": "Step 3 - factor of the positive weights w+ in the alpha term (LRP-gamma: gamma; z+ and alpha-beta: 1 "
    "with gamma1=0). Larger values favour positive contributions and give more stable maps.",
    "gamma1n": "Step 3 - factor of the negative weights w- in the beta term (alpha-beta: 1 with gamma1=0).",
    "gamma2": "Step 3 - factor of the squared weights w^2 (LRP-w2: 1 with theta0=1, theta1=0).",
    "epsilon": "Step 4 - added to each denominator with its sign; suppresses noise from weak or contradictory "
    "contributions. 0 = plain ratio (a 1e-6 stabiliser avoids division by zero).",
}


@dataclass(frozen=True)
class Preset:
    """A named parameter set of the unified rule (one row of Table 1)."""

    name: str
    title: str
    params: RuleParams
    free: tuple[str, ...]
    formula: str
    reference: str


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("lrp-0", "LRP-0", RuleParams(), (), "R_i = sum_j a_i w_ij / (sum_i a_i w_ij) R_j",
               "Bach et al. 2015, doi:10.1371/journal.pone.0130140"),
        Preset("lrp-epsilon", "LRP-ε", RuleParams(epsilon=0.25), ("epsilon",),
               "R_i = sum_j a_i w_ij / (eps + sum_i a_i w_ij) R_j", "Bach et al. 2015"),
        Preset("lrp-gamma-rule", "LRP-γ", RuleParams(gamma1p=1.0), ("gamma1p",),
               "R_i = sum_j a_i (w_ij + g w_ij+) / (sum_i a_i (w_ij + g w_ij+)) R_j",
               "Montavon et al. 2019, doi:10.1007/978-3-030-28954-6_10"),
        Preset("lrp-alpha-beta", "LRP-αβ", RuleParams(alpha=2.0, beta=1.0, gamma1=0.0, gamma1p=1.0, gamma1n=1.0),
               ("alpha", "beta"),
               "R_i = sum_j (alpha a_i w_ij+ / sum_i a_i w_ij+ - beta a_i w_ij- / sum_i a_i w_ij-) R_j",
               "Bach et al. 2015"),
        Preset("lrp-z-plus", "LRP-z⁺", RuleParams(gamma1=0.0, gamma1p=1.0), (),
               "R_i = sum_j a_i w_ij+ / (sum_i a_i w_ij+) R_j", "Bach et al. 2015; Montavon et al. 2017"),
        Preset("lrp-w-square", "LRP-w²", RuleParams(theta0=1.0, theta1=0.0, gamma1=0.0, gamma2=1.0), (),
               "R_i = sum_j w_ij^2 / (sum_i w_ij^2) R_j",
               "Montavon et al. 2017, doi:10.1016/j.patcog.2016.11.008"),
        Preset("lrp-flat", "LRP-flat", RuleParams(theta0=1.0, theta1=0.0, gamma0=1.0, gamma1=0.0), (),
               "R_i = sum_j 1 / (sum_i 1) R_j", "Lapuschkin et al. 2019, doi:10.1038/s41467-019-08987-4"),
    )
}
#: The label used for parameter sets that match no preset.
CUSTOM = "custom"


#: The names of Table 1 presets before they were named like their methods; still read from configuration files.
OLD_NAMES: dict[str, str] = {
    "lrp-gamma": "lrp-gamma-rule",
    "lrp-alphabeta": "lrp-alpha-beta",
    "lrp-zplus": "lrp-z-plus",
    "lrp-wsquare": "lrp-w-square",
}


class PresetTable(dict):
    """The presets by name; an old name (:data:`OLD_NAMES`) finds its preset too, but is not listed."""

    def __missing__(self, key):
        if key in OLD_NAMES:
            return self[OLD_NAMES[key]]
        raise KeyError(key)

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or key in OLD_NAMES

    def get(self, key, default=None):
        return self[key] if key in self else default


PRESETS = PresetTable(PRESETS)


def get_preset(name: str) -> Preset:
    """A Table 1 preset by name (``lrp-0``, ``lrp-epsilon``, ``lrp-gamma-rule``, ...; also an old name)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise UserError(f"unknown LRP rule preset {name!r}; use one of {', '.join(PRESETS)} or '{CUSTOM}'.")
    return PRESETS[key]


def match_preset(params: RuleParams) -> str:
    """The name of the preset whose fixed parameters ``params`` has (free ones may differ), else ``custom``."""
    for p in PRESETS.values():
        fixed = [n for n in PARAM_NAMES if n not in p.free]
        if all(getattr(params, n) == getattr(p.params, n) for n in fixed):
            if p.name == "lrp-epsilon" and params.epsilon == 0:
                continue  # that is LRP-0
            if p.name == "lrp-gamma-rule" and params.gamma1p == 0:
                continue
            if p.name == "lrp-alpha-beta" and params.alpha - params.beta != 1:
                continue
            return p.name
    return CUSTOM


def conserves(params: RuleParams, epsilon_tolerance: float = 1e-3) -> bool:
    """True if the rule conserves relevance without biases: alpha - beta = 1 and epsilon small."""
    return abs(params.alpha - params.beta - 1.0) < 1e-9 and params.epsilon <= epsilon_tolerance


def _num(v: float) -> str:
    return f"{v:g}"


def formula(params: RuleParams) -> str:
    """A short text form of the rule, e.g. ``a·(w + 0.25w⁺) / (ε + Σ)``, for labels and tooltips."""

    def weight_term(sided: float, side: str) -> str:
        parts = []
        for coef, sym in ((params.gamma0, "1"), (params.gamma1, "w"), (sided, f"w{side}"), (params.gamma2, "w²")):
            if coef:
                parts.append(sym if coef == 1 and sym != "1" else (f"{_num(coef)}" if sym == "1" else f"{_num(coef)}{sym}"))
        return " + ".join(parts) or "0"

    act = []
    if params.theta0:
        act.append(_num(params.theta0))
    if params.theta1:
        act.append("a" if params.theta1 == 1 else f"{_num(params.theta1)}a")
    a = " + ".join(act)
    a = f"({a})" if len(act) > 1 else a
    eps = f"{_num(params.epsilon)} + " if params.epsilon else ""

    def term(sided: float, side: str) -> str:
        w = weight_term(sided, side)
        w = f"({w})" if " + " in w else w
        num = w if a == "1" else (a if w == "1" else f"{a}·{w}")
        return f"{num} / ({eps}Σ)"

    out = term(params.gamma1p, "⁺")
    if params.alpha != 1 or params.beta:
        out = f"{_num(params.alpha)}·{out}"
    if params.beta:
        out += f" − {_num(params.beta)}·{term(params.gamma1n, '⁻')}"
    return out


def preset_params(name: str, **free: float) -> RuleParams:
    """The parameters of preset ``name`` with its free parameters set, e.g. ``preset_params('lrp-gamma-rule', gamma1p=0.25)``."""
    p = get_preset(name)
    bad = sorted(set(free) - set(p.free))
    if bad:
        raise UserError(f"preset {p.name} has no free parameter {', '.join(bad)}; its free parameters: {', '.join(p.free) or 'none'}.")
    params = p.params.replace(**{k: float(v) for k, v in free.items()})
    params.validate(p.name)
    return params


def describe(names: Iterable[str] | None = None) -> list[dict]:
    """Table 1 as data: one dict per preset (name, title, formula, parameters, free, reference)."""
    out = []
    for n in names or PRESETS:
        p = get_preset(n)
        out.append({"name": p.name, "title": p.title, "formula": p.formula, "params": p.params.to_dict(),
                    "free": list(p.free), "reference": p.reference})
    return out


# --------------------------------------------------------------------------- rules outside Eqn. 5


@dataclass(frozen=True)
class InputBox:
    """Zennit's z-box rule for the input layer, with the box = the input's per-channel minimum and maximum.

    ``R_i = (x_i w_ij - l_i w_ij+ - h_i w_ij-) / z_j · R_j`` (Montavon et al. 2017): relevance of a
    bounded input; used by the ``lrp-gamma`` composite (Zennit's EpsilonGammaBox).
    """

    name = "z-box"

    def to_dict(self) -> dict:
        return {"rule": self.name}


@dataclass(frozen=True)
class GeneralisedGamma:
    """Zennit's generalised γ rule: units with a positive output share over positive contributions, others
    over negative ones (Montavon et al. 2019; Andéol et al. 2021).

    On units with a positive output it is Table 1's LRP-γ with γ1p = ``gamma``; it differs where a unit
    with a negative output still receives relevance (e.g. a Conv before an InstanceNorm). Used by the
    ``lrp-gamma`` composite (Zennit's EpsilonGammaBox).
    """

    gamma: float
    name = "generalised-gamma"

    def to_dict(self) -> dict:
        return {"rule": self.name, "gamma": float(self.gamma)}


#: A layer's rule: the unified rule's parameters, or one of the composite-only rules.
Rule = Union[RuleParams, InputBox, GeneralisedGamma]


def rule_conserves(rule: Rule) -> bool:
    """True if the rule conserves relevance without biases (the z-box and γ rules do)."""
    return conserves(rule) if isinstance(rule, RuleParams) else True


def rule_label(rule: Rule) -> str:
    """A short name: the Table 1 preset, ``custom``, ``z-box`` or ``generalised-gamma``."""
    return match_preset(rule) if isinstance(rule, RuleParams) else rule.name


def rule_to_dict(rule: Rule) -> dict:
    """JSON form: ``{"preset", "params"}`` for the unified rule, ``{"rule", ...}`` for the others."""
    if isinstance(rule, RuleParams):
        return {"preset": match_preset(rule), "params": rule.to_dict()}
    return rule.to_dict()


def rule_from_dict(data, where: str) -> Rule:
    """The inverse of :func:`rule_to_dict`; a preset name alone is accepted too."""
    if isinstance(data, dict) and "rule" in data:
        name = data.get("rule")
        if name == InputBox.name and set(data) == {"rule"}:
            return InputBox()
        if name == GeneralisedGamma.name and set(data) == {"rule", "gamma"}:
            return GeneralisedGamma(float(data["gamma"]))
        raise UserError(f"{where}: unknown rule {data!r}; use 'preset'/'params', or 'rule' "
                        f"'{InputBox.name}' or '{GeneralisedGamma.name}' (with 'gamma').")
    return params_from_dict(data, where)


def params_from_dict(data, where: str) -> RuleParams:
    """Unified-rule parameters from a preset name or ``{"preset": ..., "params": {...}}``."""
    if data is None:
        return RuleParams()
    if isinstance(data, str):
        return get_preset(data).params
    if not isinstance(data, dict):
        raise UserError(f"{where}: a rule must be an object with 'preset' and/or 'params', got {type(data).__name__}.")
    unknown = sorted(set(data) - {"preset", "params", "name", "start", "end"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; a rule has 'preset' and 'params'.")
    preset = data.get("preset")
    base = RuleParams() if preset in (None, "", CUSTOM) else get_preset(str(preset)).params
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise UserError(f"{where}: 'params' must be an object of the ten LRP parameters.")
    return RuleParams.from_dict({**base.to_dict(), **params}, where)
