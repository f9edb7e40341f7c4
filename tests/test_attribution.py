"""Gradient, CAM and occlusion methods checked against independent facts.

Facts used: analytic gradients of linear/ReLU toy models, IG completeness on a
MONAI network, a hand-computed Grad-CAM, the Gaussian CDF for SmoothGrad on a
ReLU, scipy's Gaussian filter, Captum's own Occlusion where its windows cover
the whole volume, and a toy network built to look at one voxel block.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_xai.core.methods._model import gaussian_blur, make_baseline
from napari_xai.core.methods.occlusion import occlusion_windows
from napari_xai.core.methods.cam import spatial_layers
from napari_xai.core.errors import Cancelled, UserError
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.methods.catalogue import all_methods, get_method

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and OpenMP barriers stall on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


NAMES = [
    "saliency", "input-x-gradient", "integrated-gradients", "smoothgrad", "deeplift", "gradient-shap",
    "guided-backprop", "deconvolution", "grad-cam", "grad-cam-plus-plus", "guided-grad-cam", "occlusion", "lrp-epsilon", "lrp-epsilon-plus", "lrp-epsilon-plus-flat",
    "lrp-alpha1-beta0", "lrp-alpha2-beta1", "lrp-gamma", "lrp-0", "lrp-gamma-rule", "lrp-alpha-beta", "lrp-z-plus",
    "lrp-w-square", "lrp-flat", "lrp", "region-ablation", "lime", "kernel-shap",
    "attention-gates", "crp",
]


def run(name, model, x, target, ctx=None, **params):
    m = get_method(name)
    ctx = ctx if ctx is not None else RunContext()
    out = m.fn(model, x, target, m.parse(params), ctx)
    return out, ctx


class LinearScore(nn.Module):
    """Two scores: s0 = sum(w * x), s1 = -s0."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.register_buffer("w", w)

    def forward(self, x):
        s = (x * self.w).sum(dim=(1, 2, 3, 4))
        return torch.stack([s, -s], dim=1)


class ConvHead(nn.Module):
    """conv -> global mean -> linear: Grad-CAM weights are w[c, k] / (voxels of the map)."""

    def __init__(self, cin=2, k=3, stride=1, act=None):
        super().__init__()
        self.conv = nn.Conv3d(cin, k, 3, stride=stride, padding=1)
        self.act = act if act is not None else nn.Identity()
        self.head = nn.Linear(k, 2)

    def forward(self, x):
        return self.head(self.act(self.conv(x)).mean(dim=(2, 3, 4)))


class SmallNet(nn.Module):
    def __init__(self, act1: nn.Module, act2: nn.Module):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.act1 = act1
        self.conv2 = nn.Conv3d(4, 4, 3, padding=1)
        self.act2 = act2
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3, 4)))


def test_registry_has_every_method_with_documented_params():
    names = [m.name for m in all_methods()]
    assert sorted(names) == sorted(NAMES)
    for m in all_methods():
        parsed = m.parse({})  # defaults are valid
        assert set(parsed) == {p.name for p in m.params}
        assert m.summary and m.reference
        for p in m.params:
            assert p.help, (m.name, p.name)
    needs = {m.name for m in all_methods() if m.needs_module}
    assert needs == {n for n in NAMES if n.startswith(("lrp", "guided", "grad-cam", "deconv", "attention", "deeplift",
                                                       "crp"))}
    with pytest.raises(UserError, match="baseline"):
        get_method("integrated-gradients").parse({"baseline": "mean"})


def test_methods_doc_is_generated_from_the_registry():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gen_methods_doc.py"
    spec = importlib.util.spec_from_file_location("gen_methods_doc", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.render()
    assert all(f"### {n}" in text for n in NAMES)
    assert mod.OUT.read_text(encoding="utf-8") == text, "run: python scripts/gen_methods_doc.py"


def test_saliency_is_the_signed_gradient_and_input_x_gradient_its_product():
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 5, 6)
    x = torch.randn(1, 1, 4, 5, 6)
    model = LinearScore(w).eval()
    sal, _ = run("saliency", model, x, 0)
    assert torch.allclose(sal.relevance, w, atol=1e-6)  # d(sum w x)/dx = w, negative values kept
    sal1, _ = run("saliency", model, x, 1, absolute=True)
    assert torch.allclose(sal1.relevance, w.abs(), atol=1e-6)
    ixg, _ = run("input-x-gradient", model, x, 0)
    assert torch.allclose(ixg.relevance, w * x, atol=1e-6)


