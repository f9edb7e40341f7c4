"""Channel (neuron) relevance of a layer and the prediction with chosen channels ablated (Huang et al. §6.4); see docs/evaluation.md."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..volumes import Volume
from .flipping import Scorer

__all__ = ["ablate", "channel_relevance"]

#: What flipped voxels become: 0, the channel's mean, or a Gaussian blur of the image (sigma in voxels).

def _layer(module, name: str):
    modules = dict(module.named_modules())
    if name not in modules:
        raise UserError(f"layer {name!r} does not exist in the model; choose one from the layer list.")
    return modules[name]


def channel_relevance(model: Any, volume: Volume, layer: str, target: int | str | None = None, config=None,
                      *, scorer: Scorer | None = None, ctx=None, **kwargs) -> dict:
    """Per-channel positive and negative relevance at ``layer``'s output (one LRP pass) and mean activation.

    ``config`` is an :class:`~napari_xai.core.lrp.LrpConfig` (default:
    the γ | ε | 0 composite). Returns ``{"layer", "target", "channels": [{"channel",
    "positive", "negative", "activation"}], "volumes": (C, i, j, k) channel relevance
    on the input grid, "activations": (C, i, j, k) the layer's activation maps
    resized to the input grid, "conservation": {...}}``.
    """
    import torch

    from ..lrp import run_config

    scorer = scorer or Scorer(model, volume, target, **kwargs)
    x = scorer.input.x
    target_module = _layer(scorer.module, layer)
    acts: dict = {}

    def keep(_m, _i, out):
        if torch.is_tensor(out) and "a" not in acts:
            acts["a"] = out.detach()

    handle = target_module.register_forward_hook(keep)
    try:
        out = run_config(scorer.module, x, scorer.target, config, ctx, capture=[layer], boundaries=False)
    finally:
        handle.remove()
    captured = out.used["_arrays"]["captured"].get(layer)
    if captured is None:
        raise UserError(f"no relevance reached layer {layer!r}; it is not on the path to the target.")
    rel = captured[0].float()
    if rel.ndim < 2:
        raise UserError(f"layer {layer!r} has no channels (its output has shape {tuple(captured.shape)}).")
    act = acts.get("a")
    flat = rel.reshape(rel.shape[0], -1)
    pos = flat.clamp(min=0).sum(dim=1)
    neg = flat.clamp(max=0).sum(dim=1)
    mean_act = act[0].float().reshape(act.shape[1], -1).mean(dim=1) if act is not None else torch.full_like(pos, float("nan"))
    channels = [{"channel": c, "positive": float(pos[c]), "negative": float(neg[c]), "activation": float(mean_act[c])}
                for c in range(rel.shape[0])]
    volumes = activations = None
    if rel.ndim == 4:
        volumes = scorer.input.grid.to_volume(rel.cpu().numpy(), additive=True).astype(np.float32)
        if act is not None and act.ndim == 5:
            # activations are values, not amounts: resample them (trilinear), do not redistribute their sum
            activations = scorer.input.grid.to_volume(act[0].float().cpu().numpy(), additive=False).astype(np.float32)
    return {"layer": layer, "target": scorer.target, "channels": channels, "volumes": volumes,
            "activations": activations, "conservation": out.used.get("conservation")}


def ablate(model: Any, volume: Volume, layer: str, channels: Sequence[int], target: int | str | None = None,
           *, scorer: Scorer | None = None, **kwargs) -> dict:
    """Scores before and after zeroing ``channels`` of ``layer``'s output (the rest of the network unchanged)."""
    import torch

    scorer = scorer or Scorer(model, volume, target, **kwargs)
    module = _layer(scorer.module, layer)
    chans = sorted({int(c) for c in channels})
    if not chans:
        raise UserError("choose at least one channel to ablate.")
    seen: dict = {}

    def zero(_m, _i, out):
        if not torch.is_tensor(out) or out.ndim < 2:
            raise UserError(f"layer {layer!r} returns no channels to ablate; choose a convolution or linear layer.")
        bad = [c for c in chans if not 0 <= c < out.shape[1]]
        if bad:
            raise UserError(f"channel {bad[0]} does not exist: layer {layer!r} has {out.shape[1]} channels (0..{out.shape[1] - 1}).")
        seen["channels"] = int(out.shape[1])
        out = out.clone()
        out[:, chans] = 0
        return out

    handle = module.register_forward_hook(zero)
    try:
        after = scorer.logits([volume.model_copy()])[0]
    finally:
        handle.remove()

    def state(z):
        p = scorer.probabilities(z[None])[0]
        return {"logits": [float(v) for v in z], "probabilities": [float(v) for v in p], "predicted": int(np.argmax(z))}

    t = scorer.target
    return {"names": scorer.names, "target": t, "layer": layer, "channels": chans, "layer_channels": seen.get("channels"),
            "before": state(scorer.base_logits), "after": state(after), "delta": float(after[t] - scorer.base_logits[t])}

