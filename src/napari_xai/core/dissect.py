"""Network dissection with an atlas: which anatomical region does each channel of a layer fire on?

Bau et al. (2017) label a unit of a CNN with the concept its strongest
activations overlap best. Here the concepts are the regions of a brain atlas
(the volumes must be in the atlas's space, e.g. MNI):

1. each channel's activation map of one layer is interpolated to the volume
   grid (trilinear, as the model grid is mapped back elsewhere);
2. its threshold ``T`` is the ``quantile`` of its values over all voxels of
   all volumes (Bau et al.: top 0.5 %, ``quantile = 0.995``);
3. the channel's mask is ``a >= T`` without the voxels at the channel's
   minimum (a ReLU's zeros never form a mask, even when they fill the
   quantile); a constant channel (e.g. all zero) has no mask: it is *dead* for
   these inputs, which the review by Huff et al. names as a sign of a training
   problem;
4. its IoU with every region is ``|mask ∩ region| / |mask ∪ region|``, with
   the counts summed over the volumes; the best region labels the channel, and
   the channel is a *detector* of it when the IoU reaches ``min_iou``
   (Bau et al.: 0.04).

Voxels outside every region count in the mask but in no region, so a channel
that fires outside the brain gets a low IoU everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import Cancelled, UserError

#: Bau et al.'s top 0.5 % of activations and their IoU cut-off for a detector.
QUANTILE = 0.995
MIN_IOU = 0.04


@dataclass
class ChannelConcept:
    """One channel's best-matching region."""

    channel: int
    threshold: float
    voxels: int  # voxels in the channel's mask, over all volumes
    region: str
    iou: float
    second: str
    second_iou: float
    dead: bool
    detector: bool


@dataclass
class Dissection:
    layer: str
    rows: list[ChannelConcept]
    quantile: float
    min_iou: float
    volumes: int
    record: dict = field(default_factory=dict)

    def summary(self) -> str:
        det = [r for r in self.rows if r.detector]
        dead = sum(r.dead for r in self.rows)
        regions = sorted({r.region for r in det})
        return (f"{self.layer}: {len(det)} of {len(self.rows)} channels detect a region (IoU >= {self.min_iou:g}), "
                f"{len(regions)} regions in all; {dead} dead channels")


def layer_activations(model: Any, volume, layer: str | None = None,
                      to_volume_grid: bool = True) -> tuple[str, np.ndarray]:
    """(layer name, activations (C, ...)) of one layer for one volume: on the volume grid (trilinear), or as the
    layer gives them (``to_volume_grid=False``)."""
    import torch

    from .methods._model import model_session, require_hookable, trace_model
    from .explain import forward, prepare

    module = model.module
    require_hookable(model, "dissection", "it hooks a layer")
    prepared = prepare(volume, model)
    x = prepared.x
    with model_session(module):
        modules = dict(module.named_modules())
        if layer is None:  # the last leaf layer with a 3D feature map (e.g. the last ReLU before pooling)
            spatial = [n for n in trace_model(module, x).spatial() if n and not any(True for _ in modules[n].children())]
            if not spatial:
                raise UserError("the model has no layer with a 3D feature map to dissect.")
            layer = spatial[-1]
        if layer not in modules or not layer:
            spatial = trace_model(module, x).spatial()
            raise UserError(f"the model has no layer {layer!r}; layers with 3D feature maps: {', '.join(spatial[-8:]) or 'none'}.")
        seen: dict[str, Any] = {}

        def hook(_m, _i, out):
            seen["out"] = out[0] if isinstance(out, (tuple, list)) else out

        handle = modules[layer].register_forward_hook(hook)
        try:
            with torch.no_grad():
                forward(module, x)
        finally:
            handle.remove()
    out = seen.get("out")
    if out is None:
        raise UserError(f"layer {layer!r} did not run in the forward pass; choose a layer that runs.")
    if not torch.is_tensor(out) or out.ndim != 5:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise UserError(f"layer {layer!r} gives {shape}, not a 3D feature map (N, C, d, h, w); choose a convolution or activation.")
    acts = out.detach().float().cpu().numpy()[0]
    if to_volume_grid:
        # activations are values: interpolated back through the inverse of the input-space transforms
        acts = prepared.grid.to_volume(acts, additive=False)
    return layer, acts.astype(np.float32, copy=False)


