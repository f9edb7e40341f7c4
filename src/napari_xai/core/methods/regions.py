"""Region-level attribution: region ablation, LIME and KernelSHAP over cubes or atlas regions.

Features, coalitions and the three estimators are defined in docs/methods.md ("Region methods"); the fits are
numpy least squares (no scikit-learn, which Captum's LIME and KernelSHAP use).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..lazy import torch
from ..errors import UserError
from ._model import BASELINES, ScoreFn, make_baseline
from .registry import MethodOutput, Param, RunContext, entry


MAX_FEATURES = 4096


def _builtin_atlases() -> tuple[str, ...]:
    from ..atlas import builtin_atlas_names

    return tuple(builtin_atlas_names())


def feature_mask(shape: tuple[int, ...], regions: str, size: int, ctx: RunContext | None) -> tuple[np.ndarray, list[str]]:
    """Feature index (D, H, W) in 0..M-1 on the model grid, and the feature names."""
    shape = tuple(int(s) for s in shape)
    if regions == "cubes":
        from ..geometry import cube_labels

        size = int(size)
        labels, nb = cube_labels(shape, size)
        names = [f"cube {a * size}:{b * size}:{c * size}"
                 for a in range(nb[0]) for b in range(nb[1]) for c in range(nb[2])]
        return labels, names
    from ..atlas import atlas_on_grid, load_atlas

    grid_affine = getattr(ctx, "grid_affine", None) if ctx is not None else None
    if grid_affine is None:
        raise UserError(f"regions={regions!r} needs the input's position in space (its affine); run the method "
                        "through explain(), the CLI or the widget.")
    atlas = load_atlas(regions)
    grid = atlas_on_grid(atlas, shape, grid_affine)
    values, dense = np.unique(np.asarray(grid.labels), return_inverse=True)
    names = ["outside atlas" if int(v) == 0 else atlas.name_of(int(v)) for v in values]
    if len(values) < 2:
        raise UserError(f"the {atlas.name} atlas has no region on this input; regions from an atlas need an input "
                        "in MNI space (use regions=cubes otherwise).")
    return dense.reshape(shape).astype(np.int64), names


@dataclass
class _Features:
    """The interpretable features of one input: a label per voxel, their names, the baseline, what was used."""

    x: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    base: torch.Tensor
    used: dict
    ppe: int  # perturbed inputs per forward pass

    def scores(self, f: ScoreFn, coalitions: np.ndarray, target: int) -> np.ndarray:
        return _scores(f, self.x, self.base, self.labels, coalitions, target, self.ppe)

    def output(self, values: np.ndarray, extra: dict) -> MethodOutput:
        """The map (each feature's value spread over its voxels) and the record of the top features."""
        rec = _record(self.names, values, self.labels, {**self.used, **extra})
        return MethodOutput(_to_map(values, self.labels, self.x), rec)


def _features(x: torch.Tensor, params: dict, ctx: RunContext) -> _Features:
    labels, names = feature_mask(tuple(x.shape[2:]), params["regions"], params["size"], ctx)
    if len(names) > MAX_FEATURES:
        raise UserError(f"{len(names)} features are too many (at most {MAX_FEATURES}); use larger cubes (size).")
    base, used = make_baseline(x.detach(), params["baseline"], None)
    return _Features(x, torch.from_numpy(labels).to(x.device), names, base, used, int(params["perturbations_per_eval"]))


def _scores(f: ScoreFn, x: torch.Tensor, base: torch.Tensor, labels: torch.Tensor, coalitions: np.ndarray,
            target: int, ppe: int) -> np.ndarray:
    """Target score for each coalition row (1 = keep the feature, 0 = baseline)."""
    out = []
    with torch.no_grad():
        for start in range(0, len(coalitions), ppe):
            z = torch.from_numpy(coalitions[start:start + ppe].astype(np.float32)).to(x.device)
            keep = z[:, labels][:, None]  # (n, 1, D, H, W)
            batch = x * keep + base * (1 - keep)
            out.append(f(batch)[:, int(target)].detach().double().cpu().numpy())
    return np.concatenate(out)


def _to_map(values: np.ndarray, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Spread each feature's value evenly over its voxels (and channels): the map sums to the value per feature."""
    counts = np.bincount(labels.cpu().numpy().ravel(), minlength=len(values)).astype(np.float64)
    density = np.asarray(values, dtype=np.float64) / np.maximum(counts, 1) / x.shape[1]
    v = torch.from_numpy(density.astype(np.float32)).to(x.device)
    return v[labels][None, None].expand(1, x.shape[1], *x.shape[2:]).clone()


def _record(names: list[str], values: np.ndarray, labels: torch.Tensor, extra: dict) -> dict:
    counts = np.bincount(labels.cpu().numpy().ravel(), minlength=len(names))
    order = np.argsort(-np.abs(values))
    top = [{"feature": names[i], "value": float(values[i]), "voxels": int(counts[i])} for i in order[:50]]
    return {"n_features": len(names), "features": top, **extra}


def _common(samples: bool) -> tuple[Param, ...]:
    out = (
        Param("regions", str, "cubes", "Interpretable features: 'cubes' of 'size' model-grid voxels, or an atlas "
              "(the input must be in MNI space; voxels outside the atlas form one more feature).",
              choices=("cubes", *_builtin_atlases())),
        Param("size", int, 8, "Edge of the cubes in model-grid voxels (regions=cubes).", minimum=1, maximum=256),
        Param("baseline", str, "zero", "What a removed feature becomes: zeros, each channel's minimum, or a strong blur.",
              choices=BASELINES),
        Param("perturbations_per_eval", int, 8, "Perturbed inputs per forward pass (memory vs speed).", minimum=1,
              maximum=256),
    )
    if samples:
        out += (Param("samples", int, 200, "Coalitions to evaluate (forward passes).", minimum=4, maximum=100000),
                Param("seed", int, 0, "Seed of the random coalitions.", minimum=0))
    return out


@entry("region-ablation", "perturbation",
       "Score drop when one region (cube or atlas region) is set to the baseline; one pass per region.",
       *_common(False), reference="Zeiler & Fergus 2014 (occlusion), per region", multiplies_input=True)
def _region_ablation(model, x, target, params, ctx) -> MethodOutput:
    """Occlusion by region: f(x) minus f(x with one feature set to the baseline), per feature."""
    ctx = ctx if ctx is not None else RunContext()
    feats = _features(x, params, ctx)
    m = len(feats.names)
    f = ScoreFn(model, ctx, target, 1 + math.ceil(m / feats.ppe), "region ablation")
    coalitions = np.ones((m + 1, m), dtype=np.uint8)
    coalitions[np.arange(1, m + 1), np.arange(m)] = 0
    s = feats.scores(f, coalitions, target)
    return feats.output(s[0] - s[1:], {"forward_passes": f.calls})


def _weighted_fit(z: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Coefficients c of y ~ b + z c, weighted least squares with a tiny ridge on c (not on b)."""
    n, m = z.shape
    a = np.hstack([np.ones((n, 1)), z.astype(np.float64)])
    sw = np.sqrt(np.asarray(w, dtype=np.float64))[:, None]
    reg = math.sqrt(ridge * max(float(np.sum(w)), 1.0)) * np.eye(m + 1)[1:]
    coef, *_ = np.linalg.lstsq(np.vstack([a * sw, reg]), np.concatenate([y * sw[:, 0], np.zeros(m)]), rcond=None)
    return coef[1:]


@entry("lime", "perturbation",
       "LIME: weighted linear surrogate over random region coalitions (cubes or atlas regions).",
       *_common(True), Param("kernel_width", float, 0.25, "Width of the exponential kernel on the cosine distance to "
                             "the input.", minimum=1e-3, maximum=10.0),
       reference="Ribeiro, Singh & Guestrin 2016, arXiv:1602.04938", multiplies_input=True)
def _lime(model, x, target, params, ctx) -> MethodOutput:
    """LIME over region features: a weighted linear surrogate fitted to random coalitions."""
    ctx = ctx if ctx is not None else RunContext()
    feats = _features(x, params, ctx)
    m, n, rng = len(feats.names), int(params["samples"]), np.random.default_rng(int(params["seed"]))
    z = (rng.random((n, m)) < 0.5).astype(np.uint8)
    z[0] = 1  # the input itself
    f = ScoreFn(model, ctx, target, math.ceil(n / feats.ppe), "LIME")
    y = feats.scores(f, z, target)
    kept = z.sum(axis=1)
    d = 1.0 - np.sqrt(kept / m)  # cosine distance to the all-ones coalition
    w = np.exp(-(d ** 2) / float(params["kernel_width"]) ** 2)
    values = _weighted_fit(z, y, w)
    if n < 2 * m:
        ctx.warn(f"lime: {n} samples for {m} features; the surrogate is underdetermined (use samples >= {2 * m} "
                 "or larger regions).")
    return feats.output(values, {"forward_passes": f.calls})


def _shapley_coalitions(m: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bool]:
    """Coalitions (without the empty and the full one) and their regression weights; True if exhaustive."""
    if m <= 20 and 2 ** m - 2 <= n:
        z = ((np.arange(1, 2 ** m - 1)[:, None] >> np.arange(m)[None, :]) & 1).astype(np.uint8)
        k = z.sum(axis=1)
        w = (m - 1) / (np.array([math.comb(m, int(s)) for s in k], dtype=float) * k * (m - k))
        return z, w, True
    sizes = np.arange(1, m)
    p = (m - 1) / (sizes * (m - sizes))
    p = p / p.sum()
    k = rng.choice(sizes, size=n, p=p)
    z = np.zeros((n, m), dtype=np.uint8)
    for i, s in enumerate(k):
        z[i, rng.choice(m, size=int(s), replace=False)] = 1
    return z, np.ones(n), False  # drawn from the kernel: equal weights


@entry("kernel-shap", "perturbation",
       "KernelSHAP: Shapley values of regions (exact when all coalitions fit in 'samples').",
       *_common(True), reference="Lundberg & Lee 2017, arXiv:1705.07874", multiplies_input=True)
def _kernel_shap(model, x, target, params, ctx) -> MethodOutput:
    """KernelSHAP over region features: Shapley values of the target score (exact for few features)."""
    ctx = ctx if ctx is not None else RunContext()
    feats = _features(x, params, ctx)
    m, n, rng = len(feats.names), int(params["samples"]), np.random.default_rng(int(params["seed"]))
    if m < 2:
        raise UserError("kernel-shap needs at least two features; use smaller cubes (size).")
    z, w, exact = _shapley_coalitions(m, n, rng)
    f = ScoreFn(model, ctx, target, math.ceil((len(z) + 2) / feats.ppe), "KernelSHAP")
    ends = feats.scores(f, np.stack([np.ones(m, np.uint8), np.zeros(m, np.uint8)]), target)
    f_full, f_empty = float(ends[0]), float(ends[1])
    y = feats.scores(f, z, target) - f_empty
    delta = f_full - f_empty
    # efficiency constraint: phi_last = delta - sum(phi_others); fit the other m - 1 by weighted least squares
    zl = z[:, -1:].astype(np.float64)
    a = z[:, :-1].astype(np.float64) - zl
    b = y - zl[:, 0] * delta
    sw = np.sqrt(w)[:, None]
    phi_rest, *_ = np.linalg.lstsq(a * sw, b * sw[:, 0], rcond=None)
    values = np.append(phi_rest, delta - phi_rest.sum())
    if not exact and n < 2 * m:
        ctx.warn(f"kernel-shap: {n} sampled coalitions for {m} features; Shapley values are rough (use samples >= "
                 f"{2 * m} or larger regions).")
    return feats.output(values, {"forward_passes": f.calls, "exact": exact, "score_input": f_full,
                                 "score_baseline": f_empty})
