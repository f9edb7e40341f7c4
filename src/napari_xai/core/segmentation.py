"""Segmentation targets: explain the sum of class-c logits inside a mask.

A segmentation network returns a map (N, C, D, H, W). Attribution methods need
one score per class, so the map is reduced to masked sums (Captum's tutorial
and M3d-CAM do the same)::

    score_k = sum over voxels v in the mask of y[k, v]        (k = 0..C-1)

and class c is explained. The mask is one of

* the **predicted region** of class c (default): voxels whose arg-max over the
  classes is c (for a single-channel output: logit > 0);
* a **user mask** (e.g. a napari Labels layer) on the input volume grid;
* the **connected component** of the predicted class-c region under a point.

:class:`SegmentationScores` wraps the network so that every registry method
works unchanged. It keeps the wrapped network's layer names (``conv1``, not
``model.conv1``), so Grad-CAM layers and LRP configurations name the same
layers as for the bare network. The reduction is its own module
(:class:`MaskedSum`); LRP gives it the sum rule, so the relevance that enters
the network is exactly ``y[c, v]`` for v in the mask and 0 elsewhere (the
"masked-output relevance").

Deep-supervision networks that return a tuple or list of maps: the first
output is used and a warning says so (``output_index`` picks another).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .geometry import resize_labels  # noqa: F401 - part of this module's API (see __all__)

__all__ = [
    "MaskedSum",
    "SegmentationScores",
    "SegmentationTarget",
    "component_at",
    "is_segmentation_output",
    "mask_to_grid",
    "pick_output",
    "predicted_labels",
    "resize_labels",
    "resolve_mask",
]


def pick_output(out: Any, index: int = 0, warn=None) -> Any:
    """The ``index``-th tensor of a tuple/list output (deep supervision); tensors pass unchanged."""
    if isinstance(out, (tuple, list)):
        tensors = [o for o in out if torch.is_tensor(o)]
        if not tensors:
            raise UserError(f"the model returns a {type(out).__name__} without tensors; it must return logits.")
        if not 0 <= index < len(tensors):
            raise UserError(f"output index {index} is out of range: the model returns {len(tensors)} tensors.")
        if warn is not None:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors[:4])
            warn(
                f"the model returns {len(tensors)} outputs ({shapes}), e.g. deep supervision; output {index} "
                f"{tuple(tensors[index].shape)} is explained (choose another with output_index)."
            )
        return tensors[index]
    return out


def is_segmentation_output(out: Any) -> bool:
    """True for a floating tensor (N, C, D, H, W) (or (N, C, H, W)): a map of class logits."""
    return torch.is_tensor(out) and out.ndim in (4, 5) and torch.is_floating_point(out)


def predicted_labels(logits: torch.Tensor) -> torch.Tensor:
    """Predicted labels (D, H, W) int64 of a (1, C, ...) logit map: arg-max over C, or logit > 0 for C = 1."""
    y = logits.detach()[0]
    if y.shape[0] == 1:
        return (y[0] > 0).long()
    # torch.max's indices are argmax's (the first of equal maxima), but ten times faster over a short channel axis
    # (0.35 against 3.3 ms for (2, 32, 32, 32) on one thread): argmax reduces the strided axis element by element
    return torch.max(y, dim=0).indices


def class_region(labels: torch.Tensor | np.ndarray, target: int, channels: int) -> np.ndarray:
    """Boolean region of class ``target`` in a label map (for C = 1 the foreground, label 1)."""
    lab = labels.cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    return lab == (1 if channels == 1 else int(target))


def mask_to_grid(mask: np.ndarray, volume_shape: tuple[int, ...], grid_shape: tuple[int, ...], what: str = "mask",
                 to_grid=None) -> np.ndarray:
    """Check a user mask on the volume grid and bring it to the model output grid (nearest neighbour).

    Raises
    ------
    UserError
        If the mask has another shape than the volume, is empty, or vanishes on the model grid.
    """
    m = np.asarray(mask)
    if m.ndim == 4 and m.shape[0] == 1:
        m = m[0]
    if tuple(m.shape) != tuple(volume_shape):
        raise UserError(
            f"the {what} has shape {tuple(m.shape)} but the input volume has {tuple(volume_shape)}; "
            "draw it on the image grid (a Labels layer created from the image) or resample it first."
        )
    m = m != 0
    if not m.any():
        raise UserError(f"the {what} is empty (no voxel set); paint the region to explain, or use the predicted region.")
    out = (to_grid(m, grid_shape) if to_grid is not None else resize_labels(m, grid_shape)).astype(bool)
    if not out.any():
        raise UserError(
            f"the {what} ({int(m.sum())} voxels) vanishes on the model's {tuple(grid_shape)} grid; paint a larger region."
        )
    return out


@dataclass(frozen=True)
class Ray:
    """A viewing ray on the volume grid, in voxel coordinates: a click in a 3D view.

    ``origin`` is any point on the ray (napari's cursor position in data
    coordinates) and ``direction`` points away from the camera. The component
    under the click is the one that contains the first voxel of the target
    class's predicted region that the ray meets.
    """

    origin: tuple[float, float, float]
    direction: tuple[float, float, float]

    def record(self) -> dict:
        return {"origin": [round(float(v), 3) for v in self.origin],
                "direction": [round(float(v), 6) for v in self.direction]}


def component_at(region: np.ndarray, point: tuple[int, ...], connectivity: int = 26) -> np.ndarray:
    """The connected component of boolean ``region`` that contains voxel ``point`` (6/18/26-connectivity)."""
    from scipy import ndimage

    region = np.asarray(region, dtype=bool)
    p = tuple(int(round(float(v))) for v in point)
    if len(p) != region.ndim or any(not 0 <= v < s for v, s in zip(p, region.shape)):
        raise UserError(f"the point {p} lies outside the volume of shape {tuple(region.shape)}; click inside the image.")
    if not region[p]:
        raise UserError(f"voxel {p} is not in the predicted region of the target class; click inside the predicted segmentation.")
    rank = {6: 1, 18: 2, 26: 3}.get(int(connectivity))
    if rank is None:
        raise UserError(f"connectivity must be 6, 18 or 26, got {connectivity}.")
    labels, _ = ndimage.label(region, structure=ndimage.generate_binary_structure(region.ndim, rank))
    return labels == labels[p]


class MaskedSum(nn.Module):
    """Reduce a logit map (N, C, ...) to (N, C) masked sums: ``sum_v mask[v] * y[:, :, v]``.

    LRP gives this module the sum (Norm) rule, so the relevance of voxel v of
    class c is ``mask[v] * y[c, v]``.
    """

    _xai_output_reduction = True

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32), persistent=False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if tuple(y.shape[2:]) != tuple(self.mask.shape):
            raise UserError(
                f"the segmentation output grid {tuple(y.shape[2:])} differs from the mask grid {tuple(self.mask.shape)}."
            )
        return (y * self.mask.to(y)).flatten(2).sum(-1)


class SegmentationScores(nn.Module):
    """A segmentation network seen as a classifier: ``forward(x) = MaskedSum(net(x))``, shape (N, C).

    The wrapped network's children are registered under their own names, so
    ``named_modules()`` lists ``conv1`` and not ``net.conv1``; the reduction is
    the extra module ``xai_masked_sum``. ``train()``/``eval()`` reach the wrapped
    network too. A network without children (a single layer) is registered as
    ``net``.

    With ``mask=None`` it only picks output ``output_index`` of a network that
    returns a tuple (a classifier with auxiliary heads).
    """

    def __init__(self, net: nn.Module, mask: torch.Tensor | None, output_index: int = 0, warn=None):
        super().__init__()
        children = list(net.named_children())
        if children:
            object.__setattr__(self, "net", net)  # not registered: its children are, under their own names
            for name, child in children:
                self.add_module(name, child)
        else:
            self.net = net
        self.xai_masked_sum = MaskedSum(mask) if mask is not None else None
        self.output_index = int(output_index)
        self._warn = warn
        self.training = net.training

    def train(self, mode: bool = True):  # noqa: D102
        self.net.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        y = pick_output(self.net(x), self.output_index, self._warn)
        self._warn = None  # warn once
        return self.xai_masked_sum(y) if self.xai_masked_sum is not None else y


@dataclass
class SegmentationTarget:
    """What was explained for a segmentation network.

    Attributes
    ----------
    labels : np.ndarray
        Predicted labels on the model output grid (int64).
    mask : np.ndarray
        Boolean target mask on the model output grid.
    source : str
        ``"predicted"``, ``"mask"`` or ``"component"``.
    target : int
        Explained class.
    voxels : int
        Voxels in the mask (output grid).
    score : float
        Masked logit sum of the target class (the relevance injected by LRP).
    class_voxels : list of int
        Predicted voxels per class (output grid).
    notes : list of str
    """

    labels: np.ndarray
    mask: np.ndarray
    source: str
    target: int
    voxels: int
    score: float
    class_voxels: list[int]
    point: tuple[int, ...] | None = None
    ray: Ray | None = None
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """JSON-ready summary for the provenance."""
        out = {"mask": self.source, "mask_voxels": self.voxels, "score": self.score, "class_voxels": self.class_voxels,
               "output_grid": list(self.mask.shape)}
        if self.point is not None:
            out["point"] = [int(v) for v in self.point]
        if self.ray is not None:
            out["ray"] = self.ray.record()
        return out


def default_target(labels: np.ndarray, channels: int) -> int:
    """The largest predicted foreground class (class 0 is background when C > 1)."""
    if channels == 1:
        return 0
    counts = np.bincount(np.asarray(labels).ravel(), minlength=channels)
    fg = counts[1:]
    if fg.sum() == 0:
        raise UserError(
            "the model predicts only background (class 0) for this input; choose a target class and give a mask."
        )
    return int(np.argmax(fg)) + 1


def resolve_mask(
    logits: torch.Tensor,
    target: int,
    volume_shape: tuple[int, ...],
    mask: np.ndarray | None = None,
    point: tuple[int, ...] | Ray | None = None,
    connectivity: int = 26,
    names: list[str] | None = None,
    to_grid=None,
    to_volume=None,
    labels: np.ndarray | None = None,
) -> SegmentationTarget:
    """Build the target mask on the output grid from the predicted labels, a user mask or a point.

    Parameters
    ----------
    logits : torch.Tensor
        The network output (1, C, d, h, w).
    target : int
        The class to explain.
    volume_shape : tuple of int
        Shape of the input volume grid (where ``mask`` and ``point`` live).
    mask : np.ndarray, optional
        User mask on the volume grid (non-zero = inside).
    point : tuple of int or Ray, optional
        Voxel (i, j, k) on the volume grid: explain the connected component of
        the predicted target region that contains it. A :class:`Ray` (a click
        in a 3D view) picks the first voxel of that region along the ray.
    connectivity : int
        6, 18 or 26 for the component.
    names : list of str, optional
        Class names for messages.
    to_grid, to_volume : callable, optional
        ``to_grid(labels, grid_shape)`` and ``to_volume(labels)`` map label volumes between the
        volume grid and the output grid (nearest neighbour); by default :func:`resize_labels`
        over the same field of view. :func:`explain` passes its model grid's MONAI transforms.
    labels : np.ndarray, optional
        :func:`predicted_labels` of ``logits`` as a numpy array, when the caller has it.
    """
    if to_grid is None:
        to_grid = resize_labels
    if to_volume is None:
        def to_volume(lab):
            return resize_labels(lab, volume_shape)
    if mask is not None and point is not None:
        raise UserError("give either a mask or a point (connected component), not both.")
    ray: Ray | None = None
    channels = int(logits.shape[1])
    grid = tuple(int(s) for s in logits.shape[2:])
    labels = predicted_labels(logits).cpu().numpy() if labels is None else labels
    if channels > 1:
        class_voxels = [int(v) for v in np.bincount(labels.ravel(), minlength=channels)[:channels]]
    else:
        class_voxels = [int(labels.sum())]
    cname = names[target] if names and 0 <= target < len(names) else f"class {target}"
    if mask is not None:
        m = mask_to_grid(mask, volume_shape, grid, to_grid=to_grid)
        source = "mask"
    elif point is not None:
        region_vol = to_volume(class_region(labels, target, channels)).astype(bool)
        if isinstance(point, Ray):
            from .geometry import first_nonzero_along_ray

            ray = point
            point = first_nonzero_along_ray(region_vol, np.eye(4), ray.origin, ray.direction)
            if point is None:
                raise UserError(
                    f"the viewing ray through the click meets no voxel predicted as '{cname}'; click on the "
                    "predicted segmentation in the 3D view, or choose another target class."
                )
        comp = component_at(region_vol, point, connectivity)
        m = to_grid(comp, grid).astype(bool)
        if not m.any():
            raise UserError(f"the component at {tuple(point)} vanishes on the model grid {grid}; pick a larger component.")
        source = "component"
    else:
        m = class_region(labels, target, channels)
        if not m.any():
            raise UserError(
                f"no voxel is predicted as '{cname}', so its predicted region is empty; choose another target "
                "or give a mask (Labels layer)."
            )
        source = "predicted"
    score = float((logits.detach()[0, int(target)] * torch.from_numpy(m).to(logits)).sum())
    return SegmentationTarget(labels=labels, mask=m, source=source, target=int(target), voxels=int(m.sum()),
                              score=score, class_voxels=class_voxels,
                              point=tuple(int(round(float(v))) for v in point) if point is not None else None,
                              ray=ray)