def test_integrated_gradients_completeness_on_monai_densenet():
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    net = DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=4, growth_rate=4, block_config=(2, 2)).eval()
    x = torch.randn(1, 1, 12, 12, 12) * 2.0
    out, ctx = run("integrated-gradients", net, x, 1, steps=32, internal_batch_size=32)
    with torch.no_grad():
        diff = float(net(x)[0, 1] - net(torch.zeros_like(x))[0, 1])
    total = float(out.relevance.sum())
    assert abs(diff) > 1e-3
    assert abs(total - diff) <= 0.01 * abs(diff), (total, diff)
    assert out.used["forward_passes"] == 1 + 1  # 32 steps in one batch, plus f(x) and f(baseline) together
    assert not ctx.warnings


@pytest.mark.parametrize("baseline", ["min", "blur"])
def test_integrated_gradients_completeness_for_min_and_blur_baselines(baseline):
    torch.manual_seed(1)
    net = SmallNet(nn.ReLU(), nn.ReLU()).eval()
    x = torch.randn(1, 1, 8, 8, 8) * 3.0
    out, ctx = run("integrated-gradients", net, x, 0, steps=128, baseline=baseline, internal_batch_size=128)
    base = torch.full_like(x, float(x.min())) if baseline == "min" else gaussian_blur(x, 1.0)  # 8 / 8 voxels
    with torch.no_grad():
        diff = float(net(x)[0, 0] - net(base)[0, 0])
    assert abs(diff) > 1e-2
    assert float(out.relevance.sum()) == pytest.approx(diff, rel=0.01)


def test_blur_and_min_baselines():
    from scipy.ndimage import gaussian_filter

    torch.manual_seed(0)
    x = torch.randn(1, 2, 16, 12, 10)
    base, used = make_baseline(x, "blur")
    assert used["blur_sigma"] == pytest.approx(10 / 8)
    ref = np.stack([gaussian_filter(x[0, c].double().numpy(), 10 / 8, mode="nearest", truncate=3.0) for c in range(2)])
    assert np.abs(base[0].numpy() - ref).max() < 1e-3
    mn, _ = make_baseline(x, "min")
    assert torch.equal(mn[0, 1], torch.full_like(x[0, 1], float(x[0, 1].min())))


def test_smoothgrad_noise_is_relative_to_intensity_range():
    # f = sum(relu(x)); its gradient is 1[x+n > 0], so SmoothGrad = P(n > -x) = Phi(x / sigma)
    class ReluSum(nn.Module):
        def forward(self, x):
            s = F.relu(x).sum(dim=(1, 2, 3, 4))
            return torch.stack([s, -s], 1)

    x = torch.linspace(-1.0, 3.0, 64).reshape(1, 1, 4, 4, 4)  # intensity range 4
    torch.manual_seed(0)
    out, _ = run("smoothgrad", ReluSum(), x, 0, samples=400, noise=0.25, batch_size=400)
    sigma = 0.25 * 4.0
    assert out.used["noise_stdev"] == pytest.approx(sigma)
    expected = 0.5 * (1 + torch.erf(x / (sigma * math.sqrt(2))))
    assert (out.relevance - expected).abs().max() < 0.1  # 400 Bernoulli samples: sd <= 0.025


def test_smoothgrad_variants_on_a_gradient_that_ignores_the_noise():
    """f = w . x has the gradient w at every noisy copy: mean w, mean square w^2, variance 0 (by hand)."""

    class Dot(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, x):
            s = (x * self.w).sum(dim=(1, 2, 3, 4))
            return torch.stack([s, -s], 1)

    torch.manual_seed(1)
    w = torch.randn(1, 1, 3, 3, 3)
    x = torch.randn(1, 1, 3, 3, 3)
    expected = {"smoothgrad": w, "smoothgrad-sq": w ** 2, "vargrad": torch.zeros_like(w)}
    for variant, value in expected.items():
        out, _ = run("smoothgrad", Dot(w), x, 0, samples=8, noise=0.5, variant=variant)
        assert out.used["variant"] == variant
        assert torch.allclose(out.relevance, value, atol=1e-5), variant


