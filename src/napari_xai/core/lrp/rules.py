"""The LRP rules as Zennit hooks: the unified rule, the sum and pass rules, and ``make_hook``.

:class:`UnifiedRule` is Eqn. 5 of Huang et al. with the ten parameters of
:class:`~napari_xai.core.lrp.params.RuleParams`; :func:`make_hook` turns any
rule value (also the composite-only z-box and generalised γ, which are Zennit's
own) into the hook that the layer map attaches to a layer.
"""

from __future__ import annotations

import torch
from zennit.core import BasicHook, ParamMod, Stabilizer
from zennit.rules import Gamma, Pass, ZBox

from .params import GeneralisedGamma, InputBox, Rule, RuleParams, formula, match_preset
from .types import STABILIZER

__all__ = ["SumRule", "PassRule", "UnifiedRule", "make_hook"]


def _weight_fn(params: RuleParams, coef: float, side: str):
    """Parameter modifier: g(w) = gamma0 + gamma1 w + coef w^side + gamma2 w^2 (bias: no gamma0).

    Only the terms with a non-zero factor are computed; ``g(w) = w`` (LRP-0, LRP-ε) hands back the
    parameter itself.
    """
    g0, g1, g2 = params.gamma0, params.gamma1, params.gamma2
    if not (g0 or coef or g2) and g1 == 1:
        return lambda param, name: param

    def modify(param: torch.Tensor, name: str) -> torch.Tensor:
        out = None
        if g1:
            out = param if g1 == 1 else g1 * param
        if coef:
            part = coef * (param.clamp(min=0) if side == "+" else param.clamp(max=0))
            out = part if out is None else out + part
        if g2:
            part = param * param if g2 == 1 else g2 * param * param
            out = part if out is None else out + part
        if name != "bias" and g0:
            out = torch.full_like(param, g0) if out is None else out + g0
        return torch.zeros_like(param) if out is None else out

    return modify


def _act_fn(params: RuleParams, part: str):
    """Input modifier: the positive (``+``) or negative (``-``) part of theta0 + theta1 * a, or all of it (``*``)."""
    t0, t1 = params.theta0, params.theta1
    if t1 == 0:  # activations ignored: a constant input (LRP-w², LRP-flat)
        value = t0 if part == "*" else (max(t0, 0.0) if part == "+" else min(t0, 0.0))
        return lambda a: torch.full_like(a, value)

    def modify(a: torch.Tensor) -> torch.Tensor:
        t = t0 + t1 * a if (t0 or t1 != 1) else a
        if part == "*":
            return t
        return t.clamp(min=0) if part == "+" else t.clamp(max=0)

    return modify


