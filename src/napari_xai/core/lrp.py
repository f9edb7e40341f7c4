"""Layer-wise relevance propagation through Zennit: presets, canonisation, residual sums.

One rule chooser (``LrpComposite``) with the presets as data (``PRESETS``):
each preset names the rule for the first layer(s), for convolutions and for
dense (``nn.Linear``) layers. The rest is shared by every preset:

* **BatchNorm** that directly follows a Conv/Linear (found by tensor identity in
  a traced forward pass, so MONAI's ``Convolution -> ADN`` blocks count too) is
  merged into it with Zennit's ``NamedMergeBatchNorm``. The merge is checked
  once per model and input shape: if the merged model's output differs, no
  BatchNorm is merged and a warning says so. The merge is undone afterwards.
* **Normalisation layers** that remain (InstanceNorm, GroupNorm, LayerNorm,
  un-merged BatchNorm) and **activations** (ReLU, PReLU, LeakyReLU, ELU, ...)
  pass relevance through unchanged (Zennit's ``Pass`` rule). Without a rule the
  gradient of an InstanceNorm (division by the std) rescales relevance.
* **Residual additions** ``a + b`` of two activations (functional, as in
  MONAI's ``ResidualUnit`` and ``ResNetBlock``) are caught during the forward
  pass with a ``TorchFunctionMode`` and get the sum rule
  ``R_a = a / (a + b) * R``, ``R_b = b / (a + b) * R`` (Zennit's ``Norm`` rule
  for its ``Sum`` layer). The plain gradient would hand the full relevance to
  both branches, doubling it at every block.
* **Gates** ``x * g`` where ``g`` broadcasts over ``x`` (squeeze-and-excitation
  in MONAI's SEResNet, attention gates) are caught the same way: the gate is
  treated as a weight, so all relevance stays with the signal ``x`` and none
  flows into the gate branch (signal-take-all).
* **Average pooling, upsampling** and the masked sum of a segmentation target
  (:class:`~napari_xai.core.segmentation.MaskedSum`) get Zennit's ``Norm`` rule;
  max pooling, reshapes, padding and concatenations (U-Net skips) pass the
  gradient, which conserves relevance.
* A **layer type without a rule** (a module with parameters that is neither a
  Conv/Linear, a normalisation nor an activation) is a :class:`UserError` that
  names the layer and suggests a rule, instead of a silently wrong map.

The output relevance is the target logit (a one-hot times the score), so with
a conserving rule set and no biases the relevance sums to the logit. After
each run the sum is compared to the logit: a non-finite result, a sum more
than twice the logit (relevance "explodes") or less than 5 % of it (biases
and epsilon absorbed it) gives a warning. Both numbers are recorded as
``relevance_sum`` and ``output_relevance``.

Hooks and canonisers are removed after every call (Zennit composite context);
the user's model is left as it was.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .methods._model import ACTIVATIONS, check_scores, model_session, require_eager, trace_model
from .errors import UserError
from .methods.registry import Method, MethodOutput, Param, RunContext, register

__all__ = ["PRESETS", "LrpComposite", "LrpPreset", "RelevanceCapture", "ResidualSums", "layer_kind", "lrp"]

NORM_TYPES: tuple[type, ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
AVGPOOL_TYPES: tuple[type, ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Upsample,
)
#: Parameter-free layers whose gradient conserves relevance (selection, copies, reshapes, identity).
GRADIENT_TYPES: tuple[type, ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReplicationPadNd, nn.modules.padding._ReflectionPadNd,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
)
RULE_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd, nn.Linear)
#: Stabiliser of the ratio-based rules (ZPlus, AlphaBeta, Gamma, Flat, ZBox, Norm, sums).
STABILIZER = 1e-6
#: Stabiliser of the ratio rules for float64 models (1e-6 would dominate near-zero denominators there).
STABILIZER_FLOAT64 = 1e-12


def stabilizer_for(dtype: torch.dtype) -> float:
    """The stabiliser of the ratio rules for a model's dtype: 1e-6, or 1e-12 in float64."""
    return STABILIZER_FLOAT64 if dtype == torch.float64 else STABILIZER


#: A relevance sum beyond this multiple of the output relevance is reported as "exploding".
EXPLODE_RATIO = 2.0
#: A relevance sum below this fraction of the output relevance is reported as "vanishing".
VANISH_RATIO = 0.05


