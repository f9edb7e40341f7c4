"""DeepLift, GradientSHAP and Grad-CAM++ checked against independent facts.

Facts used: (x - b) * w computed with numpy for linear models; the rescale rule
of one ReLU by hand; summation-to-delta (sum = f(x) - f(baseline), computed by
the network) on ReLU / MaxPool conv nets, overlapping pools and a MONAI DenseNet;
Captum's own DeepLift where it is right; the mean of uniform baselines; MONAI's
own ``GradCAMpp``; and the Grad-CAM++ formula of the paper evaluated with numpy.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_attribution import ConvHead, LinearScore, SmallNet, _one_thread, run  # noqa: F401  (autouse fixture)
from torch import nn

from napari_xai.core.methods._model import gaussian_blur, make_baseline
from napari_xai.core.errors import UserError


def no_hooks_left(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        and not hasattr(m, "input") and not hasattr(m, "output")
        for m in model.modules()
    )


# --------------------------------------------------------------------------- DeepLift


def test_deeplift_on_a_linear_model_is_x_minus_baseline_times_w():
    torch.manual_seed(0)
    w = torch.randn(1, 2, 4, 5, 6)
    x = torch.randn(1, 2, 4, 5, 6)
    wn, xn = w.numpy().astype(np.float64), x.numpy().astype(np.float64)
    mins = xn.min(axis=(2, 3, 4), keepdims=True)
    for baseline, b in (("zero", 0.0), ("min", mins)):
        for target, sign in ((0, 1.0), (1, -1.0)):
            out, ctx = run("deeplift", LinearScore(w).eval(), x, target, baseline=baseline)
            assert np.abs(out.relevance.numpy() - sign * (xn - b) * wn).max() < 1e-6, (baseline, target)
            assert out.used["summation_to_delta_error"] < 1e-5 and not ctx.warnings


class ReluSum(nn.Module):
    """s0 = sum(w * relu(x)) through an nn.ReLU module; s1 = -s0."""

    def __init__(self, w):
        super().__init__()
        self.act = nn.ReLU()
        self.register_buffer("w", w)

    def forward(self, x):
        s = (self.w * self.act(x)).sum(dim=(1, 2, 3, 4))
        return torch.stack([s, -s], 1)


def test_deeplift_applies_the_rescale_rule_at_a_relu():
    # rescale: the ReLU passes (relu(x) - relu(b)) / (x - b), so relevance = w * (relu(x) - relu(b)) voxel by voxel
    torch.manual_seed(2)
    w = torch.rand(1, 1, 4, 4, 4) + 0.5
    x = torch.randn(1, 1, 4, 4, 4) + 0.5
    out, ctx = run("deeplift", ReluSum(w).eval(), x, 0, baseline="min")
    b = float(x.min())
    assert b < 0
    hand = w.numpy() * (np.maximum(x.numpy(), 0) - max(b, 0.0))
    assert np.abs(out.relevance.numpy() - hand).max() < 1e-6
    gradient_times_delta = (w * (x > 0) * (x - b)).numpy()
    assert np.abs(out.relevance.numpy() - gradient_times_delta).max() > 0.1  # not the plain gradient
    assert not ctx.warnings


class PoolNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool3d(2)
        self.conv2 = nn.Conv3d(4, 4, 3, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.pool(self.act1(self.conv1(x))))).mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("baseline", ["zero", "min", "blur"])
def test_deeplift_summation_to_delta_on_a_relu_maxpool_conv_net(baseline):
    torch.manual_seed(3)
    net = PoolNet().eval()
    x = torch.randn(1, 1, 12, 12, 12) * 2.0
    out, ctx = run("deeplift", net, x, 1, baseline=baseline)
    base = {"zero": torch.zeros_like(x), "min": torch.full_like(x, float(x.min())), "blur": None}[baseline]
    with torch.no_grad():
        base = gaussian_blur(x, 1.5) if base is None else base  # default sigma: 12 / 8 voxels
        diff = float(net(x)[0, 1] - net(base)[0, 1])
    assert abs(diff) > 1e-3
    assert float(out.relevance.sum()) == pytest.approx(diff, rel=1e-4)
    assert out.used["summation_to_delta_error"] < 1e-4 and out.used["score_difference"] == pytest.approx(diff)
    assert out.used["forward_passes"] == 1 and not ctx.warnings  # one pass of [x; baseline], no extra check pass
    assert no_hooks_left(net) and net.act1.inplace and not net.training


@pytest.mark.parametrize("baseline", ["zero", "min"])
def test_deeplift_summation_to_delta_on_monai_densenet(baseline):
    # its stem is ReLU -> MaxPool3d(3, stride 2): overlapping windows right after a ReLU, where
    # Captum 0.9's own DeepLift misses the summation by 50 % with the min baseline
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    net = DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=4, growth_rate=4, block_config=(2, 2)).eval()
    x = torch.randn(1, 1, 12, 12, 12) * 2.0
    out, ctx = run("deeplift", net, x, 1, baseline=baseline)
    base = torch.zeros_like(x) if baseline == "zero" else torch.full_like(x, float(x.min()))
    with torch.no_grad():
        diff = float(net(x)[0, 1] - net(base)[0, 1])
    assert abs(diff) > 1e-3
    assert float(out.relevance.sum()) == pytest.approx(diff, rel=1e-4)
    assert not ctx.warnings and no_hooks_left(net)


def test_deeplift_two_rule_modules_in_a_row():
    # conv -> ReLU -> Tanh: Captum 0.9 alone records the ReLU's output gradient before the ELU rescales it
    torch.manual_seed(7)
    net = SmallNet(nn.Sequential(nn.ReLU(), nn.Tanh()), nn.ReLU()).eval()
    x = torch.randn(1, 1, 8, 8, 8) * 2.0
    out, ctx = run("deeplift", net, x, 0, baseline="min")
    with torch.no_grad():
        diff = float(net(x)[0, 0] - net(torch.full_like(x, float(x.min())))[0, 0])
    assert abs(diff) > 1e-3
    assert float(out.relevance.sum()) == pytest.approx(diff, rel=1e-4) and not ctx.warnings
    assert no_hooks_left(net)


class PoolLine(nn.Module):
    """conv -> MaxPool3d -> conv -> ReLU -> mean -> linear: the pool is the only nonlinearity before the ReLU."""

    def __init__(self, pool):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.pool = pool
        self.conv2 = nn.Conv3d(3, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.act(self.conv2(self.pool(self.conv1(x)))).mean(dim=(2, 3, 4)))


def test_deeplift_max_pool_rule_equals_captum_where_captum_is_right_and_sums_where_windows_overlap():
    from captum.attr import DeepLift

    torch.manual_seed(6)
    x = torch.randn(1, 1, 8, 8, 8)
    net = PoolLine(nn.MaxPool3d(2)).eval()  # windows do not overlap and no rule module feeds the pool
    out, _ = run("deeplift", net, x, 0, baseline="blur")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = DeepLift(net).attribute(x.clone().requires_grad_(), baselines=make_baseline(x, "blur")[0], target=0)
    assert torch.allclose(out.relevance, ref, atol=1e-6)
    for pool in (nn.MaxPool3d(3, stride=1, padding=1), nn.MaxPool3d((3, 2, 2), stride=(1, 2, 1), dilation=(1, 2, 1))):
        net = PoolLine(pool).eval()
        out, ctx = run("deeplift", net, x, 0, baseline="blur")
        with torch.no_grad():
            diff = float(net(x)[0, 0] - net(make_baseline(x, "blur")[0])[0, 0])
        assert float(out.relevance.sum()) == pytest.approx(diff, rel=1e-4) and not ctx.warnings


def test_deeplift_warns_on_nonlinear_modules_without_a_rescale_rule():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 6, 6)
    prelu = SmallNet(nn.PReLU(), nn.PReLU()).eval()
    out, ctx = run("deeplift", prelu, x, 0)
    assert len(ctx.warnings) == 1
    msg = ctx.warnings[0]
    assert "\n" not in msg and msg.startswith("deeplift: ") and "PReLU x2" in msg and "plain gradient" in msg
    assert out.used["unhandled_modules"] == "PReLU x2"
    # what the warning says is true: with no rule anywhere, DeepLift (zero baseline) is input x gradient ...
    ixg, _ = run("input-x-gradient", prelu, x, 0)
    assert torch.allclose(out.relevance, ixg.relevance, atol=1e-6)
    # ... and the gap it quotes is the measured one
    with torch.no_grad():
        diff = float(prelu(x)[0, 0] - prelu(torch.zeros_like(x))[0, 0])
    err = abs(float(out.relevance.sum()) - diff) / abs(diff)
    assert out.used["summation_to_delta_error"] == pytest.approx(err, rel=1e-4) and err > 0.01
    assert f"({100 * err:.2g} % apart)" in msg
    # a mixed network names only the module without a rule
    _, ctx = run("deeplift", SmallNet(nn.ReLU(), nn.GELU()).eval(), x, 0)
    assert "GELU x1" in ctx.warnings[0] and "ReLU x" not in ctx.warnings[0]


class FunctionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)).mean(dim=(2, 3, 4)))


def test_deeplift_warns_when_summation_fails_without_module_nonlinearities():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 6, 6) * 2.0
    out, ctx = run("deeplift", FunctionalNet().eval(), x, 0, baseline="min")
    assert out.used["summation_to_delta_error"] > 0.01
    assert len(ctx.warnings) == 1 and "outside nn.Modules" in ctx.warnings[0] and "\n" not in ctx.warnings[0]


def test_deeplift_refuses_a_relu_module_used_twice_and_torchscript():
    shared = nn.ReLU()
    x = torch.randn(1, 1, 6, 6, 6)
    with pytest.raises(UserError, match=r"'act1' \(ReLU\) runs 2 times") as err:
        run("deeplift", SmallNet(shared, shared).eval(), x, 0)
    assert "\n" not in str(err.value)
    # PReLU gets no hooks, so using it twice is allowed (and warned about as unhandled)
    p = nn.PReLU()
    _, ctx = run("deeplift", SmallNet(p, p).eval(), x, 0)
    assert "PReLU x2" in ctx.warnings[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(SmallNet(nn.ReLU(), nn.ReLU()).eval(), x)
    with pytest.raises(UserError, match="eager nn.Module"):
        run("deeplift", scripted, x, 0)


# --------------------------------------------------------------------------- GradientSHAP


def test_gradient_shap_on_a_linear_model():
    torch.manual_seed(0)
    w = torch.randn(1, 1, 4, 4, 4)
    x = torch.randn(1, 1, 4, 4, 4)
    model = LinearScore(w).eval()
    wn, xn = w.numpy().astype(np.float64), x.numpy().astype(np.float64)
    # one baseline and no noise: every draw gives (x - b) * w exactly
    for baseline, b in (("zero", 0.0), ("min", xn.min())):
        out, _ = run("gradient-shap", model, x, 0, baseline=baseline, samples=5, batch_size=2)
        assert np.abs(out.relevance.numpy() - (xn - b) * wn).max() < 1e-5
        assert out.used["completeness_error"] < 1e-5 and out.used["forward_passes"] == 3 + 1
    # uniform baselines: the mean is (x - E[b]) * w with E[b] = (min + max) / 2; sd of b's mean = range / sqrt(12 n)
    lo, hi, n = xn.min(), xn.max(), 2000
    out, _ = run("gradient-shap", model, x, 0, samples=n, batch_size=500)
    assert out.used["baseline"] == "uniform" and out.used["forward_passes"] == 4
    sd = np.abs(wn) * (hi - lo) / np.sqrt(12 * n)
    assert np.all(np.abs(out.relevance.numpy() - (xn - (lo + hi) / 2) * wn) < 5 * sd + 1e-6)
    # input noise has mean 0: E[(x + noise - b) * w] = (x - b) * w; sd of the noise mean = stdev / sqrt(n)
    out, _ = run("gradient-shap", model, x, 0, baseline="zero", noise=0.2, samples=n, batch_size=500)
    stdev = 0.2 * (hi - lo)
    assert out.used["noise_stdev"] == pytest.approx(stdev)
    assert np.all(np.abs(out.relevance.numpy() - xn * wn) < 5 * np.abs(wn) * stdev / np.sqrt(n) + 1e-6)


def test_gradient_shap_draws_follow_torch_seed_and_leave_numpy_alone():
    torch.manual_seed(0)
    net = SmallNet(nn.ReLU(), nn.ReLU()).eval()
    x = torch.randn(1, 1, 6, 6, 6)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    results = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        results.append(run("gradient-shap", net, x, 0, samples=6, noise=0.1)[0].relevance)
    assert torch.equal(results[0], results[1]) and not torch.equal(results[0], results[2])
    assert np.array_equal(np.random.get_state()[1], before)  # numpy's global generator is restored


def test_gradient_shap_approaches_integrated_gradients_with_one_baseline():
    # with one baseline and no noise GradientSHAP is integrated gradients with random path points
    torch.manual_seed(1)
    net = SmallNet(nn.ReLU(), nn.ReLU()).eval()
    x = torch.randn(1, 1, 6, 6, 6) * 2.0
    torch.manual_seed(0)
    gs, _ = run("gradient-shap", net, x, 0, baseline="zero", samples=512, batch_size=256)
    ig, _ = run("integrated-gradients", net, x, 0, steps=64, internal_batch_size=64)
    a, b = gs.relevance.flatten().double(), ig.relevance.flatten().double()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.95
    assert gs.used["completeness_error"] < 0.1


# --------------------------------------------------------------------------- Grad-CAM++


def paper_grad_cam_pp(acts: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Chattopadhay et al. 2018, eq. 19 and 9 with the exp trick: (K, d, h, w) -> ReLU map (d, h, w), numpy."""
    acts, grad = acts.astype(np.float64), grad.astype(np.float64)
    sums = acts.sum(axis=(1, 2, 3), keepdims=True)
    denom = 2 * grad**2 + sums * grad**3
    alpha = np.divide(grad**2, denom, out=np.zeros_like(denom), where=denom != 0)
    weights = (alpha * np.maximum(grad, 0)).sum(axis=(1, 2, 3), keepdims=True)
    return np.maximum((weights * acts).sum(0), 0)


