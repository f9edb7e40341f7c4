"""Benchmark the explain call against direct Captum / Zennit / plain torch calls, for every registered method.

For every method of the registry (``napari-xai methods``), on the demo model with
the demo brain brought to the model grid beforehand (48x56x48, so ``explain``
resamples nothing: the library call and ours get the same tensor), prints the
median time of ``napari_xai.core.explain.explain`` and of the direct call with
the same settings (ours' resolved parameters: layer, window, baseline, ...) and
target, run interleaved in the same process, and their ratio (goal: <= 1.10).
"ours" is the interactive case (the prediction pass is remembered, see
docs/architecture.md); "first" forgets it before every call. The direct call is
Captum's class for the gradient, CAM and perturbation methods, a Zennit
composite (with ``SequentialMergeBatchNorm``) for LRP, and plain torch where no
library has the method (Grad-CAM++, attention gates; the latter on a small
MONAI AttentionUnet).

``--resampled`` adds the demo brain on its own 91x109x91 grid (``explain``
resizes it to the model grid and the relevance back) for a few methods, against
the library call alone and against the library call plus the same resampling
done by hand. ``--densenet`` adds a MONAI DenseNet121 (random weights) at the
largest cubic input whose explanation runs in under a minute here, and
``--memory`` the peak memory of integrated gradients at 16 and 64 steps
(separate processes; goal: within 20 %).

Usage::

    .venv/bin/python benchmarks/bench_explain.py [--repeats 5] [--methods a,b] [--resampled] [--densenet] [--memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

from napari_xai.core.explain import explain, prepare_input
from napari_xai.core.prediction import forget_predictions
from napari_xai.core.models import LoadedModel, ModelSpec, load_model
from napari_xai.core.volumes import Volume


def direct_ig(model, x, target, steps=32, batch=8):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
                                                internal_batch_size=batch)


NOTES: list[str] = []
_MERGE_OK: dict[int, bool] = {}


def direct_lrp(model, x, target):
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    import copy

    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    try:
        if id(model) not in _MERGE_OK:  # probe once, outside the timed calls that follow
            probe = copy.deepcopy(model)  # a failed merge leaves a model half-modified
            composite.register(probe)
            composite.remove()
            _MERGE_OK[id(model)] = True
        if not _MERGE_OK[id(model)]:
            raise RuntimeError("merge failed before")
    except RuntimeError as exc:
        _MERGE_OK[id(model)] = False
        # Zennit merges a BatchNorm into the module registered before it; in DenseNet that is not the
        # module that feeds it (a concatenation does), and the merge fails. Time Zennit without the
        # canonizer instead (less work than ours, so the ratio is pessimistic for us).
        note = f"direct Zennit call: SequentialMergeBatchNorm fails on this model ({str(exc)[:80]}); timed without it"
        if note not in NOTES:
            NOTES.append(note)
            print("  note:", note)
        composite = EpsilonPlusFlat()
    with Gradient(model=model, composite=composite) as attributor:
        _, rel = attributor(x, _onehot(model, x, target))
    return rel


_CLASSES: dict = {}


def _onehot(model, x, target):
    """The one-hot output gradient for Zennit's attributor, its class count known beforehand (one plain forward
    pass per model and input shape, outside the timed calls): the attributor's own pass is then the only one,
    Zennit's documented call."""
    key = (id(model), tuple(x.shape))
    if key not in _CLASSES:
        with torch.no_grad():
            _CLASSES[key] = int(model(x).shape[1])
    onehot = torch.zeros(x.shape[0], _CLASSES[key])
    onehot[:, target] = 1
    return onehot


def direct_deeplift(model, x, target):
    from captum.attr import DeepLift

    return DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=target)


