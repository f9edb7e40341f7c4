"""Canonisation for LRP: BatchNorm merged into the layer before it, residual sums and gates made explicit.

* :func:`verified_merges` / :func:`merge_canonizer`: BatchNorm that directly
  follows a Conv/Linear is merged into it (Zennit's ``NamedMergeBatchNorm``),
  checked once per model and input shape to leave the output unchanged.
* :class:`ResidualSums`: during the forward pass, ``a + b`` of two activations
  gets the sum rule and ``x * g`` with a broadcast gate the gate rule
  (all relevance stays with the signal).
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..methods.registry import RunContext
from .types import STABILIZER

__all__ = ["ResidualSums", "merge_canonizer", "verified_merges"]


_MERGES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def merge_canonizer(name_map: list):
    """Zennit's ``NamedMergeBatchNorm`` whose emptied BatchNorm is an exact identity.

    Zennit sets the merged BatchNorm to mean 0, variance 1, which still divides
    by sqrt(1 + eps): every merged layer scaled the output by about 1 - 5e-6.
    Here the variance is set to 1 - eps, so the merged model computes the same
    score as the original (the injected relevance is the true logit).
    """
    from zennit.canonizers import NamedMergeBatchNorm

    class ExactMergeBatchNorm(NamedMergeBatchNorm):
        @staticmethod
        def merge_batch_norm(modules, batch_norm):  # noqa: D102
            NamedMergeBatchNorm.merge_batch_norm(modules, batch_norm)
            batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)

    return ExactMergeBatchNorm(name_map)


def verified_merges(model: nn.Module, x: torch.Tensor, pairs: list[tuple[str, str]], ctx: RunContext) -> list:
    """BatchNorm merges that leave the model output unchanged (checked once per model and input shape)."""
    if not pairs:
        return []
    key = (tuple(x.shape), str(x.dtype), str(x.device), tuple(pairs))
    per_model = _MERGES.setdefault(model, {})
    if key not in per_model:
        name_map = [([lin], bn) for lin, bn in pairs]
        with torch.no_grad():
            xi = x.detach().clone()
            ref = model(xi)
            handles = merge_canonizer(name_map).apply(model)
            try:
                merged = model(xi)
            finally:
                for h in handles:
                    h.remove()
        scale = float(ref.abs().max()) if torch.is_tensor(ref) else 1.0
        ok = torch.is_tensor(ref) and torch.allclose(merged, ref, rtol=1e-3, atol=1e-4 * max(scale, 1.0))
        per_model[key] = name_map if ok else None
    name_map = per_model[key]
    if name_map is None:
        ctx.warn(
            "LRP: merging BatchNorm into the preceding Conv/Linear changed the model output (a Conv output is "
            "used elsewhere too), so no BatchNorm was merged; they pass relevance unchanged."
        )
        return []
    return name_map


# --------------------------------------------------------------------------- residual sums and gates


def _stabilize(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * ((z == 0).to(z) + z.sign())


def _split(a: torch.Tensor, b: torch.Tensor, rel: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum rule for ``a + b``: shares a/(a+b) and b/(a+b); where both are exactly 0, half each (nothing is lost)."""
    z = a + b
    q = rel / _stabilize(z, eps)
    dead = (a == 0) & (b == 0)
    half = torch.where(dead, rel * 0.5, torch.zeros_like(rel))
    return torch.where(dead, half, a * q), torch.where(dead, half, b * q)


class _SumRule(torch.autograd.Function):
    """``a + b`` forward; backward splits the incoming relevance in proportion to a and b."""

    @staticmethod
    def forward(ctx, a, b, eps):  # noqa: D102
        ctx.save_for_backward(a, b)
        ctx.eps = eps
        return a + b

    @staticmethod
    def backward(ctx, rel):  # noqa: D102
        a, b = ctx.saved_tensors
        ra, rb = _split(a, b, rel, ctx.eps)
        return ra, rb, None


class _SumRuleInplace(_SumRule):
    """In-place ``a += b`` (e.g. MONAI ResNetBlock's ``out += residual``) with the same sum rule (its backward)."""

    @staticmethod
    def forward(ctx, a, b, eps):  # noqa: D102
        ctx.save_for_backward(a.clone(), b)
        ctx.eps = eps
        a.add_(b)
        ctx.mark_dirty(a)
        return a


