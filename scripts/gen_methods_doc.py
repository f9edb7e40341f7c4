"""Generate docs/methods.md from the method registry.

Usage::

    python scripts/gen_methods_doc.py            # write docs/methods.md
    python scripts/gen_methods_doc.py --check    # exit 1 if docs/methods.md is out of date

The per-method text comes from the registry entries (summary, reference,
parameters) and from the docstrings of the method functions, so the reference
cannot drift from the code.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "methods.md"

INTRO = """\
# Attribution methods

This page is generated from the method registry by `scripts/gen_methods_doc.py`;
do not edit it by hand. `napari-xai methods` prints the same list.

## Conventions

- **One call for every method**: `fn(model, x, target, params, ctx) -> MethodOutput`.
  `x` is the (1, C, D, H, W) input on the model grid (after resampling and
  normalisation), `target` a class index (the pipeline resolves class names and
  "predicted"), and the relevance is (1, C, D, H, W) on the same grid; the
  pipeline maps it back to the input volume's voxel grid and affine.
- **Sign**: signed methods keep negative evidence (voxels that lower the target
  score). Saliency is signed by default (`absolute=false`); this keeps the
  direction of the effect and lets the viewer show positive and negative layers.
  Grad-CAM with `relu_attributions=true` is non-negative.
- **Units**: Input×Gradient, Integrated Gradients, DeepLift, GradientSHAP,
  occlusion and LRP are in units of the target score (they add up to about the
  score or a score difference); saliency and SmoothGrad are score per intensity
  unit; Grad-CAM and Grad-CAM++ are score on the layer's grid, upsampled.
- **Channels**: multi-channel inputs get one map per channel. Grad-CAM and
  Grad-CAM++ have one map per layer; it is replicated per channel. Occlusion
  hides all channels at once unless `per_channel=true`.
- **Parameters** are given as `--param KEY=VALUE` on the command line (repeat
  it) or in the widget. `ints3` values are three integers in voxels, `8,8,8`
  (or `8x8x8`), or one integer for all axes. `layer` values name a module of
  the model (as in `named_modules`); once a model ran, the Explain widget lists
  the valid ones and names the one the method uses when it is empty. An empty
  default means "chosen from the input" and the chosen value is recorded in the
  provenance sidecar.
- **TorchScript models** support the methods marked "no" under *eager module*.
  The others hook into layers and need an eager `nn.Module` (a `.py` file with
  weights, or a MONAI bundle); with TorchScript they stop with a one-line error.
- **Silent degradation is flagged**: where a method would quietly become
  something else (guided backprop without `nn.ReLU` modules, relevance that is
  not conserved in LRP, an integrated-gradients sum far from f(x) − f(baseline),
  DeepLift through nonlinear modules it has no rule for, such as PReLU)
  the result carries a warning, shown in the widget and written to the sidecar.
- **Progress and cancel**: methods with loops report progress at each forward
  pass, and Cancel stops them there. Hooks, canonisers and temporary changes
  (eval mode, `inplace` flags, merged BatchNorm) are undone even on cancel.
"""


LRP_INTRO = """\
One engine (``napari_xai.core.lrp``) runs every LRP method. Each composite
(``COMPOSITES``) names the rule for the first layer(s), for convolutions and
for dense (``nn.Linear``) layers; each Table 1 rule method applies one rule of
the unified rule to every Conv/Linear layer; ``lrp`` takes a configuration
from the LRP designer. The rest is shared by all of them:

