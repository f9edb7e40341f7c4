"""The unified LRP rule (Huang et al., Eqn. 5) as one Zennit rule, and the Table 1 presets.

For a layer with inputs (activations) :math:`a_i`, weights :math:`w_{ij}` and
incoming relevance :math:`R_j`, the rule is

.. math::

    R_i = \\sum_j \\Big[ \\alpha \\frac{(\\theta_0 + \\theta_1 a_i)\\,g^+(w_{ij})}
                                   {\\epsilon + \\sum_i (\\theta_0 + \\theta_1 a_i)\\,g^+(w_{ij})}
                      - \\beta \\frac{(\\theta_0 + \\theta_1 a_i)\\,g^-(w_{ij})}
                                   {\\epsilon + \\sum_i (\\theta_0 + \\theta_1 a_i)\\,g^-(w_{ij})} \\Big] R_j

with the weight transforms
:math:`g^+(w) = \\gamma_0 + \\gamma_1 w + \\gamma_{1p} w^+ + \\gamma_2 w^2` and
:math:`g^-(w) = \\gamma_0 + \\gamma_1 w + \\gamma_{1n} w^- + \\gamma_2 w^2`.
Its ten parameters are α, β, ε, θ0, θ1, γ0, γ1, γ1p, γ1n, γ2. The presets of
Table 1 (LRP-0, LRP-ε, LRP-γ, LRP-αβ, LRP-z⁺, LRP-w², LRP-flat) are parameter
sets (:data:`PRESETS`), not separate classes.

Three conventions turn the formula into a rule for real layers; with them
each preset is exactly Zennit's own rule on networks whose layer inputs are
non-negative (ReLU networks), which the tests check:

* **Biases** are part of the sums in the denominators, transformed like the
  weights without γ0: :math:`\\gamma_1 b + \\gamma_{1p} b^+ + \\gamma_2 b^2` (and
  :math:`\\gamma_{1n} b^-` in the β term). ``zero_bias=True`` leaves them out
  (Zennit's ``zero_params=['bias']``); then every rule with α − β = 1 and small ε
  conserves relevance layer by layer.
* **ε keeps the sign** of the denominator: :math:`z + \\epsilon\\,\\mathrm{sign}(z)`
  (sign 0 = +1), as in Zennit, so ε damps and never flips. ε = 0 uses the
  stabiliser (1e-6) instead, so nothing is divided by zero.
* **Negative activations** (the input layer of z-scored images) contribute
  "positively" through negative weights: for :math:`a_i < 0` the roles of
  :math:`w^+` and :math:`w^-` swap. This is Zennit's generalisation of z⁺, αβ and
  γ to signed inputs; for :math:`a_i \\ge 0` it is Eqn. 5 as printed.

Parameter guide (the four steps of the paper's §5) is the help text of each
parameter, :data:`PARAM_HELP` and :data:`STEPS`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Iterable

import torch
from zennit.core import BasicHook, ParamMod, Stabilizer

from .errors import UserError

__all__ = [
    "CUSTOM",
    "PARAM_NAMES",
    "PARAM_HELP",
    "PRESETS",
    "STEPS",
    "Preset",
    "RuleParams",
    "UnifiedRule",
    "conserves",
    "describe",
    "formula",
    "get_preset",
    "match_preset",
    "preset_params",
]

#: Stabiliser used when ε = 0 (and for the Norm rule of sums/pools).
STABILIZER = 1e-6


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
        Preset("lrp-gamma", "LRP-γ", RuleParams(gamma1p=1.0), ("gamma1p",),
               "R_i = sum_j a_i (w_ij + g w_ij+) / (sum_i a_i (w_ij + g w_ij+)) R_j",
               "Montavon et al. 2019, doi:10.1007/978-3-030-28954-6_10"),
        Preset("lrp-alphabeta", "LRP-αβ", RuleParams(alpha=2.0, beta=1.0, gamma1=0.0, gamma1p=1.0, gamma1n=1.0),
               ("alpha", "beta"),
               "R_i = sum_j (alpha a_i w_ij+ / sum_i a_i w_ij+ - beta a_i w_ij- / sum_i a_i w_ij-) R_j",
               "Bach et al. 2015"),
        Preset("lrp-zplus", "LRP-z⁺", RuleParams(gamma1=0.0, gamma1p=1.0), (),
               "R_i = sum_j a_i w_ij+ / (sum_i a_i w_ij+) R_j", "Bach et al. 2015; Montavon et al. 2017"),
        Preset("lrp-wsquare", "LRP-w²", RuleParams(theta0=1.0, theta1=0.0, gamma1=0.0, gamma2=1.0), (),
               "R_i = sum_j w_ij^2 / (sum_i w_ij^2) R_j",
               "Montavon et al. 2017, doi:10.1016/j.patcog.2016.11.008"),
        Preset("lrp-flat", "LRP-flat", RuleParams(theta0=1.0, theta1=0.0, gamma0=1.0, gamma1=0.0), (),
               "R_i = sum_j 1 / (sum_i 1) R_j", "Lapuschkin et al. 2019, doi:10.1038/s41467-019-08987-4"),
    )
}
#: The label used for parameter sets that match no preset.
CUSTOM = "custom"


def get_preset(name: str) -> Preset:
    """A Table 1 preset by name (``lrp-0``, ``lrp-epsilon``, ``lrp-gamma``, ...)."""
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
            if p.name == "lrp-gamma" and params.gamma1p == 0:
                continue
            if p.name == "lrp-alphabeta" and params.alpha - params.beta != 1:
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


# --------------------------------------------------------------------------- the Zennit rule


def _weight_fn(params: RuleParams, coef: float, side: str):
    """Parameter modifier: g(w) = gamma0 + gamma1 w + coef w^side + gamma2 w^2 (bias: no gamma0)."""

    def modify(param: torch.Tensor, name: str) -> torch.Tensor:
        clamp = param.clamp(min=0) if side == "+" else param.clamp(max=0)
        out = params.gamma1 * param + coef * clamp + params.gamma2 * param * param
        if name != "bias" and params.gamma0:
            out = out + params.gamma0
        return out

    return modify


def _act_fn(params: RuleParams, part: str):
    """Input modifier: the positive or negative part of theta0 + theta1 * a."""

    def modify(a: torch.Tensor) -> torch.Tensor:
        t = params.theta0 + params.theta1 * a if (params.theta0 or params.theta1 != 1) else a
        return t.clamp(min=0) if part == "+" else t.clamp(max=0)

    return modify


class UnifiedRule(BasicHook):
    """Zennit rule for Eqn. 5 of Huang et al. with the ten parameters of :class:`RuleParams`.

    Parameters
    ----------
    params : RuleParams or dict, optional
        The ten parameters; default LRP-0. Keyword arguments override single ones.
    zero_bias : bool
        Leave biases out of the rule (conserving).
    stabilizer : float
        Used instead of epsilon when epsilon is 0.
    **overrides : float
        Single parameters, e.g. ``UnifiedRule(epsilon=0.1)``.

    Notes
    -----
    For each sign of the (transformed) activation the layer is evaluated once
    per active term (alpha and/or beta): at most four modified forward passes,
    as in Zennit's AlphaBeta rule.
    """

    def __init__(self, params: RuleParams | dict | None = None, zero_bias: bool = False,
                 stabilizer: float = STABILIZER, **overrides: float):
        if params is None:
            params = RuleParams()
        elif isinstance(params, dict):
            params = RuleParams.from_dict(params)
        if overrides:
            params = RuleParams.from_dict({**params.to_dict(), **overrides})
        params.validate()
        self.params = params
        self.zero_bias = bool(zero_bias)
        self.stabilizer = float(stabilizer)
        eps = params.epsilon if params.epsilon > 0 else float(stabilizer)
        stab = Stabilizer.ensure(eps)
        zero = ["bias"] if zero_bias else None
        zero_all = ["bias"]
        terms = []  # (input part, weight coef, weight side, with bias, sign of term, term id)
        if params.alpha:
            terms += [("+", params.gamma1p, "+", True, 0), ("-", params.gamma1p, "-", False, 0)]
        if params.beta:
            terms += [("+", params.gamma1n, "-", True, 1), ("-", params.gamma1n, "+", False, 1)]
        self._terms = [t[4] for t in terms]
        coefs = (params.alpha, params.beta)
        term_ids = list(self._terms)

        def gradient_mapper(out_grad, outputs):
            denom = {}
            for tid, out in zip(term_ids, outputs):
                denom[tid] = out if tid not in denom else denom[tid] + out
            return [out_grad / stab(denom[tid]) for tid in term_ids]

        def reducer(inputs, gradients):
            total = None
            for tid, inp, grad in zip(term_ids, inputs, gradients):
                part = coefs[tid] * inp * grad
                if tid == 1:
                    part = -part
                total = part if total is None else total + part
            return total

        super().__init__(
            input_modifiers=[_act_fn(params, t[0]) for t in terms],
            param_modifiers=[
                ParamMod(_weight_fn(params, t[1], t[2]), zero_params=(zero if t[3] else zero_all), require_params=False)
                for t in terms
            ],
            output_modifiers=[lambda output: output] * len(terms),
            gradient_mapper=gradient_mapper,
            reducer=reducer,
        )

    def copy(self) -> "UnifiedRule":
        """A new hook with the same parameters (Zennit copies a rule for every module it is attached to)."""
        return UnifiedRule(self.params, zero_bias=self.zero_bias, stabilizer=self.stabilizer)

    def __repr__(self) -> str:
        extra = ", zero_bias=True" if self.zero_bias else ""
        return f"UnifiedRule({match_preset(self.params)}: {formula(self.params)}{extra})"


def preset_params(name: str, **free: float) -> RuleParams:
    """The parameters of preset ``name`` with its free parameters set, e.g. ``preset_params('lrp-gamma', gamma1p=0.25)``."""
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
