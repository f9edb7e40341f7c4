"""Occlusion (Zeiler & Fergus 2014) with windows that cover every voxel (an end-aligned last window per axis)."""

from __future__ import annotations

import itertools
import math


from ..lazy import torch
from ._model import (
    BASELINE_PARAM,
    ScoreFn,
    as_context,
    fresh_input,
    make_baseline,
    model_session,
)
from .registry import MethodOutput, Param, entry



def occlusion_windows(size: int, window: int, stride: int) -> list[int]:
    """Start indices of windows along one axis: ``0, stride, 2*stride, ...`` plus an end-aligned last window.

    The extra window at ``size - window`` makes sure the last voxels are covered
    when ``size - window`` is not a multiple of ``stride``.
    """
    window = min(window, size)
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def default_occlusion_window(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Default occlusion window: about 1/8 of each axis (at least 1 voxel), so about 512 windows."""
    return tuple(max(1, int(round(int(s) / 8.0))) for s in shape)  # type: ignore[return-value]


@entry(
    "occlusion", "perturbation", "Score drop when a 3D window is replaced by a baseline, averaged over covering windows.",
    Param("window", "ints3", None, "Window size in voxels (d,h,w or one number); empty = about 1/8 of each axis.", minimum=1),
    Param("stride", "ints3", None, "Step between windows in voxels; empty = the window (no overlap).", minimum=1),
    BASELINE_PARAM,
    Param("perturbations_per_eval", int, 8, "Occluded volumes per forward pass (memory vs speed).", minimum=1, maximum=1024),
    Param("per_channel", bool, False, "Occlude each channel on its own (C times slower) instead of all together."),
    reference="Zeiler & Fergus 2014, arXiv:1311.2901", multiplies_input=True,
)
def _occlusion(model, x, target, params, ctx) -> MethodOutput:
    """Occlusion (Zeiler & Fergus 2014): replace a 3D window by the baseline and record the score drop.

    Relevance of a voxel = mean over the windows covering it of
    f(x) - f(x with the window replaced by the baseline); positive where hiding
    the voxel lowers the target score. Windows step by ``stride`` and one extra
    window is aligned to the end of each axis, so every voxel is covered when
    stride <= window. ``perturbations_per_eval`` occluded copies run per forward
    pass. With ``per_channel`` each channel is occluded on its own (C times the
    passes); otherwise all channels are hidden together and the map is the same
    for every channel. Units: score.
    """
    ctx = as_context(ctx)
    shape = tuple(int(s) for s in x.shape[2:])
    window = tuple(params["window"] or default_occlusion_window(shape))
    window = tuple(min(w, s) for w, s in zip(window, shape))
    stride = tuple(params["stride"] or window)
    ppe = int(params["perturbations_per_eval"])
    per_channel = bool(params["per_channel"])
    if any(s > w for s, w in zip(stride, window)):
        ctx.warn("occlusion: a stride larger than the window leaves voxels between windows uncovered; their relevance is 0.")
    starts = [occlusion_windows(n, w, s) for n, w, s in zip(shape, window, stride)]
    boxes = [
        tuple(slice(a, a + w) for a, w in zip(corner, window)) for corner in itertools.product(*starts)
    ]
    channels = x.shape[1]
    groups = [slice(c, c + 1) for c in range(channels)] if per_channel else [slice(0, channels)]
    jobs = [(g, b) for g in groups for b in boxes]
    n_passes = 1 + math.ceil(len(jobs) / ppe)
    if len(jobs) > 20000:
        ctx.warn(f"occlusion: {len(jobs)} occluded volumes to evaluate; a larger window or stride is much faster.")
    with model_session(model), torch.no_grad():
        xi = fresh_input(x)
        base, used = make_baseline(xi, params["baseline"], None)
        f = ScoreFn(model, ctx, target, n_passes, "occlusion")
        ref = f(xi)[0, int(target)]
        total = torch.zeros_like(xi)
        count = torch.zeros_like(xi)
        for start in range(0, len(jobs), ppe):
            chunk = jobs[start:start + ppe]
            batch = xi.repeat(len(chunk), 1, 1, 1, 1)
            for i, (g, b) in enumerate(chunk):
                batch[(i, g) + b] = base[(0, g) + b]
            drop = ref - f(batch)[:, int(target)]
            for i, (g, b) in enumerate(chunk):
                total[(0, g) + b] += drop[i]
                count[(0, g) + b] += 1
        rel = torch.where(count > 0, total / count.clamp_min(1), torch.zeros_like(total))
    used.update(window=window, stride=stride, windows=len(boxes), forward_passes=f.calls, perturbations_per_eval=ppe)
    return MethodOutput(rel, used)
