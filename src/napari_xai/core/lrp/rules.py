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