* **BatchNorm** that directly follows a Conv/Linear (found by tensor identity in
  a traced forward pass, so MONAI's ``Convolution -> ADN`` blocks count too) is
  merged into it with Zennit's ``NamedMergeBatchNorm``. The merge is checked
  once per model and input shape: if the merged model's output differs, no
  BatchNorm is merged and a warning says so. The merge is undone afterwards.
* **Normalisation layers** that remain (InstanceNorm, GroupNorm, LayerNorm,
  un-merged BatchNorm) and **activations** (ReLU, PReLU, LeakyReLU, ELU, ...)
  pass relevance through unchanged (Zennit's ``Pass`` rule). Without a rule the
  gradient of an InstanceNorm (division by the std) rescales relevance.
* **Residual additions** ``a + b`` of two activations (functional, as in
  MONAI's ``ResidualUnit`` and ``ResNetBlock``) are caught during the forward
  pass with a ``TorchFunctionMode`` and get the sum rule
  ``R_a = a / (a + b) * R``, ``R_b = b / (a + b) * R`` (Zennit's ``Norm`` rule
  for its ``Sum`` layer). The plain gradient would hand the full relevance to
  both branches, doubling it at every block.
* **Gates** ``x * g`` where ``g`` broadcasts over ``x`` (squeeze-and-excitation
  in MONAI's SEResNet, attention gates) are caught the same way: the gate is
  treated as a weight, so all relevance stays with the signal ``x`` and none
  flows into the gate branch (signal-take-all).
* **Average pooling, upsampling** and the masked sum of a segmentation target
  (:class:`~napari_xai.core.segmentation.MaskedSum`) get the sum rule (Zennit's ``Norm``, which keeps relevance that reaches all-zero windows);
  max pooling, reshapes, padding and concatenations (U-Net skips) pass the
  gradient, which conserves relevance.
* A **layer type without a rule** (a module with parameters that is neither a
  Conv/Linear, a normalisation nor an activation) is a :class:`UserError` that
  names the layer and suggests a rule, instead of a silently wrong map.

The output relevance is the target logit (a one-hot times the score), so with
a conserving rule set and no biases the relevance sums to the logit. After
each run one conservation report compares the sum with the logit (recorded
as ``conservation``, ``relevance_sum`` and ``output_relevance``) and warns
about a non-finite result; when every rule should conserve (α − β = 1,
ε ≤ 1e-3, no filter), about a ratio more than 10 % off, naming biases or a
layer without a rule as the cause; otherwise about a sum more than twice the
logit (relevance "explodes") or less than 5 % of it (biases and epsilon
absorbed it).

Hooks and canonisers are removed after every call (Zennit composite context);
the user's model is left as it was.
"""

CHECKS = """\
## What the tests check

`tests/test_attribution.py`, `tests/test_more_methods.py` and `tests/test_lrp.py`
check the methods against facts that do not come from our code:

- saliency and Input×Gradient equal the analytic gradient of a linear model;
- integrated gradients sums to f(x) − f(baseline) within 1 % on a MONAI
  DenseNet (zero baseline) and on a small CNN (min and blur baselines); the blur
  baseline matches `scipy.ndimage.gaussian_filter`;
- SmoothGrad on f = Σ relu(x) equals the Gaussian CDF Φ(x / σ), with
  σ = `noise` × intensity range;
- Grad-CAM equals the hand-computed ReLU(Σ_k α_k A_k), trilinearly upsampled,
  on a conv + global-mean + linear network (α_k = w_k / N);
- occlusion finds the voxel block a toy network is built to read, equals the
  hand-computed mean score drop over covering windows (with the end-aligned
  window), and equals Captum's `Occlusion` where its windows tile the volume;
- DeepLift equals (x − b)·w computed with numpy on linear models and
  w·(relu(x) − relu(b)) at a ReLU; it sums to f(x) − f(baseline) within 0.01 %
  on ReLU/MaxPool networks (also with overlapping pool windows, two rule
  modules in a row and a MONAI DenseNet, for zero, min and blur baselines,
  where Captum 0.9's own DeepLift can be 50 % off), equals Captum's DeepLift
  where that is right, and on a PReLU network warns, naming the modules, and
  equals Input×Gradient (what the warning says); a ReLU module used twice is a
  one-line error;
- GradientSHAP on a linear model equals (x − b)·w exactly with one baseline
  and no noise, and (x − E[b])·w within 5 standard errors for uniform baselines
  and input noise; the same torch seed gives the same result and numpy's
  global generator is left as it was;
- Grad-CAM++ equals MONAI's `GradCAMpp` (times exp(score), and after MONAI's
  inverting normaliser) where the layer's gradient is constant, the paper's
  formula evaluated with numpy where it is not (there MONAI differs), and a
  one-channel case by hand (zero map for a negative class weight);
- guided backprop / deconvolution on a PReLU network warn and equal the plain
  gradient; TorchScript with LRP / guided / CAM methods and bad Grad-CAM
  layers are one-line errors;
- LRP-ε with ε → 0 equals Input×Gradient on a bias-free ReLU network
  (correlation > 0.999); all six presets conserve relevance (sum = target logit
  within 0.1 %) on that network; with BatchNorm3d merged, LRP-ε conserves and
  equals a hand-folded network; through a MONAI `Classifier` with InstanceNorm,
  PReLU and residual units the sum stays within 1 % of the logit, while without
  the sum rule it grows 8-fold and without the Pass rule for InstanceNorm it
  explodes;
- after every call (and after a cancel) the model has no hooks, its parameters,
  `inplace` flags and training mode are unchanged.
"""


REGIONS_INTRO = """\
### Region methods: what region-ablation, lime and kernel-shap share

The input is cut into interpretable features, either cubes of ``size`` voxels
on the model grid or the regions of an atlas (for inputs in MNI space; every
voxel outside the atlas forms one more feature, "outside atlas"). A coalition
``z`` keeps the features with ``z_m = 1`` and sets the others to the baseline.
A feature's value is spread evenly over its voxels (and channels), so the map
is piecewise constant and sums over a feature to that feature's value (for
KernelSHAP the whole map sums to ``f(x) - f(baseline)``); the largest 50
per-feature values are recorded in the provenance (``features``).

* **region-ablation**: ``R_m = f(x) - f(x without feature m)`` (occlusion by
  region, one forward pass per feature).
* **lime** (Ribeiro et al. 2016): random coalitions (each feature kept with
  probability 1/2), weighted by ``exp(-d^2 / width^2)`` with ``d`` the cosine
  distance between ``z`` and the all-ones coalition, and a weighted linear fit
  ``f(z) ~ b + sum_m c_m z_m`` (a tiny ridge keeps it well posed); ``R_m = c_m``.
* **kernel-shap** (Lundberg & Lee 2017): the Shapley-kernel weighted linear fit
  with the efficiency constraint ``sum_m phi_m = f(x) - f(baseline)``. With at
  most ``samples`` coalitions in all (``2^M - 2 <= samples``) every coalition is
  evaluated and the result is the exact Shapley value; otherwise coalitions are
  drawn from the Shapley kernel.

All three are written here rather than taken from Captum, whose LIME and
KernelSHAP fit their surrogate with scikit-learn by default (not a dependency
of napari-xai); the fits are a few lines of numpy least squares.
"""


def _type_name(p) -> str:
    if p.type == "ints3":
        return "ints3"
    return getattr(p.type, "__name__", str(p.type))


def _default(p) -> str:
    if p.default is None:
        return "(from input)"
    if isinstance(p.default, bool):
        return str(p.default).lower()
    return f"`{p.default}`"


def _range(p) -> str:
    if p.choices:
        return " \\| ".join(f"`{c}`" for c in p.choices)
    lo = "" if p.minimum is None else f"≥ {p.minimum:g}"
    hi = "" if p.maximum is None else f"≤ {p.maximum:g}"
    return ", ".join(v for v in (lo, hi) if v)


def _body(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    lines = doc.splitlines()
    return "\n".join(lines[1:]).strip() if len(lines) > 1 else ""


def render() -> str:
    from napari_xai.core import lrp
    from napari_xai.core.methods.catalogue import all_methods

    methods = all_methods()
    out = [INTRO, "## Overview\n", "| method | family | signed | eager module | parameters |", "|---|---|---|---|---|"]
    for m in methods:
        params = ", ".join(f"`{p.name}`" for p in m.params) or "none"
        out.append(
            f"| [`{m.name}`](#{m.name}) | {m.family} | {'yes' if m.signed else 'no'} | "
            f"{'needed' if m.needs_module else 'no'} | {params} |"
        )
    out.append("")
    family_titles = {"gradient": "Gradient family", "cam": "CAM family", "perturbation": "Perturbation", "lrp": "LRP (Zennit)",
                     "attention": "Trainable attention", "concepts": "Concepts (CRP)"}
    seen: set[str] = set()
    for m in methods:
        if m.family not in seen:
            seen.add(m.family)
            out.append(f"## {family_titles.get(m.family, m.family)}\n")
            if m.family == "lrp":
                out.append(LRP_INTRO)
                out.append("| composite | first layer(s) | convolutions | dense layers |")
                out.append("|---|---|---|---|")
                for c in lrp.COMPOSITES.values():
                    out.append(f"| `{c.name}` | {c.first or c.conv} | {c.conv} | {c.dense} |")
                out.append(
                    "\nThe first layers are the Conv/Linear layers that receive the raw input (found in a traced "
                    "forward pass). The z-box bounds are the input's per-channel minimum and maximum. The "
                    "`epsilon` is absolute, in the units of each layer's pre-activations (as in Zennit and Captum). "
                    "The `lrp-epsilon` default 0.25 damps weak, noisy contributions; it is Montavon et al.'s "
                    "(2019) ε = 0.25·std for unit-scale activations, as in BatchNorm-merged networks. If it absorbs "
                    "most of the score a warning says so. `epsilon` close to 0 gives LRP-0, which equals "
                    "Input×Gradient on bias-free ReLU networks. In the other composites `epsilon` (default 1e-6, "
                    "Zennit's default) only acts on dense layers. `generalised-gamma` is Zennit's γ rule (units "
                    "with a negative output share over negative contributions); `lrp-gamma-rule` is Table 1's LRP-γ.\n"
                )
                out.append("Each rule of Table 1 of Huang et al. (the unified rule's presets, also the rule names of LRP "
                           "configurations) is a method that applies it to every Conv/Linear layer:\n")
                out.append("| method | Table 1 rule | formula | parameters |")
                out.append("|---|---|---|---|")
                for p in lrp.PRESETS.values():
                    free = ", ".join(f"`{k}`" for k in p.free) or "none"
                    out.append(f"| `{p.name}` | {p.title} | `{lrp.formula(p.params)}` | {free} |")
                out.append("")
        if m.name == "region-ablation":
            out.append(REGIONS_INTRO)
        out.append(f"### {m.name}\n")
        out.append(f"{m.summary}\n")
        body = _body(m.fn)
        if body and m.family != "lrp":
            out.append(body + "\n")
        facts = [f"signed: {'yes' if m.signed else 'no'}", f"needs an eager nn.Module: {'yes' if m.needs_module else 'no'}"]
        out.append("- " + "\n- ".join(facts))
        if m.reference:
            out.append(f"- reference: {m.reference}")
        out.append("")
        if m.params:
            out.append("| parameter | type | default | range | meaning |")
            out.append("|---|---|---|---|---|")
            for p in m.params:
                out.append(f"| `{p.name}` | {_type_name(p)} | {_default(p)} | {_range(p)} | {p.help.replace('|', chr(92) + '|')} |")
            out.append("")
        example = " ".join(f"--param {p.name}={_example(p)}" for p in m.params[:2])
        # the demo CNN has no attention gates: show a gated segmentation network instead
        model = "attention_unet_bundle/ --mask ROI.nii.gz --target 1" if m.family == "attention" else "demo"
        out.append(f"```\nnapari-xai explain T1.nii.gz --model {model} --method {m.name} {example}".rstrip()
                   + " --out rel.nii.gz\n```\n")
    out.append(CHECKS)
    return "\n".join(out).rstrip() + "\n"


def _example(p) -> str:
    if p.choices:
        return str(p.choices[-1])
    if p.type == "ints3":
        return "8,8,8"
    if p.default is None:
        return "LAYER_NAME" if p.name == "layer" else "1"
    if isinstance(p.default, bool):
        return str(not p.default).lower()
    return f"{p.default:g}" if isinstance(p.default, float) else str(p.default)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/methods.md is not current")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is out of date; run: python scripts/gen_methods_doc.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