class _GateRule(torch.autograd.Function):
    """``x * g`` forward with ``g`` a broadcast gate; backward: all relevance to ``x``, none to the gate."""

    @staticmethod
    def forward(ctx, x, g):  # noqa: D102
        ctx.gate_shape = g.shape
        return x * g

    @staticmethod
    def backward(ctx, rel):  # noqa: D102
        return rel, rel.new_zeros(ctx.gate_shape)


_ADD_FUNCS = {torch.Tensor.add, torch.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_IADD_FUNCS = {torch.Tensor.add_, torch.Tensor.__iadd__}
_MUL_FUNCS = {torch.Tensor.mul, torch.mul, torch.Tensor.__mul__, torch.Tensor.__rmul__}


class ResidualSums(TorchFunctionMode):
    """During a forward pass, route additions of two same-shape activations through the LRP sum rule.

    Only tensor + tensor additions where both operands come from the input's
    computation graph (have a ``grad_fn``), have the same shape and are floating
    point are changed; additions of parameters, constants or broadcast biases keep
    their gradient. ``count`` says how many additions were handled.

    Products ``x * g`` of two activations where the gate ``g`` has fewer elements
    and broadcasts to ``x``'s shape (squeeze-and-excitation, attention gates), or
    has the same shape and is a sigmoid output while ``x`` is not, get the gate
    rule: relevance stays with ``x``. ``gates`` counts them.
    """

    def __init__(self, stabilizer: float = STABILIZER):
        super().__init__()
        self.stabilizer = stabilizer
        self.count = 0
        self.gates = 0

    @staticmethod
    def _tensors(args: tuple, kwargs: dict) -> bool:
        if kwargs or len(args) != 2 or not torch.is_grad_enabled():
            return False
        a, b = args
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.is_floating_point()
            and b.is_floating_point()
            and a.grad_fn is not None
            and b.grad_fn is not None
        )

    @classmethod
    def _pair(cls, args: tuple, kwargs: dict) -> bool:
        return cls._tensors(args, kwargs) and args[0].shape == args[1].shape

    @staticmethod
    def _from_sigmoid(t: torch.Tensor) -> bool:
        """True if ``t`` is a sigmoid output, possibly reshaped (a gate, as in squeeze-and-excitation)."""
        node = t.grad_fn
        for _ in range(4):
            if node is None:
                return False
            name = type(node).__name__
            if name.startswith(("SigmoidBackward", "HardsigmoidBackward")):
                return True
            if not name.startswith(("View", "Reshape", "UnsafeView", "Unsqueeze", "Expand", "Squeeze", "Clone")):
                return False
            nxt = [f for f, _ in node.next_functions if f is not None]
            node = nxt[0] if len(nxt) == 1 else None
        return False

    @classmethod
    def _gate(cls, args: tuple, kwargs: dict) -> int | None:
        """Index of the signal operand of a gating product, or None."""
        if not cls._tensors(args, kwargs):
            return None
        a, b = args
        if a.shape == b.shape:
            # e.g. squeeze-and-excitation on a 1x1x1 feature map: the gate is the sigmoid output
            ga, gb = cls._from_sigmoid(a), cls._from_sigmoid(b)
            if ga != gb:
                return 1 if ga else 0
            return None
        if a.ndim != b.ndim:
            return None
        try:
            out = torch.broadcast_shapes(a.shape, b.shape)
        except RuntimeError:
            return None
        if tuple(out) == tuple(a.shape) and b.numel() < a.numel():
            return 0
        if tuple(out) == tuple(b.shape) and a.numel() < b.numel():
            return 1
        return None

    def __torch_function__(self, func: Callable, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func in _ADD_FUNCS and self._pair(args, kwargs):
            self.count += 1
            return _SumRule.apply(args[0], args[1], self.stabilizer)
        if func in _IADD_FUNCS and self._pair(args, kwargs) and args[0]._base is None:  # not into a view
            self.count += 1
            return _SumRuleInplace.apply(args[0], args[1], self.stabilizer)
        if func in _MUL_FUNCS:
            signal = self._gate(args, kwargs)
            if signal is not None:
                self.gates += 1
                return _GateRule.apply(args[signal], args[1 - signal])
        return func(*args, **kwargs)