def direct_gradcam(model, x, target, layer):
    from captum.attr import LayerAttribution, LayerGradCam

    mod = dict(model.named_modules())[layer]
    cam = LayerGradCam(model, mod).attribute(x, target=target, relu_attributions=True)
    return LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="trilinear")


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def compare(label, volume, model, method, params, direct, repeats):
    x, _, _, _ = prepare_input(volume, model)
    with torch.no_grad():
        target = int(model.module(x).argmax(1))
    ours_t, ref_t = [], []
    explain(volume, model, method, params=params)  # warm-up both (imports, allocator, tracing caches)
    direct(model.module, x.clone(), target)
    cold_t = []

    def cold():
        forget_predictions(classifiers=False)  # the first explanation of an input
        explain(volume, model, method, params=params)

    for _ in range(repeats):  # interleave so machine noise hits both alike
        ours_t += timed(lambda: explain(volume, model, method, params=params), 1)
        ref_t += timed(lambda: direct(model.module, x.clone(), target), 1)
        cold_t += timed(cold, 1)
    ours, ref, first = statistics.median(ours_t), statistics.median(ref_t), statistics.median(cold_t)
    print(f"{label:42s} {method:22s} ours {ours:8.3f} s (first on an input {first:8.3f} s)   direct {ref:8.3f} s   "
          f"ratio {ours / ref:5.2f} (first {first / ref:5.2f})")
    return {"case": label, "method": method, "ours_s": ours, "ours_first_s": first, "direct_s": ref,
            "ratio": ours / ref, "ratio_first": first / ref}


def densenet_model(size):
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
    return LoadedModel(module=net, spec=ModelSpec(input_shape=(size,) * 3, channels=1, class_names=["a", "b"],
                                                  normalization="zscore"),
                       source="monai DenseNet121", kind="python", sha256="-", device=torch.device("cpu"),
                       is_scripted=False)