def dissect(model: Any, volumes: Sequence, atlas: Any, layer: str | None = None, *, quantile: float = QUANTILE,
            min_iou: float = MIN_IOU, atlas_threshold: float | None = None,
            progress: Callable[[float, str], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> Dissection:
    """Label every channel of ``layer`` with the atlas region its top activations overlap best.

    Parameters
    ----------
    model : LoadedModel
    volumes : sequence of Volume
        The inputs (one subject or a cohort); each in the atlas's space.
    atlas : Atlas
        From :func:`~napari_xai.core.atlas.load_atlas`.
    layer : str, optional
        Module name (``named_modules``) with a 3D feature map; default: the
        last such layer in execution order.
    quantile : float
        Per-channel activation quantile over all voxels that sets the mask.
    min_iou : float
        IoU from which a channel counts as a detector of its best region.
    """
    from .atlas import DEFAULT_PROB_THRESHOLD, atlas_on_grid

    if not 0.5 <= float(quantile) < 1.0:
        raise UserError(f"quantile must be in [0.5, 1), e.g. 0.995 for the top 0.5 %, got {quantile:g}.")
    if not 0.0 < float(min_iou) <= 1.0:
        raise UserError(f"min_iou must be in (0, 1], got {min_iou:g}.")
    if not volumes:
        raise UserError("give at least one volume to dissect.")
    thr = DEFAULT_PROB_THRESHOLD if atlas_threshold is None else atlas_threshold
    # pass 1: the layer's own activations (small: the feature-map grid) give each channel's threshold, as in
    # Bau et al., who take the quantile over the raw activation maps and then upsample
    raw_acts: list[np.ndarray] = []
    for n, vol in enumerate(volumes):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled by the user")
        if progress is not None:
            progress(0.5 * n / len(volumes), f"activations of {vol.name or f'volume {n + 1}'}")
        name, a = layer_activations(model, vol, layer, to_volume_grid=False)
        layer = name
        if raw_acts and a.shape[0] != raw_acts[0].shape[0]:
            raise UserError(f"volume {n + 1} gives {a.shape[0]} channels at {name}, the first gave {raw_acts[0].shape[0]}.")
        raw_acts.append(a)
    A = np.concatenate([a.reshape(a.shape[0], -1) for a in raw_acts], axis=1)
    n_channels = A.shape[0]
    thresholds = np.quantile(A, float(quantile), axis=1)
    lowest = A.min(axis=1)
    dead = A.max(axis=1) == lowest  # constant (e.g. all zero after a ReLU): it says nothing about the input
    del A
    # pass 2, one subject at a time: upsample, threshold, count overlaps with every region
    from . import geometry

    grids = [np.asarray(atlas_on_grid(atlas, v.shape, v.affine, threshold=thr).labels) for v in volumes]
    values = np.unique(np.concatenate([np.unique(g[g > 0]) for g in grids]))  # label values present
    n_regions = int(values.size)
    names = [atlas.name_of(int(v)) or f"label {int(v)}" for v in values]
    inter = np.zeros((n_channels, n_regions + 1), dtype=np.int64)
    region_size = np.zeros(n_regions + 1, dtype=np.int64)
    mask_size = np.zeros(n_channels, dtype=np.int64)
    for n, (vol, a, lab) in enumerate(zip(volumes, raw_acts, grids)):
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled by the user")
        if progress is not None:
            progress(0.5 + 0.5 * n / len(volumes), f"regions of {vol.name or f'volume {n + 1}'}")
        L = np.zeros(lab.shape, dtype=np.int64)
        L[lab > 0] = np.searchsorted(values, lab[lab > 0]) + 1
        region_size += np.bincount(L.ravel(), minlength=n_regions + 1)[: n_regions + 1]
        for c in range(n_channels):
            up = a[c] if a.shape[1:] == tuple(vol.shape) else geometry.resize(a[c:c + 1], tuple(vol.shape))[0]
            # ties count: a channel whose top values are all equal keeps all of them; but voxels at the
            # channel's minimum (a ReLU's zeros) never join its mask, even when they fill the quantile
            m = (up >= thresholds[c]) & (up > lowest[c]) if not dead[c] else np.zeros(up.shape, bool)
            mask_size[c] += int(m.sum())
            inter[c] += np.bincount(L[m], minlength=n_regions + 1)[: n_regions + 1]
    inter, region_size = inter[:, 1:], region_size[1:]
    union = mask_size[:, None] + region_size[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    iou[:, region_size == 0] = 0.0
    rows = []
    for c in range(n_channels):
        order = np.argsort(-iou[c], kind="stable") if n_regions else np.array([], int)
        best = int(order[0]) if order.size else -1
        second = int(order[1]) if order.size > 1 else -1
        rows.append(ChannelConcept(
            channel=c, threshold=float(thresholds[c]), voxels=int(mask_size[c]),
            region=names[best] if best >= 0 and not dead[c] else "",
            iou=float(iou[c, best]) if best >= 0 else 0.0,
            second=names[second] if second >= 0 and not dead[c] else "",
            second_iou=float(iou[c, second]) if second >= 0 else 0.0,
            dead=bool(dead[c]), detector=bool(best >= 0 and not dead[c] and iou[c, best] >= min_iou)))
    if progress is not None:
        progress(1.0, "dissected")
    record = {"kind": "dissection", "layer": layer, "quantile": float(quantile), "min_iou": float(min_iou),
              "atlas": getattr(atlas, "name", str(atlas)), "volumes": [v.name for v in volumes],
              "model": {"name": model.name, "source": model.source, "sha256": model.sha256}}
    return Dissection(layer=str(layer), rows=rows, quantile=float(quantile), min_iou=float(min_iou),
                      volumes=len(volumes), record=record)