@dataclass(frozen=True)
class LrpPreset:
    """Rule names for the first layer(s) (``None`` = same as the rest), convolutions and dense layers."""

    name: str
    first: str | None
    conv: str
    dense: str
    summary: str
    reference: str


PRESETS: dict[str, LrpPreset] = {
    p.name: p
    for p in (
        LrpPreset("lrp-epsilon", None, "epsilon", "epsilon",
                  "LRP-epsilon on every Conv/Linear layer; epsilon -> 0 gives LRP-0 (= input x gradient on ReLU nets).",
                  "Bach et al. 2015, doi:10.1371/journal.pone.0130140"),
        LrpPreset("lrp-epsilon-plus", None, "zplus", "epsilon",
                  "Zennit EpsilonPlus: z+ rule on convolutions, epsilon on dense layers.",
                  "Montavon et al. 2019, doi:10.1007/978-3-030-28954-6_10; Zennit EpsilonPlus"),
        LrpPreset("lrp-epsilon-plus-flat", "flat", "zplus", "epsilon",
                  "Zennit EpsilonPlusFlat: flat rule on the input layer, z+ on convolutions, epsilon on dense layers.",
                  "Lapuschkin et al. 2019, doi:10.1038/s41467-019-08987-4; Zennit EpsilonPlusFlat"),
        LrpPreset("lrp-alpha1-beta0", None, "alpha1beta0", "epsilon",
                  "alpha1-beta0 on convolutions (positive contributions only), epsilon on dense layers.",
                  "Bach et al. 2015; Montavon et al. 2017, doi:10.1016/j.patcog.2016.11.008"),
        LrpPreset("lrp-alpha2-beta1", None, "alpha2beta1", "epsilon",
                  "Zennit EpsilonAlpha2Beta1: alpha2-beta1 on convolutions, epsilon on dense layers.",
                  "Bach et al. 2015; Zennit EpsilonAlpha2Beta1"),
        LrpPreset("lrp-gamma", "zbox", "gamma", "epsilon",
                  "Zennit EpsilonGammaBox: z-box on the input layer (box = input min/max), gamma on convolutions, epsilon on dense.",
                  "Montavon et al. 2019; Zennit EpsilonGammaBox"),
    )
}


def _make_rule(key: str, params: dict, x: torch.Tensor):
    from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, ZBox, ZPlus

    eps = max(float(params.get("epsilon", 1e-6)), 1e-12)
    if key == "epsilon":
        return Epsilon(epsilon=eps)
    if key == "zplus":
        return ZPlus(stabilizer=STABILIZER)
    if key == "alpha1beta0":
        return AlphaBeta(alpha=1.0, beta=0.0, stabilizer=STABILIZER)
    if key == "alpha2beta1":
        return AlphaBeta(alpha=2.0, beta=1.0, stabilizer=STABILIZER)
    if key == "gamma":
        return Gamma(gamma=float(params.get("gamma", 0.25)), stabilizer=STABILIZER)
    if key == "flat":
        return Flat(stabilizer=STABILIZER)
    if key == "zbox":
        low = x.detach().amin(dim=tuple(range(2, x.ndim)), keepdim=True)
        high = x.detach().amax(dim=tuple(range(2, x.ndim)), keepdim=True)
        return ZBox(low=low, high=high, stabilizer=STABILIZER)
    raise ValueError(f"unknown LRP rule {key!r}")


def _takes_first_rule(module: nn.Module) -> bool:
    # input rules (flat, z-box) are defined for (transposed) convolutions and linear layers
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


def _norm_rule(stabilizer: float = STABILIZER):
    """Zennit's Norm (sum) rule for parameter-free linear layers, with a flat fallback.

    Average pooling, upsampling and masked sums share relevance in proportion
    to the inputs: ``R_i = x_i * dz/dx_i * R / z``. Where the output z is exactly
    0 (every input of an average-pooling window is 0, e.g. after a ReLU) but
    relevance still arrives (rules that ignore activations, such as LRP-flat or
    LRP-w² above), that relevance would be lost; there it is shared like the
    layer's weights instead (the gradient of ``f(1)``: uniformly for pooling).
    """
    from zennit.core import BasicHook, ParamMod, Stabilizer

    stab = Stabilizer.ensure(stabilizer)

    def mapper(out_grad, outputs):
        z, ones = outputs
        dead = z == 0
        return [torch.where(dead, torch.zeros_like(out_grad), out_grad) / stab(z),
                torch.where(dead, out_grad, torch.zeros_like(out_grad)) / stab(ones)]

    class NormRule(BasicHook):
        def __init__(self):
            super().__init__(
                input_modifiers=[lambda x: x, torch.ones_like],
                param_modifiers=[ParamMod(lambda p, _: p, param_keys=[])] * 2,
                output_modifiers=[lambda o: o] * 2,
                gradient_mapper=mapper,
                reducer=lambda inputs, gradients: inputs[0] * gradients[0] + inputs[1] * gradients[1],
            )

        def copy(self):  # noqa: D102
            return NormRule()

    return NormRule()


