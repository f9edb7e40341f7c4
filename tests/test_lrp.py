"""LRP presets checked against independent facts.

* LRP-0 (epsilon -> 0) equals input x gradient on bias-free ReLU networks.
* With conserving rules and no biases, the relevance sums to the target logit
  (tolerance: relative 1e-3, from the 1e-6 stabilisers and float32 sums).
* Folding BatchNorm by hand (w*g/s, b - m*g/s) gives the same LRP result.
* Residual additions, InstanceNorm and PReLU in a MONAI network conserve
  relevance, and they would not without their rules (control runs).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from napari_xai.core.lrp import propagate as lrp_propagate
from napari_xai.core.lrp import types as lrp_types
from napari_xai.core.lrp.canonizers import ResidualSums
from napari_xai.core.errors import Cancelled, UserError
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.methods.catalogue import get_method

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from threads, and OpenMP barriers stall on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


PRESETS = ["lrp-epsilon", "lrp-epsilon-plus", "lrp-epsilon-plus-flat", "lrp-alpha1-beta0", "lrp-alpha2-beta1", "lrp-gamma"]


def run(name, model, x, target, ctx=None, **params):
    m = get_method(name)
    ctx = ctx if ctx is not None else RunContext()
    return m.fn(model, x, target, m.parse(params), ctx), ctx


def input_x_gradient(model, x, target):
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[0, target], xg)
    return (g * x).detach()


def corr(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


class ReluNet(nn.Module):
    """Bias-free ReLU CNN with max and average pooling; optional BatchNorm after each conv."""

    def __init__(self, bn: bool = False, cin: int = 1):
        super().__init__()
        self.c1 = nn.Conv3d(cin, 4, 3, padding=1, bias=False)
        self.n1 = nn.BatchNorm3d(4) if bn else nn.Identity()
        self.r1 = nn.ReLU(inplace=True)
        self.p1 = nn.MaxPool3d(2)
        self.c2 = nn.Conv3d(4, 6, 3, padding=1, bias=False)
        self.n2 = nn.BatchNorm3d(6) if bn else nn.Identity()
        self.r2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        x = self.p1(self.r1(self.n1(self.c1(x))))
        x = self.gap(self.r2(self.n2(self.c2(x))))
        return self.fc(x.flatten(1))


def _randomise_bn(bn: nn.BatchNorm3d, shift: bool):
    with torch.no_grad():
        c = bn.num_features
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.2, 3.0)
        bn.weight.uniform_(0.3, 2.0)
        if shift:
            bn.bias.uniform_(-0.3, 0.3)
        else:  # y = x * g / s: a pure per-channel scale, the merged conv stays bias-free
            bn.bias.copy_(bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps))
        assert c


def _positive_target(model, x, head=None):
    """The class with the largest score; a bias-free linear ``head`` is negated if no score is positive."""
    with torch.no_grad():
        out = model(x)[0]
        if out.max() <= 0 and head is not None:
            head.weight.neg_()
            out = model(x)[0]
    t = int(out.argmax())
    assert out[t] > 0
    return t, float(out[t])


def test_lrp_epsilon_to_zero_equals_input_x_gradient():
    torch.manual_seed(0)
    model = ReluNet().eval()
    x = torch.randn(1, 1, 8, 8, 8)
    t, logit = _positive_target(model, x, model.fc)
    out, ctx = run("lrp-epsilon", model, x, t, epsilon=1e-9)
    ixg = input_x_gradient(model, x, t)
    assert corr(out.relevance, ixg) > 0.999
    assert torch.allclose(out.relevance, ixg, atol=1e-3 * float(ixg.abs().max()))
    assert float(out.relevance.sum()) == pytest.approx(logit, rel=1e-3)
    assert not ctx.warnings


def test_lrp_epsilon_conserves_relevance_with_batchnorm_after_merging():
    torch.manual_seed(1)
    model = ReluNet(bn=True).eval()
    _randomise_bn(model.n1, shift=False)
    _randomise_bn(model.n2, shift=False)
    x = torch.rand(1, 1, 8, 8, 8)
    t, logit = _positive_target(model, x, model.fc)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out, _ = run("lrp-epsilon", model, x, t, epsilon=1e-9)
    assert out.used["merged_batchnorm"] == 2
    assert float(out.relevance.sum()) == pytest.approx(logit, rel=1e-3)  # conservation
    assert corr(out.relevance, input_x_gradient(model, x, t)) > 0.999  # the merged net is a bias-free ReLU net
    # the model is left exactly as it was: parameters, no hooks, in-place flag
    after = model.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert model.c1.bias is None and model.r1.inplace
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


class Reordered(nn.Module):
    """BatchNorm registered before its conv: merging must follow the execution order."""

    def __init__(self):
        super().__init__()
        self.norm = nn.BatchNorm3d(4)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.act(self.norm(self.conv(x))).mean(dim=(2, 3, 4)))


def test_batchnorm_merge_equals_a_hand_folded_network():
    torch.manual_seed(2)
    model = Reordered().eval()
    _randomise_bn(model.norm, shift=True)
    folded = Reordered().eval()
    with torch.no_grad():
        bn = model.norm
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded.conv.weight.copy_(model.conv.weight * scale[:, None, None, None, None])
        folded.conv.bias.copy_((model.conv.bias - bn.running_mean) * scale + bn.bias)
        folded.fc.load_state_dict(model.fc.state_dict())
    folded.norm = nn.Identity()
    x = torch.randn(1, 1, 6, 6, 6)
    assert torch.allclose(model(x), folded(x), atol=1e-5)
    t, _ = _positive_target(model, x)
    for name in ("lrp-epsilon", "lrp-gamma"):
        a, _ = run(name, model, x, t)
        b, _ = run(name, folded, x, t)
        assert a.used["merged_batchnorm"] == 1
        assert torch.allclose(a.relevance, b.relevance, atol=1e-5 * float(b.relevance.abs().max())), name


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_conserves_on_a_bias_free_relu_net(name):
    torch.manual_seed(3)
    model = ReluNet().eval()
    x = torch.rand(1, 1, 8, 8, 8)
    t, logit = _positive_target(model, x, model.fc)
    out, ctx = run(name, model, x, t, epsilon=1e-9)
    assert out.relevance.shape == x.shape
    assert float(out.relevance.sum()) == pytest.approx(logit, rel=1e-3)
    assert not ctx.warnings


def _monai_classifier():
    from monai.networks.nets import Classifier

    torch.manual_seed(4)
    net = Classifier(
        in_shape=(1, 12, 12, 12), classes=2, channels=(4, 8, 8), strides=(2, 2, 1),
        num_res_units=2, norm="instance", act="prelu",
    ).eval()
    with torch.no_grad():  # bias-free, so every rule conserves exactly
        for n, p in net.named_parameters():
            if n.endswith("bias"):
                p.zero_()
    return net


class _PlainAdditions(torch.overrides.TorchFunctionMode):
    """Control: leave residual additions to the plain gradient."""

    count = 0
    gates = 0

    def __init__(self, stabilizer=None):
        super().__init__()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_conservation_through_instancenorm_prelu_and_residual_units(monkeypatch):
    net = _monai_classifier()
    x = torch.rand(1, 1, 12, 12, 12)
    t, logit = _positive_target(net, x, net.final[1])
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"InstanceNorm3d", "PReLU", "ResidualUnit"} <= kinds
    for name in ("lrp-epsilon", "lrp-epsilon-plus", "lrp-gamma"):
        out, ctx = run(name, net, x, t, epsilon=1e-9)
        assert out.used["residual_sums"] == 3
        assert torch.isfinite(out.relevance).all()
        assert float(out.relevance.sum()) == pytest.approx(logit, rel=1e-2), name  # 1 %: stabilisers at a+b ~ 0
        assert not ctx.warnings
    # controls: without the sum rule relevance doubles at each of the 3 residual units ...
    monkeypatch.setattr(lrp_propagate, "ResidualSums", _PlainAdditions)
    out, ctx = run("lrp-epsilon", net, x, t, epsilon=1e-9)
    assert float(out.relevance.sum()) > 4 * logit
    assert any("times the target score" in w for w in ctx.warnings)
    monkeypatch.undo()
    # ... and without the Pass rule the InstanceNorm gradient rescales it (a fresh network: layer lists are cached)
    monkeypatch.setattr(lrp_types, "NORM_TYPES", (nn.BatchNorm3d,))
    out, _ = run("lrp-epsilon", _monai_classifier(), x, t, epsilon=1e-9)
    assert not 0.5 < float(out.relevance.sum()) / logit < 2.0  # it explodes (about x20000 here)


class InplaceResidual(nn.Module):
    """A ResNet-style block with ``out += identity`` (as MONAI's ResNetBlock)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv3d(1, 4, 3, padding=1, bias=False)
        self.r0 = nn.ReLU()
        self.conv = nn.Conv3d(4, 4, 3, padding=1, bias=False)
        self.r1 = nn.ReLU()
        self.fc = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        identity = self.r0(self.stem(x))
        out = self.conv(identity)
        out += identity
        return self.fc(self.r1(out).mean(dim=(2, 3, 4)))


def test_inplace_residual_addition_is_handled_and_keeps_the_output():
    torch.manual_seed(5)
    net = InplaceResidual().eval()
    x = torch.rand(1, 1, 6, 6, 6)
    t, logit = _positive_target(net, x, net.fc)
    with torch.no_grad():
        ref = net(x)
    sums = ResidualSums()
    xg = x.clone().requires_grad_(True)
    with sums:
        out = net(xg)
    assert sums.count == 1 and torch.allclose(out, ref)
    res, _ = run("lrp-epsilon", net, x, t, epsilon=1e-9)
    assert res.used["residual_sums"] == 1
    assert float(res.relevance.sum()) == pytest.approx(logit, rel=1e-3)


def test_lrp_errors_and_cleanup():
    torch.manual_seed(6)
    model = ReluNet().eval()
    x = torch.rand(1, 1, 8, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.trace(model, x)
    with pytest.raises(UserError, match="eager nn.Module"):
        run("lrp-epsilon-plus", scripted, x, 0)
    with pytest.raises(UserError, match="eager nn.Module"):
        run("lrp-epsilon", model, x, 0, ctx=RunContext(is_scripted=True))

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = ReluNet()

        def forward(self, x):
            y = self.net(x)
            return y, y

    with pytest.raises(UserError, match="tuple"):
        run("lrp-epsilon", Pair().eval(), x, 0)
    with pytest.raises(UserError, match="out of range"):
        run("lrp-gamma", model, x, 7)
    # a cancel between forward and backward removes every hook and restores the model
    model.train()
    ctx = RunContext(should_stop=lambda: len(seen) >= 2, progress=lambda f, m: seen.append(f))
    seen: list[float] = []
    with pytest.raises(Cancelled):
        run("lrp-epsilon", model, x, 0, ctx=ctx)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())
    assert not any(name.startswith("canonizer") for name, _ in model.named_modules())


# --------------------------------------------------------------------------- peers and defaults


class BiasedNet(nn.Module):
    """Conv (bias) -> BatchNorm -> ReLU -> MaxPool -> Conv (bias) -> ReLU -> average pool -> Linear (bias)."""

    def __init__(self, bn: bool):
        super().__init__()
        self.c1 = nn.Conv3d(1, 4, 3, padding=1)
        self.n1 = nn.BatchNorm3d(4) if bn else nn.Identity()
        self.r1 = nn.ReLU()
        self.p1 = nn.MaxPool3d(2)
        self.c2 = nn.Conv3d(4, 6, 3, padding=1)
        self.r2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = self.p1(self.r1(self.n1(self.c1(x))))
        return self.fc(self.gap(self.r2(self.c2(x))).flatten(1))


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("name, composite", [("lrp-epsilon-plus", "EpsilonPlus"),
                                             ("lrp-epsilon-plus-flat", "EpsilonPlusFlat"),
                                             ("lrp-alpha2-beta1", "EpsilonAlpha2Beta1"),
                                             ("lrp-gamma", "EpsilonGammaBox")])
def test_composites_equal_zennits_own_composites(name, composite, bn):
    """The peer library: each composite preset equals Zennit's composite of the same name (signed input, biases)."""
    from zennit import composites
    from zennit.canonizers import SequentialMergeBatchNorm

    torch.manual_seed(10)
    model = BiasedNet(bn).eval()
    if bn:
        _randomise_bn(model.n1, shift=True)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        t = int(model(x)[0].argmax())
    kwargs = {"canonizers": [SequentialMergeBatchNorm()]} if bn else {}
    if composite == "EpsilonGammaBox":
        kwargs.update(low=x.amin(dim=(2, 3, 4), keepdim=True), high=x.amax(dim=(2, 3, 4), keepdim=True))
    xg = x.clone().requires_grad_(True)
    with getattr(composites, composite)(**kwargs).context(model) as m:
        out = m(xg)
        (ref,) = torch.autograd.grad(out, xg, torch.eye(3)[[t]] * out[0, t].detach())
    ours, ctx = run(name, model, x, t)
    assert corr(ours.relevance, ref) > 0.99999
    # merged BatchNorm: Zennit's merge scales by 1/sqrt(1 + eps), ours is exact (see merge_canonizer)
    assert torch.allclose(ours.relevance, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max())), name


