"""Concepts of a layer for one input: Concept Relevance Propagation (CRP), ranked and named by anatomy.

:func:`top_concepts` is the public entry: for a volume (or a model-grid tensor),
one LRP pass under any preset or designer configuration gives the relevance of
every channel of ``layer``; the ``k`` most relevant channels are the concepts,
and each gets its own conditional heatmap (relevance that flowed through that
channel only) on the volume's grid, through the same model-input-space path as
:func:`~napari_xai.core.explain.explain` (the ``crp`` registry entry does the
work; :mod:`napari_xai.core.lrp.conditional` explains the conditioning and why
it is ours rather than ``zennit-crp``'s). :func:`name_concepts` gives each
concept the atlas regions holding most of its positive relevance, so a concept
reads "channel 12: Hippocampus L, 61 % of its relevance".

Shares: a channel's relevance is the relevance arriving at the layer's output
in that channel (summed over positions); the shares divide by the layer's
total, so they sum to 1 over all channels. A concept's conditional map sums to
its channel relevance where the rules below the layer conserve (z⁺, ε small,
no biases), and the maps of all channels sum to the unconditioned map when no
skip connection bypasses the layer.

Pure: no Qt, no napari.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import UserError

__all__ = ["Concept", "ConceptResult", "DEFAULT_K", "DEFAULT_RULES", "concept_label", "mask_share", "name_concepts",
           "top_concepts"]

#: How many concepts :func:`top_concepts` returns by default.
DEFAULT_K = 8
#: The LRP rules of a CRP run unless asked otherwise (the ``crp`` entry's default).
DEFAULT_RULES = "lrp-epsilon-plus"


@dataclass
class Concept:
    """One channel of the layer as a concept.

    Attributes
    ----------
    channel : int
        Channel index at the layer.
    relevance : float
        Relevance arriving at the layer in this channel (summed over positions).
    share : float
        ``relevance`` / the layer's total relevance (all channels' shares sum to 1).
    rank : int
        0 for the most relevant channel.
    map : np.ndarray
        Conditional heatmap (i, j, k) on the volume grid (input channels summed), signed.
    map_sum : float
        Sum of ``map`` (close to ``relevance`` when the rules below the layer conserve).
    regions : list of (str, float)
        After :func:`name_concepts`: atlas regions by their share of the map's positive relevance (0-1).
    """

    channel: int
    relevance: float
    share: float
    rank: int
    map: np.ndarray
    map_sum: float
    regions: list[tuple[str, float]] = field(default_factory=list)

    @property
    def top_region(self) -> tuple[str, float]:
        """(region, share) with the largest share of the positive relevance, or ("", nan) before naming."""
        return self.regions[0] if self.regions else ("", float("nan"))

    @property
    def label(self) -> str:
        """``channel 12: Hippocampus L, 61 % of its relevance`` (or ``channel 12`` before naming)."""
        return concept_label(self.channel, *self.top_region)


@dataclass
class ConceptResult:
    """The concepts of one layer for one input and target (see :func:`top_concepts`).

    Attributes
    ----------
    layer : str
        The layer (module name).
    channel_relevance : np.ndarray
        (C,) relevance of every channel at the layer.
    concepts : list of Concept
        The top ``k`` channels by relevance, most relevant first.
    unconditioned : np.ndarray or None
        The plain LRP map (i, j, k), input channels summed (same rules, same pass).
    affine : np.ndarray
        4x4 voxel-to-world affine of the maps (the volume's; the model grid's for a tensor input).
    target, target_name : int, str
        The explained class.
    method : str
        The LRP rules (``lrp-epsilon-plus``, ..., or ``lrp`` for a designer configuration).
    provenance : dict
        The ``explain()`` record of the run (model, input, input space, parameters, versions).
    warnings : list of str
    atlas : str
        Name of the atlas used by :func:`name_concepts` ("" before naming).
    """

    layer: str
    channel_relevance: np.ndarray
    concepts: list[Concept]
    unconditioned: np.ndarray | None
    affine: np.ndarray
    target: int
    target_name: str
    method: str
    provenance: dict
    warnings: list[str] = field(default_factory=list)
    atlas: str = ""

    @property
    def layer_relevance(self) -> float:
        """The layer's total relevance (sum over all channels)."""
        return float(self.channel_relevance.sum())

    @property
    def shares(self) -> np.ndarray:
        """(C,) every channel's share of the layer's total relevance (sums to 1)."""
        total = self.layer_relevance
        return self.channel_relevance / total if abs(total) > 1e-12 else np.full_like(self.channel_relevance, np.nan)

    def concept(self, channel: int) -> Concept:
        for c in self.concepts:
            if c.channel == int(channel):
                return c
        raise KeyError(channel)

    def rows(self) -> list[dict]:
        """One dict per concept: rank, channel, relevance, share, map_sum, top region and its share."""
        out = []
        for c in self.concepts:
            region, rshare = c.top_region
            out.append({"rank": c.rank + 1, "channel": c.channel, "relevance": c.relevance, "share": c.share,
                        "map_sum": c.map_sum, "top_region": region, "region_share": rshare})
        return out


