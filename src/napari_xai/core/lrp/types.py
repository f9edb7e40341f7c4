"""What LRP does with each kind of layer: module type groups, ``layer_kind``, the layer list.

Like Zennit's ``types.py``: the groups of module types that share a treatment,
plus :func:`list_layers`, the model's leaf layers in execution order with the
treatment each gets. The stabiliser of the ratio rules lives here too, once.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from ..lazy import TypeGroup, nn, torch
from ..methods._model import ACTIVATIONS, hooked_forward, input_cache, model_session
from ..errors import UserError


__all__ = [
    "AVGPOOL_TYPES", "GRADIENT_TYPES", "KINDS", "LAYER_RULES", "NORM_TYPES", "RULE_TYPES", "STABILIZER",
    "STABILIZER_FLOAT64", "LayerInfo", "is_output_reduction", "layer_kind", "list_layers", "stabilizer_for",
    "suggest_rule",
]

NORM_TYPES = TypeGroup(lambda: (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
))
AVGPOOL_TYPES = TypeGroup(lambda: (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.Upsample,
))
#: Parameter-free layers whose gradient conserves relevance (selection, copies, reshapes, identity).
GRADIENT_TYPES = TypeGroup(lambda: (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.modules.dropout._DropoutNd, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.modules.padding._ConstantPadNd, nn.modules.padding._ReplicationPadNd, nn.modules.padding._ReflectionPadNd,
    nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle,
))
RULE_TYPES = TypeGroup(lambda: (nn.modules.conv._ConvNd, nn.Linear))
SOFTMAX_TYPES = TypeGroup(lambda: (nn.Softmax, nn.LogSoftmax, nn.Softmin))
#: The treatments :func:`layer_kind` returns (see its docstring).
KINDS = ("rule", "pass", "sum", "gradient", "container", "none")
#: The treatments a configuration's ``layer_rules`` may give a layer.
LAYER_RULES = ("pass", "sum", "gradient")

#: Stabiliser of the ratio rules (denominators, sums, pooling) in float32; also ε for ε = 0.
STABILIZER = 1e-6
#: The same for float64 models (1e-6 would dominate near-zero denominators there).
STABILIZER_FLOAT64 = 1e-12


def stabilizer_for(dtype: torch.dtype) -> float:
    """The stabiliser of the ratio rules for a model's dtype: 1e-6, or 1e-12 in float64."""
    return STABILIZER_FLOAT64 if dtype == torch.float64 else STABILIZER


def is_output_reduction(module: nn.Module) -> bool:
    """True for the masked-sum module of a segmentation target (it gets the sum rule)."""
    return bool(getattr(module, "_xai_output_reduction", False))


def layer_kind(module: nn.Module) -> str:
    """How LRP treats a module: ``rule``, ``pass``, ``sum``, ``gradient``, ``container`` or ``none``.

    * ``rule``: Conv (also transposed) and Linear layers get an LRP rule.
    * ``pass``: normalisation layers and activations hand relevance through unchanged.
    * ``sum``: average pooling, upsampling, masked output sums: the sum rule.
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
    if isinstance(module, SOFTMAX_TYPES):
        return "none"
    own = [p for p in module.parameters(recurse=False)]
    if list(module.children()):
        return "none" if own else "container"
    if isinstance(module, GRADIENT_TYPES) or not own:
        return "gradient"
    return "none"


def suggest_rule(name: str, type_name: str, parameters: int = 0) -> str:
    """A one-line UserError text for layer ``name`` of type ``type_name`` that has no LRP rule."""
    if type_name in {t.__name__ for t in SOFTMAX_TYPES}:
        return (
            f"LRP has no rule for layer '{name}' ({type_name}): LRP explains logits; remove the final {type_name} "
            "from the model's forward (or wrap the model so that it returns the scores before it)."
        )
    return (
        f"LRP has no rule for layer '{name}' ({type_name}, {parameters} parameters); if it acts elementwise (a "
        f"normalisation or activation) give it the pass rule with \"layer_rules\": {{\"{name}\": \"pass\"}} in an "
        "LRP configuration (method 'lrp'); if it is linear in its input, rewrite it as a Conv/Linear layer."
    )


@dataclass(frozen=True)
class LayerInfo:
    """One leaf layer of a model, in execution order.

    Attributes
    ----------
    index : int
        Position in execution order (0-based, first call).
    name : str
        Module name as in ``named_modules()``.
    type : str
        Class name, e.g. ``Conv3d``.
    output_shape : tuple of int or None
        Output shape in the traced forward pass.
    kind : str
        How LRP treats it (:func:`layer_kind`); ``none`` is an error unless ``layer_rules`` names it.
    calls : int
        How often it ran in one forward pass.
    parameters : int
        Number of its own parameters.
    """

    index: int
    name: str
    type: str
    output_shape: tuple[int, ...] | None
    kind: str
    calls: int = 1
    parameters: int = 0

    @property
    def label(self) -> str:
        """``#3 features.conv0 · Conv3d · (1, 64, 16, 16, 16)`` for lists and dropdowns."""
        shape = "×".join(map(str, self.output_shape[1:])) if self.output_shape else "-"
        return f"#{self.index} {self.name} · {self.type} · {shape}"

    @property
    def spatial(self) -> bool:
        return self.output_shape is not None and len(self.output_shape) == 5


_LAYERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _watched(modules: dict[str, nn.Module], model: nn.Module) -> dict[str, nn.Module]:
    """Leaf modules and modules with parameters of their own (the model itself if it has no children)."""
    watched = {
        n: m for n, m in modules.items()
        if n and (not list(m.children()) or any(True for _ in m.parameters(recurse=False)))
    }
    if not watched and not list(model.children()):
        watched = {"": model}
    return watched


def list_layers(model: nn.Module, x: torch.Tensor) -> list[LayerInfo]:
    """The model's leaf layers in execution order, with type, output shape and LRP treatment.

    One no-grad forward pass with a hook on every leaf module (and on modules
    that hold parameters of their own) records the order in which they finish;
    for leaves this is the order in which they run. Layers that did not run are
    not listed. Cached per model and input shape.

    Parameters
    ----------
    model : nn.Module
        An eager module (TorchScript has no hooks).
    x : torch.Tensor
        An input (1, C, D, H, W) on the model's device.
    """
    modules, cache, key = input_cache(_LAYERS, model, x, "listing layers")
    if key in cache:
        return cache[key]
    order: list[str] = []
    shapes: dict[str, tuple[int, ...] | None] = {}
    calls: dict[str, int] = {}

    def make(name: str):
        def hook(module, inputs, output):
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                out = output[0] if isinstance(output, (tuple, list)) and output else output
                shapes[name] = tuple(out.shape) if torch.is_tensor(out) else None
                order.append(name)

        return hook

    with model_session(model):
        try:
            hooked_forward(model, x.detach().clone(), _watched(modules, model), make)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"the model failed on an input of shape {tuple(x.shape)}: {first[:300]}") from None
    layers = [
        LayerInfo(
            index=i, name=n, type=type(modules[n]).__name__, output_shape=shapes[n], kind=layer_kind(modules[n]),
            calls=calls[n], parameters=sum(p.numel() for p in modules[n].parameters(recurse=False)),
        )
        for i, n in enumerate(order)
    ]
    cache[key] = layers
    return layers
