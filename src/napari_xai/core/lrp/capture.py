"""Hooks that read (:class:`RelevanceCapture`) or change (:class:`RelevanceFilterHooks`) the relevance
arriving at named layers during an LRP backward pass."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import UserError

__all__ = ["RelevanceCapture", "RelevanceFilterHooks"]


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