def _pass_rule():
    """Zennit's Pass rule, made safe for modules whose autograd node has several outputs.

    ``GroupNorm`` (``native_group_norm``) returns (out, mean, rstd), so Zennit's
    ``Pass`` would hand back three gradients for one input; only the first (the
    relevance of the layer output) is passed on.
    """
    from zennit.rules import Pass

    class PassRule(Pass):
        def backward(self, module, grad_input, grad_output):  # noqa: D102
            return (grad_output[0],) + (None,) * (len(grad_input) - 1)

    return PassRule()


def is_output_reduction(module: nn.Module) -> bool:
    """True for the masked-sum module of a segmentation target (it gets the sum rule)."""
    return bool(getattr(module, "_xai_output_reduction", False))


def layer_kind(module: nn.Module) -> str:
    """How LRP treats a module: ``rule``, ``pass``, ``sum``, ``gradient``, ``container`` or ``none``.

    * ``rule``: Conv (also transposed) and Linear layers get the LRP rule of their segment.
    * ``pass``: normalisation layers and activations hand relevance through unchanged.
    * ``sum``: average pooling, upsampling, masked output sums: Zennit's ``Norm`` rule.
    * ``gradient``: max pooling, dropout, reshapes, padding and other parameter-free
      leaf modules: the gradient (conserving for selections and copies).
    * ``container``: a module with children and no parameters of its own.
    * ``none``: a layer with parameters that LRP has no rule for (an error).
    """
    if isinstance(module, RULE_TYPES):
        return "rule"
    if isinstance(module, NORM_TYPES) or isinstance(module, ACTIVATIONS):
        return "pass"
    if isinstance(module, AVGPOOL_TYPES) or is_output_reduction(module):
        return "sum"
    if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
        return "none"
    own = [p for p in module.parameters(recurse=False)]
    if list(module.children()):
        return "none" if own else "container"
    if isinstance(module, GRADIENT_TYPES) or not own:
        return "gradient"
    return "none"


SOFTMAX_TYPES = ("Softmax", "LogSoftmax", "Softmin")


def suggest_rule(name: str, type_name: str, parameters: int = 0) -> str:
    """A one-line UserError text for layer ``name`` of type ``type_name`` that has no LRP rule."""
    if type_name in SOFTMAX_TYPES:
        return (
            f"LRP has no rule for layer '{name}' ({type_name}): LRP explains logits; remove the final {type_name} "
            "from the model's forward (or wrap the model so that it returns the scores before it)."
        )
    return (
        f"LRP has no rule for layer '{name}' ({type_name}, {parameters} parameters); if it acts elementwise (a "
        f"normalisation or activation) give it the pass rule with \"layer_rules\": {{\"{name}\": \"pass\"}} in an "
        "LRP configuration (method 'lrp'); if it is linear in its input, rewrite it as a Conv/Linear layer."
    )


def check_rules(model: nn.Module, trace, overrides: dict[str, str] | None = None) -> None:
    """Raise :class:`UserError` for the first layer that ran and has no LRP rule (unless overridden)."""
    overrides = overrides or {}
    modules = dict(model.named_modules())
    for name in dict.fromkeys(c.name for c in trace.calls):
        m = modules.get(name)
        if m is None or name in overrides:
            continue
        if layer_kind(m) == "none":
            raise UserError(suggest_rule(name, type(m).__name__, sum(p.numel() for p in m.parameters(recurse=False))))