def concept_label(channel: int, region: str = "", share: float = float("nan")) -> str:
    """``channel 12: Hippocampus L, 61 % of its relevance``."""
    if not region:
        return f"channel {channel}"
    return f"channel {channel}: {region}, {100 * share:.0f} % of its relevance"


def _crp_params(layer, k, method, config, configuration, epsilon, gamma, batch, channels, unconditioned=True) -> dict:
    from .methods.crp import CRP_RULES

    rules = str(method or DEFAULT_RULES).strip().lower()
    if rules not in CRP_RULES:
        raise UserError(f"CRP runs on LRP rules; method {method!r} is not one of them (use one of "
                        f"{', '.join(CRP_RULES)}).")
    if int(k) < 1:
        raise UserError(f"k (the number of concepts) must be at least 1, got {k}.")
    params: dict[str, Any] = {"layer": layer, "top": int(k), "each": True, "rules": rules, "config": config,
                              "configuration": configuration, "epsilon": epsilon, "gamma": gamma, "batch": batch,
                              "unconditioned": bool(unconditioned), "channels": channels}
    return params


def top_concepts(
    model: Any,
    volume: Any,
    layer: str | None = None,
    target: int | str | None = None,
    k: int = DEFAULT_K,
    method: str = DEFAULT_RULES,
    *,
    config: Any = None,
    configuration: str | None = None,
    epsilon: float | None = None,
    gamma: float = 0.25,
    channels: str | Sequence[int] | None = None,
    batch: int = 8,
    unconditioned: bool = True,
    atlas: Any = None,
    atlas_threshold: float | None = None,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **explain_kwargs: Any,
) -> ConceptResult:
    """The ``k`` most relevant channels of ``layer`` for ``target``, each with its conditional heatmap.

    Parameters
    ----------
    model : LoadedModel or nn.Module
        A loaded model (:func:`~napari_xai.core.models.load_model`) with a :class:`Volume`; or an eager
        ``nn.Module`` with a model-grid tensor.
    volume : Volume or torch.Tensor
        The input. A :class:`~napari_xai.core.volumes.Volume` goes through the model's input space
        (orientation, spacing, shape, normalisation) exactly as in ``explain()`` and the maps come back on its
        grid; a tensor (1, C, D, H, W) is taken as the model's input and the maps stay on its grid.
    layer : str, optional
        Module name whose channels are the concepts; default: the last Conv layer with a 3D output.
    target : int or str, optional
        Class index or name; default the predicted class (for a tensor input: the highest score).
    k : int
        Number of concepts (the top ``k`` channels by relevance at the layer).
    method : str
        LRP rules: a composite (``lrp-epsilon-plus``, ``lrp-gamma``, ...), a Table 1 rule (``lrp-z-plus``, ...)
        or ``lrp`` with ``config`` (a designer configuration file or ``LrpConfig``; empty: γ | ε | 0).
    config, configuration, epsilon, gamma
        As the ``crp`` method's parameters (``napari-xai methods``).
    channels : str or sequence of int, optional
        Take these channels (e.g. ``"3,5,12"``, ``"all"``) instead of the top ``k``, in this order of relevance.
    batch : int
        Concept maps propagated together (see :func:`~napari_xai.core.lrp.conditional.conditional_pass`).
    unconditioned : bool
        Also give the plain LRP map of the same pass (:attr:`ConceptResult.unconditioned`; one more copy in the
        first batch).
    atlas : Atlas or str, optional
        Name each concept by the regions of this atlas (:func:`name_concepts`); needs a Volume input in the
        atlas's (MNI) space.
    atlas_threshold : float, optional
        Probabilistic atlases: the minimum probability of a region (0-1).
    progress, should_stop : callable, optional
        Progress ``(fraction, message)`` and cancellation (raises :class:`~napari_xai.core.errors.Cancelled`).
    **explain_kwargs
        Passed to ``explain()`` for a Volume (``normalization``, ``input_shape``, ``model_orientation``,
        ``segmentation``, ``mask``, ...).

    Returns
    -------
    ConceptResult
    """
    import torch

    if isinstance(channels, (list, tuple)):
        channels = ",".join(str(int(c)) for c in channels)
    params = _crp_params(layer, k, method, config, configuration, epsilon, gamma, batch, channels, unconditioned)
    if torch.is_tensor(volume):
        return _top_on_tensor(model, volume, target, params, progress, should_stop, explain_kwargs)
    from .explain import explain

    rel = explain(volume, model, "crp", params=params, target=target, progress=progress, should_stop=should_stop,
                  **explain_kwargs)
    used = rel.provenance["params"]
    unc = rel.intermediate.get("unconditioned")
    maps = {c: rel.intermediate[f"channel {c}"] for c in used["channels"]}
    res = _result(used, maps, unc, np.asarray(rel.affine, float), rel.target, rel.target_name, rel.provenance,
                  list(rel.warnings))
    if atlas is not None:
        name_concepts(res, atlas, threshold=atlas_threshold)
    return res


