"""Voxel and region flipping: predictions with voxels replaced, MoRF/LeRF curves and AOPC (Samek et al. 2017); see docs/evaluation.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import Cancelled, UserError
from ..methods.baselines import REPLACEMENTS
from ..volumes import Volume

__all__ = ["BASELINES", "ORDERS", "FlipCurve", "Scorer", "flip_curve", "flip_voxels", "flipped_mask", "predict_flipped", "replacement"]

#: What flipped voxels become: 0, the channel's mean, or a Gaussian blur of the image (sigma in voxels); the
#: flipping members of the one baseline table (methods/_model.BASELINE_KINDS).
BASELINES = REPLACEMENTS
#: Flipping orders: most relevant first, least relevant first, random.
ORDERS = ("morf", "lerf", "random")
BLUR_SIGMA_VOX = 3.0
BATCH = 8


def replacement(data: np.ndarray, kind: str = "zero", sigma: float = BLUR_SIGMA_VOX) -> np.ndarray:
    """The baseline image (C, i, j, k) that flipped voxels take their values from (:func:`make_baseline`)."""
    import torch

    from ..methods._model import make_baseline

    if kind not in BASELINES:
        raise UserError(f"baseline must be one of {', '.join(BASELINES)}, got {kind!r}.")
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))[None]
    with torch.no_grad():
        return make_baseline(x, kind, sigma)[0][0].numpy()


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], what: str = "flip mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise UserError(f"the {what} has shape {m.shape} but the input volume has {tuple(shape)}; paint it on the input's grid.")
    m = m != 0
    if not m.any():
        raise UserError(f"the {what} is empty (no voxel set); paint the voxels to flip.")
    return m


def flip_voxels(volume: Volume, mask: np.ndarray, baseline: str = "zero") -> Volume:
    """A copy of ``volume`` whose voxels inside ``mask`` (i, j, k; every channel) take the baseline's values."""
    m = _check_mask(mask, volume.shape)
    data = volume.model_copy()  # NaN/Inf become 0, as the model sees them
    base = replacement(data, baseline)
    data[:, m] = base[:, m]
    return Volume(data=data, affine=volume.affine, header=volume.header, name=volume.name, source=volume.source)


