"""The model-parameter randomization test (Adebayo et al. 2018) of an attribution method; see docs/evaluation.md."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..errors import UserError
from ..provenance import now_iso
from ..methods.registry import RunContext

__all__ = ["INITS", "MODES", "SanityResult", "parametrised_layers", "randomization_test", "randomize_layer", "sanity_check", "weights_sha256"]

from .similarity import METRICS, MODES, TEST_NAME, MapComparer

INITS = ("normal", "kaiming")

# --------------------------------------------------------------------------- layers and randomization


def _module_of(model: Any):
    """The ``nn.Module`` of a LoadedModel, or the module itself."""
    return getattr(model, "module", model)


def parametrised_layers(module: Any, x) -> list:
    """The layers with parameters of their own, in execution order (:class:`~napari_xai.core.lrp.LayerInfo`).

    Traced by one forward pass of ``x`` (see :func:`~napari_xai.core.lrp.list_layers`);
    layers that did not run are left out.
    """
    from ..methods._model import require_hookable
    from ..lrp import list_layers

    require_hookable(module, "the randomization test", "it replaces the weights of named layers")
    layers = [layer for layer in list_layers(module, x) if layer.parameters > 0]
    if not layers:
        raise UserError("the model has no layers with weights of their own; there is nothing to randomize.")
    return layers


def weights_sha256(module: Any) -> str:
    """SHA-256 of a module's state (every parameter and buffer, by name, dtype, shape and bytes)."""
    import torch

    h = hashlib.sha256()
    for name, t in _module_of(module).state_dict().items():
        arr = t.detach().cpu().contiguous()
        h.update(f"{name}|{arr.dtype}|{tuple(arr.shape)}|".encode())
        h.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _fallback_std(t, mean: float) -> float:
    if t.dim() >= 2:
        return float(np.sqrt(2.0 / max(t[0].numel(), 1)))
    return 0.1 * max(abs(mean), 1.0)


def randomize_layer(layer: Any, seed: int, index: int, init: str = "normal") -> dict:
    """Replace the parameters of one layer (its own, not its children's) with seeded random values, in place.

    Returns what was drawn: per parameter its shape, mean and std of the
    distribution. See the module docstring for ``init``.
    """
    import torch

    if init not in INITS:
        raise UserError(f"unknown initialisation {init!r}; use one of {', '.join(INITS)}.")
    rng = np.random.default_rng([int(seed), int(index)])
    drawn = {}
    with torch.no_grad():
        for name, p in layer.named_parameters(recurse=False):
            orig = p.detach().double().cpu()
            mean = float(orig.mean()) if orig.numel() else 0.0
            std = float(orig.std(unbiased=False)) if orig.numel() > 1 else 0.0
            if init == "kaiming" and p.dim() >= 2:
                mean, std = 0.0, _fallback_std(p, 0.0)
            elif std == 0.0 or not np.isfinite(std):
                std = _fallback_std(p, mean)
            new = rng.standard_normal(tuple(p.shape)) * std + mean
            p.copy_(torch.from_numpy(new).to(dtype=p.dtype, device=p.device))
            drawn[name] = {"shape": list(p.shape), "mean": mean, "std": std}
    return drawn


@dataclass
class SanityResult:
    """The randomization test of one map.

    Attributes
    ----------
    rows : list of dict
        Step 0 is the original model; then one row per randomization step:
        ``step``, ``layer`` (randomized at this step), ``type``, ``randomized``
        (every layer random in this model), the metrics of :func:`compare_maps`
        and, through :func:`sanity_check`, the ``predicted`` class, the
        target's probability (``target_probability``) and its score
        (``target_score``: the logit, or a segmentation network's masked sum
        of logits).
    layers : list of str
        The parametrised layers in the order they are randomized (output end first).
    maps : list of np.ndarray or None
        The map of every step (index 0: the original), when asked to keep them.
    step_provenance : list of dict or None
        With :func:`sanity_check` and ``keep_maps``, each step's relevance record.
    provenance : dict
        Test, mode, seed, initialisation, layers, method, parameters, target, model hashes.
    original : Relevance or None
        With :func:`sanity_check`: the explanation by the intact model (affine, segmentation, mask...).
    warnings : list of str
        Warnings of every step's explanation.
    """

    rows: list[dict]
    layers: list[str]
    provenance: dict
    maps: list[np.ndarray] | None = None
    step_provenance: list[dict] | None = None
    original: Any = None
    warnings: list[str] = field(default_factory=list)


def _copy_model(model: Any) -> Any:
    """A deep copy of a LoadedModel's module (wrapped in a new LoadedModel), or of a bare module."""
    module = _module_of(model)
    clone = copy.deepcopy(module)
    if module is model:
        return clone
    return dataclasses.replace(model, module=clone)