def upsample(m: np.ndarray, size) -> np.ndarray:
    return F.interpolate(torch.from_numpy(m)[None, None].float(), size=size, mode="trilinear", align_corners=False)[0, 0].numpy()


def test_grad_cam_pp_with_one_channel_by_hand():
    # conv (1 map) -> global mean -> linear: g = w_t / N everywhere, so alpha = 1 / (2 + g sum A)
    # and the map is ReLU(N alpha relu(g) A): zero when w_t < 0 (Grad-CAM would keep relu(g A) there)
    torch.manual_seed(0)
    model = ConvHead(cin=1, k=1, stride=2).eval()
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[1.5], [-0.7]]))
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        acts = model.conv(x)[0, 0].numpy().astype(np.float64)  # (4, 4, 4)
    n = acts.size
    g = 1.5 / n
    hand = np.maximum(n * (1 / (2 + g * acts.sum())) * g * acts, 0)
    out, _ = run("grad-cam-plus-plus", model, x, 0)
    assert out.used["layer"] == "conv" and out.used["layer_shape"] == [4, 4, 4]
    assert out.relevance.shape == (1, 1, 8, 8, 8)
    assert np.abs(out.relevance[0, 0].numpy() - upsample(hand, (8, 8, 8))).max() < 1e-6
    neg, _ = run("grad-cam-plus-plus", model, x, 1)
    assert torch.count_nonzero(neg.relevance) == 0
    cam, _ = run("grad-cam", model, x, 1)
    assert torch.count_nonzero(cam.relevance) > 0


class TwoConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(2, 4, 3, stride=2, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv3d(4, 3, 3, padding=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3, 4)))


def test_grad_cam_pp_equals_monai_gradcampp_where_the_gradient_is_constant():
    from monai.visualize import GradCAMpp

    torch.manual_seed(4)
    model = TwoConv().eval()
    with torch.no_grad():
        model.head.weight.mul_(16.0)  # gradients of order 1 at the layer: MONAI's +1e-7 in alpha's denominator is negligible
    x = torch.randn(1, 2, 8, 8, 8)
    for target in (0, 1, 2):
        ours, _ = run("grad-cam-plus-plus", model, x, target, layer="act2")
        assert ours.used["layer_shape"] == [4, 4, 4]
        score = ours.used["score"]
        raw = GradCAMpp(copy.deepcopy(model), target_layers="act2", postprocessing=lambda m: m)(x, class_idx=target).detach()
        # MONAI keeps the paper's factor exp(score) in the weights
        assert torch.allclose(ours.relevance[:, :1] * np.exp(score), raw, rtol=1e-4, atol=1e-6 * float(raw.abs().max()))
        assert float(raw.max()) > 0
        flipped = GradCAMpp(copy.deepcopy(model), target_layers="act2")(x, class_idx=target)  # default: (min, max) -> (1, 0)
        m = ours.relevance[0, 0]
        assert torch.allclose((m - m.min()) / (m.max() - m.min()), 1 - flipped[0, 0], atol=1e-4)
    assert torch.equal(ours.relevance[0, 0], ours.relevance[0, 1])  # one map, replicated per channel
    assert no_hooks_left(model)