def test_grad_cam_equals_hand_computed_weighted_feature_maps():
    torch.manual_seed(0)
    model = ConvHead(cin=2, k=3, stride=2).eval()
    x = torch.randn(1, 2, 8, 8, 8)
    target = 1
    with torch.no_grad():
        feats = model.conv(x)  # (1, 3, 4, 4, 4)
        # score = sum_k w[t, k] * mean(A_k) + b  =>  d score / d A_k(v) = w[t, k] / N, so alpha_k = w[t, k] / N
        alpha = model.head.weight[target] / feats[0, 0].numel()
        cam = (alpha[:, None, None, None] * feats[0]).sum(0)
        for relu in (True, False):
            hand = torch.relu(cam) if relu else cam
            expected = F.interpolate(hand[None, None], size=(8, 8, 8), mode="trilinear", align_corners=False)[0, 0]
            out, _ = run("grad-cam", model, x, target, relu_attributions=relu)
            assert out.used["layer"] == "conv"  # default: last Conv3d
            rel = out.relevance
            assert rel.shape == (1, 2, 8, 8, 8)
            assert torch.allclose(rel[0, 0], expected, atol=1e-6)
            assert torch.equal(rel[0, 0], rel[0, 1])  # one map, replicated per channel
    assert "conv" in spatial_layers(model, x)


def test_grad_cam_bad_layers_are_user_errors():
    model = ConvHead(cin=1).eval()
    x = torch.randn(1, 1, 6, 6, 6)
    with pytest.raises(UserError, match="does not exist.*conv"):
        run("grad-cam", model, x, 0, layer="features.7")
    with pytest.raises(UserError, match="not a 3D feature map"):
        run("grad-cam", model, x, 0, layer="head")
    with pytest.raises(UserError, match="does not exist"):
        run("guided-grad-cam", model, x, 0, layer="nope")


def test_guided_backprop_warns_without_relu_modules():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 6, 6)
    prelu = SmallNet(nn.PReLU(), nn.PReLU()).eval()
    sal, _ = run("saliency", prelu, x, 0)
    for name in ("guided-backprop", "deconvolution"):
        out, ctx = run(name, prelu, x, 0)
        assert any("equals the plain gradient" in w for w in ctx.warnings), ctx.warnings
        assert torch.allclose(out.relevance, sal.relevance, atol=1e-6)  # what the warning says is true
    _, ctx = run("guided-backprop", SmallNet(nn.ReLU(), nn.PReLU()).eval(), x, 0)
    assert any("partly" in w for w in ctx.warnings), ctx.warnings
    relu = SmallNet(nn.ReLU(inplace=True), nn.ReLU(inplace=True)).eval()
    out, ctx = run("guided-backprop", relu, x, 0)
    sal, _ = run("saliency", relu, x, 0)
    assert not ctx.warnings
    assert not torch.allclose(out.relevance, sal.relevance)  # guiding changed the result
    assert relu.act1.inplace and relu.act2.inplace  # the model's flags are restored
    gcam, ctx = run("guided-grad-cam", prelu, x, 0)
    assert gcam.relevance.shape == x.shape and any("plain gradient" in w for w in ctx.warnings)