MEM_CHILD = r"""
import resource, sys, torch
from monai.networks.nets import DenseNet121
from captum.attr import IntegratedGradients
from napari_xai.core.methods.catalogue import get_method
from napari_xai.core.methods.registry import RunContext
size, steps = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
net = DenseNet121(spatial_dims=3, in_channels=1, out_channels=2).eval()
x = torch.randn(1, 1, size, size, size)
with torch.no_grad():
    net(x)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = get_method("integrated-gradients")
m.fn(net, x, 0, m.parse({"steps": steps, "internal_batch_size": 4}), RunContext())
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


def ig_memory(size, steps):
    out = subprocess.run([sys.executable, "-c", MEM_CHILD, str(size), str(steps)], capture_output=True, text=True,
                         check=True)
    before, after = map(int, out.stdout.split()[-2:])
    return before / 1024, after / 1024  # MiB


# ------------------------------------------------------------------ the direct call of every method
def _zennit(composite_fn):
    """A direct Zennit call: ``composite_fn(x)`` gives the composite; BatchNorm merged as ours does (when Zennit can)."""
    def run(model, x, target, used):
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm

        composite = composite_fn(x, used)
        composite.canonizers = [SequentialMergeBatchNorm()]
        with Gradient(model=model, composite=composite) as attributor:
            _, rel = attributor(x, _onehot(model, x, target))
        return rel

    return run


def _everywhere(rule_fn):
    """One Zennit rule on every Conv/Linear layer (activations pass the relevance)."""
    def make(x, used):
        from zennit.composites import LayerMapComposite
        from zennit.rules import Pass
        from zennit.types import Activation, Convolution, Linear

        return LayerMapComposite(layer_map=[(Activation, Pass()), (Convolution, rule_fn(used)),
                                            (Linear, rule_fn(used))])

    return make


def _conv_dense(conv_fn, dense_fn):
    def make(x, used):
        from zennit.composites import LayerMapComposite
        from zennit.rules import Pass
        from zennit.types import Activation, Convolution, Linear

        return LayerMapComposite(layer_map=[(Activation, Pass()), (Convolution, conv_fn(used)),
                                            (Linear, dense_fn(used))])

    return make


def _zennit_preset(name):
    def make(x, used):
        import zennit.composites as zc

        eps = used.get("epsilon", 1e-6)
        if name == "EpsilonGammaBox":
            return zc.EpsilonGammaBox(low=float(x.min()), high=float(x.max()), epsilon=eps, gamma=used.get("gamma", 0.25))
        return getattr(zc, name)(epsilon=eps)

    return make


def _captum(cls_name, **fixed):
    def run(model, x, target, used):
        import captum.attr as ca

        kw = {k: (v(used, x) if callable(v) else v) for k, v in fixed.items()}
        return getattr(ca, cls_name)(model).attribute(x, target=target, **kw)

    return run


def _smoothgrad(model, x, target, used):
    from captum.attr import NoiseTunnel, Saliency

    return NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=used["samples"],
                                                  nt_samples_batch_size=min(used["batch_size"], used["samples"]),
                                                  stdevs=used["noise_stdev"], target=target, abs=False)


def _gradient_shap(model, x, target, used):
    from captum.attr import GradientShap

    samples, batch = used["samples"], used["batch_size"]
    lo, hi = x.amin(dim=(2, 3, 4), keepdim=True), x.amax(dim=(2, 3, 4), keepdim=True)
    total = torch.zeros_like(x)
    for start in range(0, samples, batch):
        k = min(batch, samples - start)
        draws = lo + (hi - lo) * torch.rand((k,) + tuple(x.shape[1:]))
        total += GradientShap(model).attribute(x, baselines=draws, n_samples=k, stdevs=0.0, target=target) * k
    return total / samples


def _layer(model, used):
    return dict(model.named_modules())[used["layer"]]


def _gradcam(model, x, target, used):
    return direct_gradcam(model, x, target, used["layer"])


def _guided_gradcam(model, x, target, used):
    from captum.attr import GuidedGradCam

    return GuidedGradCam(model, _layer(model, used)).attribute(x, target=target)


def _gradcam_pp(model, x, target, used):
    """Grad-CAM++ in plain torch (no library has it for 3D): one forward, one backward, the paper's weights."""
    import torch.nn.functional as F

    kept = []
    h = _layer(model, used).register_forward_hook(lambda m, i, o: kept.append(o))
    try:
        xi = x.detach().requires_grad_(True)
        score = model(xi)[0, target]
    finally:
        h.remove()
    act = kept[0]
    (g,) = torch.autograd.grad(score, act)
    g2, g3 = g * g, g * g * g
    denom = 2 * g2 + act.sum(dim=(2, 3, 4), keepdim=True) * g3
    alpha = torch.where(denom != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(g))
    w = (alpha * torch.relu(g)).sum(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((w * act).sum(dim=1, keepdim=True))
    return F.interpolate(cam.detach(), size=tuple(x.shape[2:]), mode="trilinear", align_corners=False)


def _occlusion(model, x, target, used):
    from captum.attr import Occlusion

    return Occlusion(model).attribute(x, sliding_window_shapes=(x.shape[1], *used["window"]),
                                      strides=(x.shape[1], *used["stride"]), baselines=0.0, target=target,
                                      perturbations_per_eval=used["perturbations_per_eval"])


def _cubes(x, size):
    from napari_xai.core.geometry import cube_labels

    labels, _ = cube_labels(tuple(int(v) for v in x.shape[2:]), int(size))
    return torch.from_numpy(np.asarray(labels, dtype=np.int64))[None, None].expand_as(x)


def _ablation(model, x, target, used):
    from captum.attr import FeatureAblation

    return FeatureAblation(model).attribute(x, baselines=0.0, target=target, feature_mask=_cubes(x, used["size"]),
                                            perturbations_per_eval=used["perturbations_per_eval"])


def _lime(model, x, target, used):
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from captum.attr import Lime

    return Lime(model, interpretable_model=SkLearnLinearRegression()).attribute(
        x, target=target, baselines=0.0, feature_mask=_cubes(x, used["size"]), n_samples=used["samples"],
        perturbations_per_eval=used["perturbations_per_eval"])


def _kernel_shap(model, x, target, used):
    from captum.attr import KernelShap

    return KernelShap(model).attribute(x, target=target, baselines=0.0, feature_mask=_cubes(x, used["size"]),
                                       n_samples=used["samples"], perturbations_per_eval=used["perturbations_per_eval"])


def _attention(model, x, target, used):
    """The attention gates' coefficients in plain torch: a forward hook on each gate's psi, upsampled, averaged."""
    import torch.nn.functional as F

    maps = []
    hooks = [m.psi.register_forward_hook(lambda mod, i, o: maps.append(o.detach()))
             for m in model.modules() if isinstance(getattr(m, "psi", None), torch.nn.Sequential)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    up = [F.interpolate(m, size=tuple(x.shape[2:]), mode="trilinear", align_corners=False) for m in maps]
    return torch.stack(up).mean(0)


def _rule(name, **kw):
    def make(used):
        import zennit.rules as zr

        return getattr(zr, name)(**{k: (v(used) if callable(v) else v) for k, v in kw.items()})

    return make


#: method -> (direct call, what it is)
DIRECT = {
    "saliency": (_captum("Saliency", abs=lambda u, x: bool(u["absolute"])), "Captum Saliency"),
    "input-x-gradient": (_captum("InputXGradient"), "Captum InputXGradient"),
    "integrated-gradients": (_captum("IntegratedGradients", baselines=lambda u, x: torch.zeros_like(x),
                                     n_steps=lambda u, x: u["steps"],
                                     internal_batch_size=lambda u, x: u["internal_batch_size"]),
                             "Captum IntegratedGradients"),
    "smoothgrad": (_smoothgrad, "Captum NoiseTunnel(Saliency)"),
    "gradient-shap": (_gradient_shap, "Captum GradientShap, uniform baselines"),
    "guided-backprop": (_captum("GuidedBackprop"), "Captum GuidedBackprop"),
    "deconvolution": (_captum("Deconvolution"), "Captum Deconvolution"),
    "deeplift": (_captum("DeepLift", baselines=lambda u, x: torch.zeros_like(x)), "Captum DeepLift"),
    "grad-cam": (_gradcam, "Captum LayerGradCam + interpolate"),
    "grad-cam-plus-plus": (_gradcam_pp, "plain torch"),
    "guided-grad-cam": (_guided_gradcam, "Captum GuidedGradCam"),
    "occlusion": (_occlusion, "Captum Occlusion"),
    "region-ablation": (_ablation, "Captum FeatureAblation"),
    "lime": (_lime, "Captum Lime (scikit-learn regression)"),
    "kernel-shap": (_kernel_shap, "Captum KernelShap"),
    "lrp-epsilon": (_zennit(_everywhere(_rule("Epsilon", epsilon=lambda u: u.get("epsilon", 0.25)))), "Zennit Epsilon"),
    "lrp-epsilon-plus": (_zennit(_zennit_preset("EpsilonPlus")), "Zennit EpsilonPlus"),
    "lrp-epsilon-plus-flat": (_zennit(_zennit_preset("EpsilonPlusFlat")), "Zennit EpsilonPlusFlat"),
    "lrp-alpha1-beta0": (_zennit(_conv_dense(_rule("ZPlus"), _rule("Epsilon", epsilon=1e-6))), "Zennit ZPlus/Epsilon"),
    "lrp-alpha2-beta1": (_zennit(_zennit_preset("EpsilonAlpha2Beta1")), "Zennit EpsilonAlpha2Beta1"),
    "lrp-gamma": (_zennit(_zennit_preset("EpsilonGammaBox")), "Zennit EpsilonGammaBox"),
    "lrp-0": (_zennit(_everywhere(_rule("Epsilon", epsilon=1e-12))), "Zennit Epsilon(0)"),
    "lrp-gamma-rule": (_zennit(_everywhere(_rule("Gamma", gamma=lambda u: u.get("gamma1p", 1.0)))), "Zennit Gamma"),
    "lrp-alpha-beta": (_zennit(_everywhere(_rule("AlphaBeta", alpha=2.0, beta=1.0))), "Zennit AlphaBeta"),
    "lrp-z-plus": (_zennit(_everywhere(_rule("ZPlus"))), "Zennit ZPlus"),
    "lrp-w-square": (_zennit(_everywhere(_rule("WSquare"))), "Zennit WSquare"),
    "lrp-flat": (_zennit(_everywhere(_rule("Flat"))), "Zennit Flat"),
    "lrp": (_zennit(_conv_dense(_rule("Gamma", gamma=0.25), _rule("Epsilon", epsilon=0.25))),
            "Zennit Gamma/Epsilon (the designer's default config)"),
    "attention-gates": (_attention, "plain torch hooks"),
}


def compare_method(name, volume, model, target, repeats, explain_kw=None):
    """Ours vs the direct call for one method; ``used`` (ours' resolved parameters) configures the direct call."""
    from napari_xai.core.explain import prepare

    explain_kw = dict(explain_kw or {})
    direct, what = DIRECT[name]
    rel = explain(volume, model, name, target=target, **explain_kw)  # warm-up; the parameters it resolved
    used = dict(rel.provenance["params"])
    space = {k: v for k, v in explain_kw.items() if k in ("model_orientation", "model_spacing", "input_shape")}
    x = prepare(volume, model, **space).x
    tgt = int(rel.target)

    def ref():
        torch.manual_seed(0)
        return direct(model.module, x.clone(), tgt, used)

    def ours():
        return explain(volume, model, name, target=target, **explain_kw)

    def first():
        forget_predictions(classifiers=False)  # the first explanation of an input
        return explain(volume, model, name, target=target, **explain_kw)

    ref()
    ours_t, ref_t, first_t = [], [], []
    for _ in range(repeats):  # interleaved so machine noise hits all alike
        ours_t += timed(ours, 1)
        ref_t += timed(ref, 1)
        first_t += timed(first, 1)
    o, r, f = statistics.median(ours_t), statistics.median(ref_t), statistics.median(first_t)
    print(f"{name:22s} ours {o * 1000:9.1f} ms   first {f * 1000:9.1f} ms   direct {r * 1000:9.1f} ms   "
          f"ratio {o / r:5.2f}   first {f / r:5.2f}   ({what})", flush=True)
    return {"method": name, "direct": what, "ours_s": o, "ours_first_s": f, "direct_s": r, "ratio": o / r,
            "ratio_first": f / r}


def attention_model():
    from monai.networks.nets import AttentionUnet

    torch.manual_seed(0)
    net = AttentionUnet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 16), strides=(2, 2)).eval()
    return LoadedModel(module=net, spec=ModelSpec(input_shape=(32, 32, 32), channels=1, class_names=["bg", "fg"],
                                                  normalization="zscore"),
                       source="monai AttentionUnet", kind="python", sha256="-", device=torch.device("cpu"),
                       is_scripted=False)