def randomization_test(
    model: Any,
    map_fn: Callable[[Any], Any],
    x,
    *,
    mode: str = "cascading",
    seed: int = 0,
    last: int | None = None,
    init: str = "normal",
    top_fraction: float = 0.05,
    keep_maps: bool = False,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    pass_progress: bool = False,
) -> SanityResult:
    """Randomize ``model``'s parametrised layers (on a deep copy) and compare ``map_fn``'s maps with the original.

    Parameters
    ----------
    model : LoadedModel or nn.Module
        Never modified: every step works on a copy.
    map_fn : callable
        ``map_fn(model_copy) -> array`` (or ``(array, info)`` with a dict of
        extra row entries); it gets the same kind of object as ``model``.
        Called once on the intact copy, then once per step.
    x : torch.Tensor
        An input of the model (1, C, D, H, W) for tracing the execution order.
    mode : {"cascading", "independent"}
    seed : int
        Seed of the re-initialisation (non-negative).
    last : int, optional
        Randomize only the last ``last`` layers (in execution order).
    init : {"normal", "kaiming"}
    top_fraction : float
        Share of voxels for :func:`top_overlap`.
    keep_maps : bool
        Keep every step's map in the result.
    progress, should_stop : callable, optional
        Progress ``(fraction, message)`` over the whole test, and cancellation.
    pass_progress : bool
        Call ``map_fn(model_copy, step_progress)``: ``step_progress(fraction, message)``
        reports progress within one map (e.g. :func:`explain`'s ``progress``).
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if init not in INITS:
        raise UserError(f"unknown initialisation {init!r}; use one of {', '.join(INITS)}.")
    if int(seed) < 0:
        raise UserError(f"the seed must be a non-negative integer, got {seed}.")
    if last is not None and int(last) < 1:
        raise UserError(f"the number of layers to randomize must be at least 1, got {last}.")
    if not 0 < top_fraction <= 1:
        raise UserError(f"the top fraction must be in (0, 1], got {top_fraction}.")
    ctx = RunContext(progress=progress, should_stop=should_stop)
    work = _copy_model(model)
    module = _module_of(work)
    ctx.step(0.0, "listing layers")
    layers = parametrised_layers(module, x)
    chosen = list(reversed(layers))[: int(last)] if last is not None else list(reversed(layers))
    modules = dict(module.named_modules())
    n = len(chosen) + 1

    def run(k: int, label: str):
        head = f"{k}/{n - 1} {label}"
        ctx.step(k / n, head)

        def step_progress(f: float, msg: str) -> None:
            ctx.step((k + min(max(f, 0.0), 1.0)) / n, f"{head}: {msg}")

        out = map_fn(work, step_progress) if pass_progress else map_fn(work)
        info: dict = {}
        if isinstance(out, tuple):
            out, info = out
        return np.asarray(out), dict(info or {})

    original, info0 = run(0, "original model")
    maps = [original] if keep_maps else None
    comparer = MapComparer(original, top_fraction)
    rows = [{"step": 0, "layer": "", "type": "", "randomized": [], **comparer.compare(original), **info0}]
    drawn: dict = {}
    done: list[str] = []
    for k, layer in enumerate(chosen, start=1):
        target = modules[layer.name]
        saved = None
        if mode == "independent":
            saved = {name: p.detach().clone() for name, p in target.named_parameters(recurse=False)}
            done = [layer.name]
        else:
            done = done + [layer.name]
        drawn[layer.name] = randomize_layer(target, seed, layer.index, init)
        try:
            m, info = run(k, f"randomized {layer.name}")
        finally:
            if saved is not None:
                import torch

                with torch.no_grad():
                    for name, p in target.named_parameters(recurse=False):
                        p.copy_(saved[name])
        if maps is not None:
            maps.append(m)
        rows.append({"step": k, "layer": layer.name, "type": layer.type, "randomized": list(done),
                     **comparer.compare(m), **info})
    ctx.step(1.0, f"randomized {len(chosen)} layer(s)")
    provenance = {
        "kind": "sanity-check",
        "created": now_iso(),
        "test": TEST_NAME,
        "mode": mode,
        "seed": int(seed),
        "init": init,
        "layers": [layer.name for layer in chosen],
        "layers_in_model": len(layers),
        "drawn": drawn,
        "metrics": {"compared": "channel-summed maps", "spearman": "rank correlation of the maps",
                    "spearman_abs": "rank correlation of |map|",
                    "ssim": "SSIM of |map|/max|map|, Gaussian window sigma 1.5 voxels, data range 1",
                    "top_overlap": f"share of the original's top {top_fraction:g} voxels by |map| that stay on top",
                    "top_fraction": top_fraction},
        "model": {"weights_sha256": weights_sha256(model)},
    }
    return SanityResult(rows=rows, layers=[layer.name for layer in chosen], provenance=provenance, maps=maps)


def _target_score(model: Any, x, rel: Any, output_index: int = 0) -> float:
    """The explained class's score in the model that made ``rel``: its logit, or for a segmentation
    network the sum of its logits inside the target mask (as :func:`explain` scores it)."""
    import torch

    from ..explain import predict_cached
    from ..segmentation import pick_output

    seg = rel.provenance.get("segmentation")
    if seg is not None:
        return float(seg["score"])
    out = pick_output(predict_cached(_module_of(model), x), output_index)  # cached: explain just ran it
    if not torch.is_tensor(out):
        return float("nan")
    return float(out.detach().reshape(out.shape[0], -1)[0, int(rel.target)])


def sanity_check(
    volume,
    model: Any,
    method: str,
    params: dict | None = None,
    target: int | str | None = None,
    *,
    mode: str = "cascading",
    seed: int = 0,
    last: int | None = None,
    init: str = "normal",
    top_fraction: float = 0.05,
    keep_maps: bool = False,
    progress: Callable[[float, str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **explain_kwargs,
) -> SanityResult:
    """The randomization test of a registry ``method`` on ``volume``, through :func:`~napari_xai.core.explain.explain`.

    Every step explains the **same class** as the original map (the
    randomized model may predict another), and for segmentation models the
    same target mask (the original's, so it does not follow the randomized
    prediction). ``seed`` also seeds stochastic methods (SmoothGrad noise is
    the same at every step). Other arguments as :func:`randomization_test`;
    ``explain_kwargs`` go to every :func:`explain` call (``normalization``,
    ``input_shape``, ``segmentation``, ``mask``, ``point``, ``output_index``).
    """
    from ..methods._model import require_hookable
    from ..explain import explain, prepare_input, same_target_kwargs
    from ..methods.catalogue import get_method

    entry = get_method(method)
    entry.parse(params)  # a bad parameter fails before any work
    require_hookable(model, "the randomization test", "it replaces the weights of named layers")
    x, *_ = prepare_input(volume, model, explain_kwargs.get("normalization"), explain_kwargs.get("input_shape"),
                          model_orientation=explain_kwargs.get("model_orientation"),
                          model_spacing=explain_kwargs.get("model_spacing"))
    fixed: dict = {"target": target, "kwargs": dict(explain_kwargs)}
    records: list[dict] = []
    warnings: list[str] = []
    seen: set[str] = set()

    def map_fn(work, step_progress):
        rel = explain(volume, work, entry.name, params=params, target=fixed["target"], seed=seed,
                      progress=step_progress, should_stop=should_stop, **fixed["kwargs"])
        if not records:
            fixed["target"] = rel.target
            fixed["kwargs"] = same_target_kwargs(rel, fixed["kwargs"])
            fixed["first"] = rel
        for w in rel.warnings:  # each message once, naming the first randomized step that raised it
            if w not in seen:
                seen.add(w)
                warnings.append(f"step {len(records)} (randomized model): {w}" if records else w)
        records.append(rel.provenance if keep_maps else {})
        info = {"predicted": rel.provenance["prediction"]["name"],
                "target_probability": float(rel.probabilities.get(rel.target_name, float("nan"))),
                "target_score": _target_score(work, x, rel, int(fixed["kwargs"].get("output_index", 0)))}
        return rel.data, info

    result = randomization_test(model, map_fn, x, mode=mode, seed=seed, last=last, init=init,
                                top_fraction=top_fraction, keep_maps=keep_maps, progress=progress,
                                should_stop=should_stop, pass_progress=True)
    first = fixed["first"]
    for rec, row in zip(records, result.rows):
        if rec:
            rec["sanity"] = {"test": TEST_NAME, "mode": mode, "seed": int(seed), "init": init, "step": row["step"],
                             "randomized_layers": row["randomized"],
                             "weights": "original" if not row["randomized"] else "randomized (see randomized_layers)",
                             **{key: row[key] for key in METRICS}}
    prov = first.provenance
    result.provenance.update({
        "method": first.method,
        "params": prov["params"],
        "target": prov["target"],
        "prediction": prov["prediction"],
        "input": prov["input"],
        "grid": prov["grid"],
        "model": {**{k: prov["model"][k] for k in ("name", "source", "kind", "sha256")}, **result.provenance["model"]},
        "explain_seed": int(seed),
        "versions": prov["versions"],
    })
    if "segmentation" in prov:
        result.provenance["segmentation"] = prov["segmentation"]
    result.step_provenance = records if keep_maps else None
    result.original = first
    result.warnings = warnings
    return result