class LrpComposite:
    """Build a Zennit composite that maps modules to rules for one preset.

    Parameters
    ----------
    preset : LrpPreset
        Which rules to use for first / convolution / dense layers.
    params : dict
        ``epsilon`` (dense layers, and all layers for ``lrp-epsilon``) and ``gamma``.
    x : torch.Tensor
        The input (for the z-box bounds).
    first_layers : list of str
        Module names that receive the raw input (from :func:`trace_model`).
    canonizers : list
        Zennit canonisers (BatchNorm merging).
    """

    def __init__(self, preset: LrpPreset, params: dict, x: torch.Tensor, first_layers: list[str], canonizers: list):
        from zennit.core import Composite
        from zennit.layer import Sum
        self.first = _make_rule(preset.first, params, x) if preset.first else None
        self.conv = _make_rule(preset.conv, params, x)
        self.dense = _make_rule(preset.dense, params, x)
        self.first_layers = set(first_layers)
        self.counts = {"first": 0, "conv": 0, "dense": 0, "pass_norm": 0, "pass_activation": 0, "norm_pool": 0}
        norm, passthrough, sum_type = _norm_rule(), _pass_rule(), Sum

        def module_map(ctx: dict, name: str, module: nn.Module):
            if self.first is not None and name in self.first_layers and _takes_first_rule(module):
                self.counts["first"] += 1
                return self.first
            if isinstance(module, nn.modules.conv._ConvNd):
                self.counts["conv"] += 1
                return self.conv
            if isinstance(module, nn.Linear):
                self.counts["dense"] += 1
                return self.dense
            if isinstance(module, AVGPOOL_TYPES) or isinstance(module, sum_type) or is_output_reduction(module):
                self.counts["norm_pool"] += 1
                return norm
            if isinstance(module, NORM_TYPES):
                self.counts["pass_norm"] += 1
                return passthrough
            if isinstance(module, ACTIVATIONS):
                self.counts["pass_activation"] += 1
                return passthrough
            return None

        self.composite = Composite(module_map=module_map, canonizers=canonizers)


# --------------------------------------------------------------------------- residual sums


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


class _SumRuleInplace(torch.autograd.Function):
    """In-place ``a += b`` (e.g. MONAI ResNetBlock's ``out += residual``) with the same sum rule."""

    @staticmethod
    def forward(ctx, a, b, eps):  # noqa: D102
        ctx.save_for_backward(a.clone(), b)
        ctx.eps = eps
        a.add_(b)
        ctx.mark_dirty(a)
        return a

    @staticmethod
    def backward(ctx, rel):  # noqa: D102
        a, b = ctx.saved_tensors
        ra, rb = _split(a, b, rel, ctx.eps)
        return ra, rb, None


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


class RelevanceCapture:
    """Record the relevance that arrives at chosen layers during an LRP backward pass.

    In Zennit's scheme the gradient between rule layers *is* the relevance, so a
    tensor hook on a layer's output (or input) records it. Register before the
    Zennit composite so that the hooks see the layer's own tensors.

    Parameters
    ----------
    model : nn.Module
    points : dict
        ``key -> (layer name, "output" | "input")``; the first call of each layer counts.
    """

    def __init__(self, model: nn.Module, points: dict[str, tuple[str, str]]):
        self.points = dict(points)
        self.relevance: dict[str, torch.Tensor] = {}
        self._handles: list = []
        modules = dict(model.named_modules())
        for key, (name, where) in self.points.items():
            module = modules.get(name)
            if module is None:
                raise UserError(f"layer {name!r} does not exist in the model; choose a layer from the layer list.")
            if where == "input":
                self._handles.append(module.register_forward_pre_hook(self._make(key, True)))
            else:
                self._handles.append(module.register_forward_hook(self._make(key, False)))

    def _make(self, key: str, is_input: bool):
        seen = [False]

        def store(grad):
            self.relevance[key] = grad.detach()

        def hook(module, inputs, output=None):
            if seen[0]:
                return None
            t = inputs[0] if is_input else output
            if isinstance(t, (tuple, list)):
                t = t[0] if t else None
            if torch.is_tensor(t) and t.requires_grad:
                seen[0] = True
                t.register_hook(store)
            return None

        if is_input:
            return lambda module, inputs: hook(module, inputs)
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "RelevanceCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class RelevanceFilterHooks:
    """Apply a function to the relevance arriving at chosen layers' outputs during the backward pass.

    Like :class:`RelevanceCapture` (a tensor hook on the layer's output, first
    call only), but the hook returns ``fn(relevance)``, which then propagates
    on. Register before the Zennit composite and before any capture, so that
    captures see the filtered relevance.
    """

    def __init__(self, model: nn.Module, names: list[str], fn: Callable[[torch.Tensor], torch.Tensor]):
        self.count = 0
        self._handles: list = []
        modules = dict(model.named_modules())
        for name in names:
            module = modules.get(name)
            if module is None:
                raise UserError(f"layer {name!r} does not exist in the model; choose a layer from the layer list.")
            self._handles.append(module.register_forward_hook(self._make(fn)))

    def _make(self, fn):
        seen = [False]

        def apply(grad):
            self.count += 1
            return fn(grad)

        def hook(module, inputs, output):
            if seen[0] or not (torch.is_tensor(output) and output.requires_grad):
                return None
            seen[0] = True
            output.register_hook(apply)
            return None

        return hook

    def __enter__(self) -> "RelevanceFilterHooks":
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