def test_alpha1_beta0_is_bit_identical_to_epsilon_plus():
    """z+ is alpha-beta with alpha 1, beta 0: the two composites give the same bits."""
    torch.manual_seed(11)
    model = BiasedNet(bn=True).eval()
    _randomise_bn(model.n1, shift=True)
    x = torch.randn(1, 1, 8, 8, 8)
    a, _ = run("lrp-alpha1-beta0", model, x, 1)
    b, _ = run("lrp-epsilon-plus", model, x, 1)
    assert torch.equal(a.relevance, b.relevance)


def _lrp_methods():
    from napari_xai.core.methods.catalogue import all_methods

    return [m.name for m in all_methods() if m.family == "lrp"]


@pytest.mark.parametrize("name", _lrp_methods())
def test_param_defaults_alone_give_what_explain_gives(name):
    """Defaults live only in the Param: the entry called with them equals the pipeline with no parameters."""
    import numpy as np

    from napari_xai.core.explain import explain
    from napari_xai.core.models import LoadedModel, ModelSpec
    from napari_xai.core.volumes import Volume

    torch.manual_seed(12)
    net = BiasedNet(bn=True).eval()
    _randomise_bn(net.n1, shift=True)
    data = torch.randn(1, 8, 8, 8).numpy()
    model = LoadedModel(module=net, spec=ModelSpec(channels=1), source="t", kind="python", sha256="0" * 64,
                        device=torch.device("cpu"), is_scripted=False)
    rel = explain(Volume(data=data, affine=np.eye(4), name="v"), model, name, target=2)
    m = get_method(name)
    direct = m.fn(net, torch.from_numpy(data)[None], 2, {p.name: p.default for p in m.params}, RunContext())
    np.testing.assert_allclose(np.asarray(rel.data).reshape(-1), direct.relevance.numpy().reshape(-1), rtol=1e-5,
                               atol=1e-7)
    assert float(np.abs(rel.data).max()) > 0


def test_lrp_package_has_no_import_circle_and_no_cross_module_private_import():
    """Arrows in core/lrp/ go one way, and no module reaches into another's private (underscore) names."""
    import ast
    from pathlib import Path

    import napari_xai.core.lrp as pkg

    root = Path(pkg.__file__).parent
    graph: dict[str, set[str]] = {}
    for f in root.glob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        deps = graph.setdefault(f.stem, set())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                privates = [a.name for a in node.names if a.name.startswith("_") and a.name != "__future__"]
                assert not privates, f"{f.name} imports private {privates} from {node.module}"
                if node.level == 1 and node.module:
                    deps.add(node.module.split(".")[0])
    graph.pop("__init__")

    def visit(name, path):
        assert name not in path, f"import circle: {' -> '.join(path + [name])}"
        for dep in graph.get(name, ()):
            visit(dep, path + [name])

    for name in graph:
        visit(name, [])
    assert graph["types"] <= set() and "propagate" not in graph["composites"]