def test_torchscript_models():
    torch.manual_seed(0)
    eager = SmallNet(nn.ReLU(), nn.ReLU()).eval()
    x = torch.randn(1, 1, 6, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(eager, x)
    for name in ("guided-backprop", "grad-cam", "lrp-epsilon", "lrp-gamma"):
        with pytest.raises(UserError, match="eager nn.Module"):
            run(name, scripted, x, 0)
    # gradient methods work and agree with the eager model
    a, _ = run("integrated-gradients", scripted, x, 0, steps=8)
    b, _ = run("integrated-gradients", eager, x, 0, steps=8)
    assert torch.allclose(a.relevance, b.relevance, atol=1e-5)
    assert spatial_layers(scripted, x) == []


class BlockNet(nn.Module):
    """Looks only at the block [4:8, 8:12, 0:4] through a conv, a ReLU and a masked sum."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, 2.0)
        mask = torch.zeros(1, 1, 16, 16, 16)
        mask[..., 4:8, 8:12, 0:4] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, x):
        s = (torch.relu(self.conv(x)) * self.mask).sum(dim=(1, 2, 3, 4))
        return torch.stack([s, -s], 1)


def test_occlusion_finds_the_block_the_network_depends_on():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16, 16) + 0.5
    model = BlockNet().eval()
    steps = []
    ctx = RunContext(progress=lambda f, msg: steps.append(f))
    out, _ = run("occlusion", model, x, 0, ctx=ctx, window=4, stride=4, perturbations_per_eval=16)
    rel = out.relevance[0, 0]
    inside = torch.zeros_like(rel, dtype=torch.bool)
    inside[4:8, 8:12, 0:4] = True
    assert torch.all(rel[~inside] == 0)
    # f(x) - f(occluded) = the whole score, since the window covers the block exactly
    assert torch.allclose(rel[inside], 2.0 * x[0, 0][inside].sum().expand(64), rtol=1e-5)
    assert out.used["windows"] == 64 and out.used["forward_passes"] == 1 + 4
    assert steps == sorted(steps) and len(steps) == 5
    # default window (16/8 = 2 voxels): the relevance is positive exactly on the block
    out, _ = run("occlusion", model, x, 0, perturbations_per_eval=64)
    assert out.used["window"] == (2, 2, 2)
    assert torch.equal(out.relevance[0, 0] > 0, inside)


def test_occlusion_is_the_mean_score_drop_over_covering_windows():
    # axis of 5 voxels, window 2, stride 2 -> windows at 0, 2 and the end-aligned 3
    assert occlusion_windows(5, 2, 2) == [0, 2, 3]
    w = torch.tensor([1.0, -2.0, 3.0, 0.5, 4.0]).reshape(1, 1, 5, 1, 1)
    x = torch.tensor([2.0, 1.0, -1.0, 4.0, 1.0]).reshape(1, 1, 5, 1, 1)
    out, _ = run("occlusion", LinearScore(w), x, 0, window="2,1,1", stride="2,1,1")
    c = (w * x).flatten().tolist()  # f(x) - f(x with voxels hidden) = sum of w*x over the hidden voxels
    win0, win2, win3 = c[0] + c[1], c[2] + c[3], c[3] + c[4]
    expected = [win0, win0, win2, (win2 + win3) / 2, win3]
    assert out.relevance.flatten().tolist() == pytest.approx(expected)


def test_occlusion_agrees_with_captum_when_windows_tile_the_volume():
    from captum.attr import Occlusion

    torch.manual_seed(0)
    model = SmallNet(nn.ReLU(), nn.ReLU()).eval()
    x = torch.randn(1, 1, 6, 5, 4)
    out, _ = run("occlusion", model, x, 1, window="3,2,2", stride="1,1,2", baseline="min")
    ref = Occlusion(model).attribute(
        x, sliding_window_shapes=(1, 3, 2, 2), strides=(1, 1, 1, 2), target=1, baselines=float(x.min())
    )
    assert torch.allclose(out.relevance, ref, atol=1e-6)


def test_methods_work_when_the_caller_disabled_gradients():
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 4, 4)
    model = LinearScore(w).eval()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            x = torch.randn(1, 1, 4, 4, 4)
            for name in ("saliency", "integrated-gradients", "lrp-epsilon"):
                out, _ = run(name, model, x, 0)
                assert torch.isfinite(out.relevance).all() and out.relevance.shape == x.shape
            sal, _ = run("saliency", model, x, 0)
            assert torch.allclose(sal.relevance, w)


def test_cancel_stops_a_method_and_leaves_the_model_clean():
    torch.manual_seed(0)
    model = SmallNet(nn.ReLU(inplace=True), nn.ReLU()).train()
    x = torch.randn(1, 1, 6, 6, 6)
    calls = []
    ctx = RunContext(should_stop=lambda: len(calls) > 2, progress=lambda f, m: calls.append(f))
    with pytest.raises(Cancelled):
        run("integrated-gradients", model, x, 0, ctx=ctx, steps=16, internal_batch_size=2)
    ctx = RunContext(should_stop=lambda: True)
    with pytest.raises(Cancelled):
        run("guided-backprop", model, x, 0, ctx=ctx)
    assert model.training and model.act1.inplace
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