def test_grad_cam_pp_follows_the_paper_where_monai_differs():
    # at conv2 (before the ReLU) the gradient is w / N where conv2 > 0 and 0 elsewhere: not constant
    from monai.visualize import GradCAMpp

    torch.manual_seed(5)
    model = TwoConv().eval()
    x = torch.randn(1, 2, 8, 8, 8)
    target = 2
    with torch.no_grad():
        acts = model.conv2(model.act1(model.conv1(x)))[0].numpy()  # (3, 4, 4, 4)
    grad = (acts > 0) * model.head.weight[target].detach().numpy()[:, None, None, None] / 64
    out, _ = run("grad-cam-plus-plus", model, x, target)  # default layer: the last Conv3d
    assert out.used["layer"] == "conv2"
    hand = upsample(paper_grad_cam_pp(acts, grad), (8, 8, 8))
    assert float(np.abs(hand).max()) > 0
    assert np.abs(out.relevance[0, 0].numpy() - hand).max() < 1e-5 * np.abs(hand).max()
    monai = GradCAMpp(copy.deepcopy(model), target_layers="conv2", postprocessing=lambda m: m)(x, class_idx=target).detach()
    monai = monai[0, 0].numpy() / np.exp(out.used["score"])
    assert np.abs(monai - hand).max() > 1e-3 * np.abs(hand).max()  # MONAI sums A * g^3 voxel by voxel


def test_grad_cam_pp_bad_layer_and_torchscript_are_user_errors():
    model = ConvHead(cin=1).eval()
    x = torch.randn(1, 1, 6, 6, 6)
    with pytest.raises(UserError, match="grad-cam-plus-plus layer 'head'.*not a 3D feature map"):
        run("grad-cam-plus-plus", model, x, 0, layer="head")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(model, x)
    with pytest.raises(UserError, match="eager nn.Module"):
        run("grad-cam-plus-plus", scripted, x, 0)


@pytest.mark.parametrize("name", ["deeplift", "gradient-shap", "grad-cam-plus-plus"])
def test_cancel_leaves_the_model_clean(name):
    from napari_xai.core.errors import Cancelled
    from napari_xai.core.methods.registry import RunContext

    torch.manual_seed(0)
    net = PoolNet().train()
    x = torch.randn(1, 1, 8, 8, 8)
    state = np.random.get_state()[1].copy()
    with pytest.raises(Cancelled):
        run(name, net, x, 0, ctx=RunContext(should_stop=lambda: True))
    assert net.training and net.act1.inplace and no_hooks_left(net)
    assert np.array_equal(np.random.get_state()[1], state)