# --------------------------------------------------------------------------- BatchNorm merging

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


def _verified_merges(model: nn.Module, x: torch.Tensor, pairs: list[tuple[str, str]], ctx: RunContext) -> list:
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


# --------------------------------------------------------------------------- the call


@dataclass
class Propagation:
    """What one LRP forward/backward pass produced (see :func:`propagate`)."""

    relevance: torch.Tensor  # (1, C, D, H, W) at the input, detached
    output_relevance: float  # the target score injected at the output
    merged_batchnorm: int
    residual_sums: int
    gates: int
    captured: dict[str, torch.Tensor]
    composite: Any  # what ``make_composite`` returned
    trace: Any  # the traced forward pass (:func:`trace_model`)
    filtered: int = 0  # how many layer outputs the relevance filter changed


def propagate(
    model: nn.Module,
    x: torch.Tensor,
    target: int,
    label: str,
    ctx: RunContext,
    make_composite: Callable[[Any, list], Any],
    rule_layers: Callable[[Any, dict], list[str]],
    points: dict[str, tuple[str, str]] | None = None,
    stabilizer: float = STABILIZER,
    check: Callable[[Any], None] | None = None,
    filters: tuple[list[str], Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> Propagation:
    """The LRP pass shared by the presets and the configurations.

    Traces the model, warns about rule layers that run more than once, merges
    BatchNorm (verified), builds the composite with ``make_composite(trace,
    canonizers)`` (an object with a ``composite`` attribute or a Zennit
    composite), runs the forward pass with residual sums made explicit and
    optional relevance capture at ``points``, and injects the target score as
    the output relevance. ``rule_layers(trace, modules)`` names the layers whose
    repeated use deserves the warning; ``check(trace)`` may reject the model
    (a layer without a rule) before any work is done. ``filters`` = (layer
    names, function) changes the relevance arriving at those layers' outputs
    (:class:`RelevanceFilterHooks`).
    """
    require_eager(model, ctx, label, "LRP attaches rules to its layers")
    with model_session(model):
        ctx.step(0.05, f"{label}: tracing the model")
        trace = trace_model(model, x)
        if check is not None:
            check(trace)
        modules = dict(model.named_modules())
        shared = [n for n in rule_layers(trace, modules) if trace.counts.get(n, 0) > 1]
        if shared:
            ctx.warn(
                f"{label}: layer(s) {', '.join(shared[:3])} run more than once per forward pass; Zennit keeps "
                "one input per layer, so their relevance is approximate."
            )
        name_map = _verified_merges(model, x, trace.bn_pairs, ctx)
        made = make_composite(trace, [merge_canonizer(name_map)] if name_map else [])
        composite = getattr(made, "composite", made)
        xg = x.detach().clone().requires_grad_(True)
        sums = ResidualSums(stabilizer)
        ctx.step(0.2, f"{label}: forward")
        names, fn = filters if filters is not None else ([], None)
        with RelevanceFilterHooks(model, names, fn) as filt, RelevanceCapture(model, points or {}) as cap:
            with composite.context(model) as modified:
                with sums:
                    out = modified(xg)
                scores = check_scores(out, target)
                start = torch.zeros_like(scores)
                start[0, int(target)] = scores[0, int(target)].detach()
                ctx.step(0.5, f"{label}: relevance backward")
                (rel,) = torch.autograd.grad(scores, xg, grad_outputs=start)
    return Propagation(rel.detach(), float(start[0, int(target)]), len(name_map), sums.count,
                       getattr(sums, "gates", 0), dict(cap.relevance), made, trace, filt.count)


def lrp(model: nn.Module, x: torch.Tensor, target: int, params: dict, ctx: RunContext | None, preset: LrpPreset) -> MethodOutput:
    """Run one LRP preset; relevance (1, C, D, H, W) sums to about the target logit."""
    ctx = ctx if ctx is not None else RunContext()

    def make(trace, canonizers):
        return LrpComposite(preset, params, x, trace.first_layers, canonizers)

    def rule_layers(trace, modules):
        return [n for n in trace.counts if isinstance(modules.get(n), RULE_TYPES)]

    prop = propagate(model, x, target, preset.name, ctx, make, rule_layers,
                     check=lambda trace: check_rules(model, trace))
    rel, r_out = prop.relevance, prop.output_relevance
    r_in = float(rel.sum())
    used: dict[str, Any] = {
        "rules": {"first": preset.first or preset.conv, "conv": preset.conv, "dense": preset.dense},
        "first_layers": list(prop.trace.first_layers) if preset.first else [],
        "merged_batchnorm": prop.merged_batchnorm,
        "pass_norm_layers": prop.composite.counts["pass_norm"] - prop.merged_batchnorm,
        "residual_sums": prop.residual_sums,
        "gates": prop.gates,
        "output_relevance": r_out,
        "relevance_sum": r_in,
    }
    if not torch.isfinite(rel).all():
        ctx.warn(f"{preset.name}: the relevance has NaN/Inf values; try a larger epsilon or another preset.")
    elif abs(r_in) > EXPLODE_RATIO * abs(r_out) + 1e-12:
        alphabeta = " and alpha-beta rules" if preset.conv.startswith("alpha") else ""
        ctx.warn(
            f"{preset.name}: the relevance sums to {r_in:.4g}, {abs(r_in) / max(abs(r_out), 1e-12):.1f} times the "
            f"target score {r_out:.4g}; biases, mixed-sign inputs{alphabeta} break conservation a little, but this "
            "much growth usually means a layer without an LRP rule (e.g. a multiplicative gate) inflates it."
        )
    elif abs(r_out) > 1e-12 and abs(r_in) < VANISH_RATIO * abs(r_out):
        ctx.warn(
            f"{preset.name}: only {100 * abs(r_in) / abs(r_out):.1f} % of the target score {r_out:.4g} reached the "
            + (
                "input (absorbed by biases and epsilon); a smaller 'epsilon' keeps more of it."
                if preset.conv == "epsilon"
                else "input; the layer biases absorbed the rest."
            )
        )
    return MethodOutput(rel, used)


def _entry(preset: LrpPreset) -> Method:
    def fn(model, x, target, params, ctx):
        return lrp(model, x, target, params, ctx, preset)

    fn.__name__ = preset.name.replace("-", "_")
    fn.__doc__ = preset.summary
    eps_default = 0.25 if preset.name == "lrp-epsilon" else 1e-6
    eps_help = (
        "Stabiliser added to each layer's pre-activation z (z + eps*sign z); larger absorbs weak, noisy "
        "contributions. 0 is treated as 1e-12."
        if preset.name == "lrp-epsilon"
        else "Epsilon of the dense (nn.Linear) layers' epsilon rule. 0 is treated as 1e-12."
    )
    params = [Param("epsilon", float, eps_default, eps_help, minimum=0.0)]
    if preset.conv == "gamma":
        params.append(Param("gamma", float, 0.25, "Gamma rule: weight of positive contributions (w + gamma*w+).", minimum=0.0, maximum=100.0))
    return Method(
        name=preset.name,
        family="lrp",
        summary=preset.summary,
        fn=fn,
        params=tuple(params),
        needs_module=True,
        signed=True,
        reference=preset.reference,
    )


for _preset in PRESETS.values():
    register(_entry(_preset))


# --------------------------------------------------------------------------- configurable LRP (the designer)


def _lrp_configured(model, x, target, params, ctx) -> MethodOutput:
    """LRP with a designer configuration: the unified rule (Huang et al. Eqn. 5) per segment of layers.

    ``config`` is a JSON file written by the LRP designer (or by hand, see
    ``docs/lrp-designer.md``) or an :class:`~napari_xai.core.lrp_config.LrpConfig`; without one, the composite of Montavon et al.
    2019 is used (LRP-gamma on the lower third of the Conv/Linear layers in
    execution order, LRP-epsilon in the middle, LRP-0 on top). The run reports
    relevance conservation (input sum against the target score) and warns when
    rules that should conserve are more than 10 % off.
    """
    from .lrp_config import LrpConfig, load_config, run_config

    given = params.get("config")
    if isinstance(given, LrpConfig):  # from the designer or a comparison: no file behind it
        cfg, given = given, None
    else:
        cfg = load_config(given, params.get("configuration") or None) if given else None
    out = run_config(model, x, target, cfg, ctx, boundaries=bool(params.get("boundaries", True)))
    # the provenance names the file (if any); the full configuration is in out.used["configuration"]
    out.used["config"] = given
    return out


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
))