class Scorer:
    """Target scores of a model for perturbed copies of one input volume, in batched forward passes.

    Parameters
    ----------
    model : LoadedModel
    volume : Volume
        The unperturbed input.
    target : int or str, optional
        Class to score (default: the predicted class).
    normalization, input_shape, segmentation, mask, point, output_index
        As for :func:`~napari_xai.core.explain.explain`; a segmentation
        network's mask is fixed from the unperturbed prediction.
    """

    def __init__(self, model: Any, volume: Volume, target: int | str | None = None, *, normalization: str | None = None,
                 input_shape=None, segmentation: bool = False, mask: np.ndarray | None = None, point=None,
                 output_index: int = 0, model_orientation: str | None = None, model_spacing=None):
        from ..explain import prepare, prepare_target
        from ..methods.registry import RunContext

        self.model, self.volume = model, volume
        #: the input in the model's space; every perturbed copy goes through the same MONAI transforms
        self.input = prepare(volume, model, normalization, input_shape, model_orientation=model_orientation,
                             model_spacing=model_spacing)
        x, self.model_shape, self.normalization = self.input.x, self.input.grid.shape, self.input.space.normalization
        self.ctx = RunContext()
        for w in self.input.warnings:
            self.ctx.warn(w)
        t = prepare_target(model, x, volume, target, segmentation, mask, point, output_index, 26, self.ctx,
                           grid=self.input.grid)
        self.module, self.names, self.predicted, self.target = t.module, list(t.names), int(t.predicted), int(t.target)
        self.segmentation = t.segmentation
        self.base_logits = self.logits([volume.model_copy()])[0]

    def logits(self, volumes: Sequence[np.ndarray]) -> np.ndarray:
        """(n, classes) scores for ``volumes`` (each (C, i, j, k) on the input grid; NaN/Inf count as 0)."""
        import torch

        from ..explain import forward

        out = []
        for start in range(0, len(volumes), BATCH):
            batch = np.stack([self.input.grid.apply(np.nan_to_num(np.asarray(v, dtype=np.float32), nan=0.0, posinf=0.0,
                                                                  neginf=0.0))
                              for v in volumes[start:start + BATCH]])
            y = forward(self.module, torch.from_numpy(np.ascontiguousarray(batch)).to(self.model.device))
            if isinstance(y, (tuple, list)):
                y = y[0]
            out.append(y.detach().float().cpu().numpy().reshape(len(batch), -1))
        return np.concatenate(out, axis=0)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over classes (sigmoid for one output), per row; segmentation scores have no probabilities (NaN)."""
        z = np.asarray(logits, dtype=np.float64)
        if self.segmentation is not None:
            return np.full_like(z, np.nan)
        if z.shape[1] == 1:
            return 1.0 / (1.0 + np.exp(-z))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def predict_flipped(model: Any, volume: Volume, mask: np.ndarray, baseline: str = "zero",
                    target: int | str | None = None, scorer: Scorer | None = None, **kwargs) -> dict:
    """Scores before and after flipping the voxels of ``mask``: the user's interactive check (paint, predict).

    Returns a dict with ``names``, ``target``, ``voxels``, ``before`` and
    ``after`` (``logits``, ``probabilities``, ``predicted``) and the target
    logit's change ``delta``.
    """
    scorer = scorer or Scorer(model, volume, target, **kwargs)
    flipped = flip_voxels(volume, mask, baseline)
    after = scorer.logits([flipped.data])[0]

    def state(z):
        p = scorer.probabilities(z[None])[0]
        return {"logits": [float(v) for v in z], "probabilities": [float(v) for v in p], "predicted": int(np.argmax(z))}

    t = scorer.target
    return {"names": scorer.names, "target": t, "target_name": scorer.names[t] if t < len(scorer.names) else str(t),
            "voxels": int(np.count_nonzero(mask)), "baseline": baseline,
            "before": state(scorer.base_logits), "after": state(after),
            "delta": float(after[t] - scorer.base_logits[t])}


# --------------------------------------------------------------------------- flipping curves


@dataclass
class FlipCurve:
    """Target score while regions are flipped in one order."""

    order: str
    baseline: str
    region: int
    fractions: list[float]  # share of the regions flipped at each step (0 first)
    voxels: list[int]  # voxels flipped at each step
    scores: list[float]  # target logit at each step
    probabilities: list[float]
    target: int
    target_name: str
    notes: list[str] = field(default_factory=list)
    atlas: str | None = None  # regions are this atlas's, not cubes
    flipped: list[str] = field(default_factory=list)  # atlas regions flipped by the last step, in order

    @property
    def aopc(self) -> float:
        """Area over the perturbation curve: mean over steps of (score at step 0 - score at step k)."""
        s = np.asarray(self.scores, dtype=float)
        return float(np.mean(s[0] - s)) if s.size else float("nan")

    def record(self) -> dict:
        out = {"order": self.order, "baseline": self.baseline, "region": self.region, "fractions": self.fractions,
               "voxels": self.voxels, "scores": self.scores, "probabilities": self.probabilities,
               "aopc": self.aopc, "target": self.target, "target_name": self.target_name}
        if self.atlas:
            out.update(atlas=self.atlas, flipped=list(self.flipped))
        return out


def region_ranking(relevance: np.ndarray, region: int, order: str, seed: int = 0,
                   parcels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Region labels (i, j, k) and the region indices in flipping order.

    Regions are cubes of edge ``region`` voxels, or, with ``parcels`` (integer
    labels on the same grid, e.g. an atlas; 0 = never flipped), one region per
    distinct non-zero label in increasing label order; voxels with label 0 get
    region -1.
    """
    r = np.asarray(relevance, dtype=np.float64)
    if r.ndim == 4:
        r = r.sum(axis=0)
    if r.ndim != 3:
        raise UserError(f"relevance must be a 3D volume (i, j, k), got shape {r.shape}.")
    if order not in ORDERS:
        raise UserError(f"order must be one of {', '.join(ORDERS)}, got {order!r}.")
    if parcels is not None:
        p = np.asarray(parcels)
        if p.shape != r.shape:
            raise UserError(f"the regions have shape {p.shape} but the relevance has {r.shape}.")
        values, dense = np.unique(p, return_inverse=True)
        dense = dense.reshape(p.shape).astype(np.int64)
        if values[0] == 0:
            dense -= 1  # label 0 -> -1 (never flipped)
            values = values[1:]
        if values.size == 0:
            raise UserError("no region to flip: the region labels are all 0 on this input.")
        labels = dense
        sums = np.bincount(labels[labels >= 0].ravel(), weights=np.nan_to_num(r)[labels >= 0].ravel(),
                           minlength=values.size)
    else:
        if int(region) < 1:
            raise UserError(f"region must be at least 1 voxel, got {region}.")
        from ..geometry import cube_labels

        labels, nb = cube_labels(r.shape, int(region))
        sums = np.bincount(labels.ravel(), weights=np.nan_to_num(r).ravel(), minlength=int(np.prod(nb)))
    if order == "random":
        ranked = np.random.default_rng(seed).permutation(sums.size)
    else:
        # stable sort; ties (e.g. all-zero regions) keep their index order in both directions
        ranked = np.argsort(-sums if order == "morf" else sums, kind="stable")
    return labels, ranked


def flipped_mask(relevance: np.ndarray, fraction: float, region: int = 3, order: str = "morf", seed: int = 0) -> np.ndarray:
    """The voxels (i, j, k) that :func:`flip_curve` has flipped once ``fraction`` of the regions are flipped."""
    labels, ranked = region_ranking(relevance, region, order, seed)
    count = int(round(float(fraction) * ranked.size))
    return np.isin(labels, ranked[:count])