def _top_on_tensor(module, x, target, params, progress, should_stop, extra) -> ConceptResult:
    import torch

    from .methods.catalogue import get_method
    from .methods.registry import RunContext

    if extra:
        raise UserError(f"options {', '.join(sorted(extra))} apply to a Volume input, not to a model-grid tensor.")
    module = getattr(module, "module", module)
    if x.ndim != 5 or x.shape[0] != 1:
        raise UserError(f"a tensor input must have shape (1, C, D, H, W), got {tuple(x.shape)}.")
    from .methods._model import check_scores, model_session

    with model_session(module), torch.no_grad():
        scores = check_scores(module(x.detach().clone()))
    tgt = int(scores[0].argmax()) if target is None else int(target)
    check_scores(scores, tgt)
    ctx = RunContext(progress=progress, should_stop=should_stop)
    out = get_method("crp").run(module, x, tgt, params, ctx)
    used = dict(out.used)
    arrays = used.pop("_arrays", {}).get("intermediate", {})
    maps = {c: arrays[f"channel {c}"] for c in used["channels"]}
    record = {"kind": "concepts", "method": "crp", "params": {**get_method("crp").parse(params), **used},
              "target": {"index": tgt, "name": str(tgt)}}
    used["rules"] = params["rules"]
    return _result(used, maps, arrays.get("unconditioned"), np.eye(4), tgt, str(tgt), record, list(ctx.warnings))


def _result(used, maps, unc, affine, target, target_name, provenance, warnings) -> ConceptResult:
    per = np.asarray(used["channel_relevance"], dtype=np.float64)
    total = float(per.sum())
    concepts = []
    order = sorted(used["channels"], key=lambda c: -per[c])  # most relevant first (explicit channels too)
    for rank, c in enumerate(order):
        m = np.asarray(maps[c], dtype=np.float32)
        concepts.append(Concept(channel=int(c), relevance=float(per[c]),
                                share=float(per[c] / total) if abs(total) > 1e-12 else float("nan"),
                                rank=rank, map=m, map_sum=float(m.sum(dtype=np.float64))))
    return ConceptResult(layer=used["layer"], channel_relevance=per, concepts=concepts,
                         unconditioned=None if unc is None else np.asarray(unc, dtype=np.float32),
                         affine=affine, target=int(target), target_name=str(target_name), method=used["rules"],
                         provenance=provenance, warnings=warnings)


def name_concepts(result: ConceptResult, atlas: Any, threshold: float | None = None, top: int = 3) -> ConceptResult:
    """Give each concept the atlas regions holding most of its conditional map's positive relevance.

    The atlas is resampled onto the maps' grid through world coordinates (as everywhere:
    :func:`~napari_xai.core.atlas.atlas_on_grid`); each concept gets up to ``top`` regions as (name, share),
    share = the region's positive relevance / the map's whole positive relevance (inside and outside the
    atlas), so the shares of one concept add up to at most 1. Modifies and returns ``result``.
    """
    from .atlas import DEFAULT_PROB_THRESHOLD, atlas_on_grid, load_atlas, region_table

    if isinstance(atlas, str):
        atlas = load_atlas(atlas)
    if not result.concepts:
        return result
    shape = result.concepts[0].map.shape
    grid = atlas_on_grid(atlas, shape, result.affine,
                         threshold=DEFAULT_PROB_THRESHOLD if threshold is None else threshold)
    for c in result.concepts:
        table = region_table(grid, c.map, sort_by="pos_sum")
        total = table.total_pos
        c.regions = [(r["region"], r["pos_sum"] / total) for r in table.rows[:top] if total > 0 and r["pos_sum"] > 0]
    result.atlas = getattr(atlas, "name", str(atlas))
    return result


def mask_share(data: np.ndarray, mask: np.ndarray) -> float:
    """The share of ``data``'s positive relevance inside ``mask`` (0-1; nan without positive relevance)."""
    d = np.asarray(data, dtype=np.float64)
    m = np.asarray(mask, dtype=bool)
    if d.shape != m.shape:
        raise UserError(f"the mask has shape {m.shape}, the map {d.shape}; give a mask on the map's grid.")
    pos = np.maximum(d, 0.0)
    total = float(pos.sum())
    return float(pos[m].sum() / total) if total > 0 else float("nan")