def main():
    from napari_xai.core.geometry import model_grid_affine, resize
    from napari_xai.core.methods.catalogue import all_methods

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--methods", help="comma-separated subset (default: every registered method)")
    ap.add_argument("--resampled", action="store_true", help="also the demo brain on its own grid (resampling)")
    ap.add_argument("--densenet", action="store_true", help="also MONAI DenseNet121 (minutes)")
    ap.add_argument("--memory", action="store_true", help="also IG peak memory at 16 and 64 steps")
    ap.add_argument("--max-size", type=int, default=160)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--crp", action="store_true",
                    help="only CRP: the top 8 concepts against 8 separate conditional LRP runs (bench_crp.py)")
    args, rest = ap.parse_known_args()
    if args.crp:
        import runpy
        import sys
        from pathlib import Path

        sys.argv = [sys.argv[0], "--repeats", str(args.repeats), *rest]
        runpy.run_path(str(Path(__file__).with_name("bench_crp.py")), run_name="__main__")
        return
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    warnings.simplefilter("ignore")  # Captum's notes on hooks, on every call
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")
    results = []

    from napari_xai.core.demo import demo_volume

    volume, _ = demo_volume(seed=0, condition=True)
    demo = load_model("demo", device="cpu")
    grid = tuple(demo.spec.input_shape)
    # the demo brain on the model grid: explain() resamples nothing, both calls get the same tensor
    on_grid = Volume(data=resize(volume.data, grid), affine=model_grid_affine(volume.affine, volume.shape, grid),
                     name="demo on the model grid")
    names = [m.name for m in all_methods()]
    if args.methods:
        names = [n.strip() for n in args.methods.split(",")]
    missing = [n for n in (m.name for m in all_methods()) if n not in DIRECT]
    if missing:
        print("  no direct reference for:", ", ".join(missing))
    print(f"demo model, input on its {'x'.join(map(str, grid))} grid (no resampling):")
    for name in names:
        if name == "attention-gates" or name not in DIRECT:  # crp: its own benchmark (--crp)
            continue
        # the demo model declares a 2 mm grid; "as stored" keeps this one (Orientation and Resize are identities)
        results.append({"case": "demo, model grid", **compare_method(name, on_grid, demo, 1, args.repeats,
                                                                     {"model_spacing": "stored"})})
    if "attention-gates" in names:
        net = attention_model()
        vol = Volume(data=resize(volume.data, (32, 32, 32)),
                     affine=model_grid_affine(volume.affine, volume.shape, (32, 32, 32)), name="demo 32^3")
        print("MONAI AttentionUnet (random weights), 32^3:")
        results.append({"case": "AttentionUnet 32^3", **compare_method("attention-gates", vol, net, 1, args.repeats,
                                                                       {"segmentation": True})})
    summary = [r for r in results if "ratio" in r]
    if summary:
        worst = max(summary, key=lambda r: r["ratio"])
        print(f"methods: {len(summary)}; ratio median {statistics.median(r['ratio'] for r in summary):.2f}, "
              f"largest {worst['ratio']:.2f} ({worst['method']}); first median "
              f"{statistics.median(r['ratio_first'] for r in summary):.2f}")

    if args.resampled:
        label = f"demo model (input 91x109x91 -> {'x'.join(map(str, grid))})"
        results.append(compare(label, volume, demo, "integrated-gradients", {"steps": 32, "internal_batch_size": 8},
                               lambda m, x, t: direct_ig(m, x, t, 32, 8), args.repeats))
        results.append(compare(label, volume, demo, "lrp-epsilon-plus-flat", {}, direct_lrp, args.repeats))
        layer = explain(volume, demo, "grad-cam").provenance["params"]["layer"]
        results.append(compare(label, volume, demo, "grad-cam", {"layer": layer},
                               lambda m, x, t: direct_gradcam(m, x, t, layer), args.repeats))
        results.append(compare(label, volume, demo, "deeplift", {}, direct_deeplift, args.repeats))

    chosen = None
    if args.densenet:
        # DenseNet121: the largest cubic input whose 32-step IG runs in under a minute
        for size in (32, 48, 64, 96, 128, 160):
            if size > args.max_size:
                break
            net = densenet_model(size)
            x = torch.randn(1, 1, size, size, size, requires_grad=True)
            net.module(x)[0, 0].backward()  # warm-up: oneDNN primitives, allocator
            t0 = time.perf_counter()
            net.module(x)[0, 0].backward()
            fb = time.perf_counter() - t0
            estimate = fb * (32 + 2)
            print(f"DenseNet121 {size}^3: one forward+backward {fb:.2f} s, 32-step IG about {estimate:.0f} s")
            if estimate < 60:
                chosen = size
            else:
                break
        if chosen:
            net = densenet_model(chosen)
            vol = Volume(data=resize(volume.data, (chosen,) * 3), affine=volume.affine, name="demo resized")
            label = f"MONAI DenseNet121 (input {chosen}^3)"
            results.append(compare(label, vol, net, "integrated-gradients", {"steps": 32, "internal_batch_size": 8},
                                   lambda m, x, t: direct_ig(m, x, t, 32, 8), max(1, args.repeats - 1)))
            results.append(compare(label, vol, net, "lrp-epsilon-plus-flat", {}, direct_lrp, max(1, args.repeats - 1)))

    if args.memory:
        mem_size = chosen or 48
        b16, a16 = ig_memory(mem_size, 16)
        b64, a64 = ig_memory(mem_size, 64)
        d16, d64 = a16 - b16, a64 - b64
        print(f"IG peak memory, DenseNet121 {mem_size}^3, internal batch 4: 16 steps {a16:.0f} MiB (+{d16:.0f}), "
              f"64 steps {a64:.0f} MiB (+{d64:.0f}); peak ratio 64/16 = {a64 / a16:.3f}")
        results.append({"case": f"IG memory DenseNet121 {mem_size}^3", "peak16_mib": a16, "peak64_mib": a64,
                        "ratio": a64 / a16})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