def flip_curve(
    model: Any,
    volume: Volume,
    relevance: np.ndarray,
    target: int | str | None = None,
    *,
    order: str = "morf",
    baseline: str = "zero",
    region: int = 3,
    steps: int = 20,
    max_fraction: float = 0.2,
    seed: int = 0,
    scorer: Scorer | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    atlas: str | None = None,
    atlas_threshold: float = 0.25,
    **kwargs,
) -> FlipCurve:
    """Flip regions of ``volume`` in the order of ``relevance`` and record the target score after each step.

    Parameters
    ----------
    relevance : np.ndarray
        (i, j, k) or (C, i, j, k) on the volume's grid (channels are summed).
    order : str
        ``morf`` (most relevant first), ``lerf`` (least relevant first) or ``random``.
    baseline : str
        ``zero``, ``mean`` or ``blur`` (see :func:`replacement`).
    region : int
        Edge of the cubic regions in voxels (1 = single voxels).
    steps, max_fraction : int, float
        ``steps`` equal steps from 0 to ``max_fraction`` of all regions.
    atlas : str, optional
        Flip the regions of this atlas (a built-in name or a label NIfTI, the
        input in its space) instead of cubes; voxels outside the atlas are
        never flipped, and ``FlipCurve.flipped`` names the regions flipped by
        the last step, in order.
    """
    if not 0 < float(max_fraction) <= 1:
        raise UserError(f"max_fraction must be in (0, 1], got {max_fraction}.")
    if int(steps) < 1:
        raise UserError(f"steps must be at least 1, got {steps}.")
    rel = np.asarray(relevance)
    if rel.shape[-3:] != tuple(volume.shape):
        raise UserError(f"the relevance has shape {rel.shape[-3:]} but the input volume has {tuple(volume.shape)}; "
                        "explain this input first.")
    scorer = scorer or Scorer(model, volume, target, **kwargs)
    parcels, names = None, None
    if atlas:
        from ..atlas import atlas_on_grid, load_atlas

        a = load_atlas(atlas)
        parcels = np.asarray(atlas_on_grid(a, volume.shape, volume.affine, threshold=atlas_threshold).labels)
        values = np.unique(parcels)
        names = [a.name_of(int(v)) for v in values if v != 0]
    labels, ranked = region_ranking(rel, region, order, seed, parcels)
    n_regions = ranked.size
    data = volume.model_copy()
    base = replacement(data, baseline)
    fractions = [float(max_fraction) * k / int(steps) for k in range(int(steps) + 1)]
    counts = [int(round(f * n_regions)) for f in fractions]
    # position of every region in the flipping order: region r is flipped at step k when rank[r] < counts[k]
    rank = np.empty(n_regions, dtype=np.int64)
    rank[ranked] = np.arange(n_regions)
    voxel_rank = np.where(labels >= 0, rank[np.maximum(labels, 0)], np.iinfo(np.int64).max)
    scores: list[float] = []
    probs: list[float] = []
    voxels: list[int] = []
    stop = should_stop or (lambda: False)
    t = scorer.target
    for start in range(0, len(counts), BATCH):
        if stop():
            raise Cancelled("cancelled by the user")
        batch = []
        for c in counts[start:start + BATCH]:
            m = voxel_rank < c
            batch.append(np.where(m, base, data))  # one pass; no copy-then-scatter
            voxels.append(int(np.count_nonzero(m)))
        z = scorer.logits(batch)
        scores += [float(v) for v in z[:, t]]
        probs += [float(v) for v in scorer.probabilities(z)[:, t]]
        if progress is not None:
            progress(min(1.0, (start + len(batch)) / len(counts)), f"{order}: {start + len(batch)}/{len(counts)} steps")
    name = scorer.names[t] if t < len(scorer.names) else str(t)
    curve = FlipCurve(order, baseline, 0 if atlas else int(region), fractions, voxels, scores, probs, t, name)
    if names is not None:
        curve.atlas = str(atlas)
        curve.flipped = [names[i] for i in ranked[:counts[-1]]]
    return curve


#: Flipping settings of the AOPC readouts of ``cohort --flip`` and ``compare --flip``.
READOUT_FLIP = {"region": 3, "steps": 10, "max_fraction": 0.2, "baseline": "zero"}


def aopc_readouts(model: Any, volume: Volume, relevance: np.ndarray, scorer: Scorer) -> dict:
    """``aopc_morf`` and ``aopc_random`` of one map with :data:`READOUT_FLIP` (the scorer fixes model and target)."""
    return {f"aopc_{o}": flip_curve(model, volume, relevance, order=o, scorer=scorer, **READOUT_FLIP).aopc
            for o in ("morf", "random")}


# --------------------------------------------------------------------------- channel ablation