def _terms(params: RuleParams, merge_signs: bool = True) -> list[tuple[str, float, str, bool, int]]:
    """The forward passes of the rule: (input part, weight coef, weight side, with bias, term id).

    Eqn. 5 splits the (transformed) activation into its positive and negative
    parts, each with its own weights. Where both parts get the same weights
    (the term's w+ / w- factor is 0: LRP-0, LRP-ε, LRP-w², LRP-flat, LRP-γ with
    γ = 0), the two passes add up to one pass on the whole activation (``*``),
    the same relevance with half the work (Zennit's Epsilon does the same). A
    negative part that is identically 0 (a constant input >= 0) and carries no
    bias adds nothing and is left out. ``merge_signs=False`` keeps Eqn. 5's
    two passes per term (the general path, for checks).
    """
    groups = []
    if params.alpha:
        groups.append((params.gamma1p, "+", "-", 0))
    if params.beta:
        groups.append((params.gamma1n, "-", "+", 1))
    constant_nonneg = params.theta1 == 0 and params.theta0 >= 0
    terms = []
    for coef, pos_side, neg_side, tid in groups:
        if coef == 0 and merge_signs:
            terms.append(("*", 0.0, pos_side, True, tid))
            continue
        terms.append(("+", coef, pos_side, True, tid))
        if not (constant_nonneg and merge_signs):
            terms.append(("-", coef, neg_side, False, tid))
    return terms


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
    as in Zennit's AlphaBeta rule; one per term where both signs get the same
    weights (LRP-0, LRP-ε, LRP-w², LRP-flat), as in Zennit's Epsilon, WSquare
    and Flat (see :func:`_terms`).
    """

    #: One pass per term where both signs of the activation get the same weights (same relevance, less work);
    #: False runs Eqn. 5's two passes per term literally (the general path, for checks).
    merge_signs: bool = True

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
        terms = _terms(params, self.merge_signs)  # (input part, weight coef, weight side, with bias, term id)
        self._terms = [t[4] for t in terms]
        coefs = (params.alpha, params.beta)
        term_ids = list(self._terms)

        def gradient_mapper(out_grad, outputs):
            denom = {}
            for tid, out in zip(term_ids, outputs):
                denom[tid] = out if tid not in denom else denom[tid] + out
            return [out_grad / stab(denom[tid]) for tid in term_ids]

        signed = [coefs[tid] if tid == 0 else -coefs[tid] for tid in term_ids]  # alpha, or -beta

        def reducer(inputs, gradients):
            total = None
            for c, inp, grad in zip(signed, inputs, gradients):
                part = inp * grad if c == 1 else c * inp * grad
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


class SumRule(BasicHook):
    """The sum rule (Zennit's ``Norm``) for parameter-free linear layers, with a flat fallback.

    Average pooling, upsampling and masked sums share relevance in proportion
    to the inputs: ``R_i = x_i * dz/dx_i * R / z``. Where the output z is exactly
    0 (every input of an average-pooling window is 0, e.g. after a ReLU) but
    relevance still arrives (rules that ignore activations, such as LRP-flat or
    LRP-w²), that relevance would be lost; there it is shared like the layer's
    weights instead (the gradient of ``f(1)``: uniformly for pooling).
    """

    def __init__(self, stabilizer: float = STABILIZER):
        self.stabilizer = stabilizer
        stab = Stabilizer.ensure(stabilizer)

        def mapper(out_grad, outputs):
            z, ones = outputs
            dead = z == 0
            return [torch.where(dead, torch.zeros_like(out_grad), out_grad) / stab(z),
                    torch.where(dead, out_grad, torch.zeros_like(out_grad)) / stab(ones)]

        super().__init__(
            input_modifiers=[lambda x: x, torch.ones_like],
            param_modifiers=[ParamMod(lambda p, _: p, param_keys=[])] * 2,
            output_modifiers=[lambda o: o] * 2,
            gradient_mapper=mapper,
            reducer=lambda inputs, gradients: inputs[0] * gradients[0] + inputs[1] * gradients[1],
        )

    def copy(self) -> "SumRule":  # noqa: D102
        return SumRule(self.stabilizer)


class PassRule(Pass):
    """Zennit's Pass rule, safe for modules whose autograd node has several outputs.

    ``GroupNorm`` (``native_group_norm``) returns (out, mean, rstd), so Zennit's
    ``Pass`` would hand back three gradients for one input; only the first (the
    relevance of the layer output) is passed on.
    """

    def backward(self, module, grad_input, grad_output):  # noqa: D102
        return (grad_output[0],) + (None,) * (len(grad_input) - 1)


def make_hook(rule: Rule, zero_bias: bool, stabilizer: float, x: torch.Tensor) -> BasicHook:
    """The Zennit hook for one rule value; ``x`` is the input (for the z-box bounds)."""
    zero = ["bias"] if zero_bias else None
    if isinstance(rule, RuleParams):
        return UnifiedRule(rule, zero_bias=zero_bias, stabilizer=stabilizer)
    if isinstance(rule, InputBox):
        low = x.detach().amin(dim=tuple(range(2, x.ndim)), keepdim=True)
        high = x.detach().amax(dim=tuple(range(2, x.ndim)), keepdim=True)
        return ZBox(low=low, high=high, stabilizer=stabilizer, zero_params=zero)
    if isinstance(rule, GeneralisedGamma):
        return Gamma(gamma=float(rule.gamma), stabilizer=stabilizer, zero_params=zero)
    raise TypeError(f"not an LRP rule: {rule!r}")
