"""The unified LRP rule, its Table 1 presets and LRP configurations, checked against independent facts.

* Every preset equals Zennit's own rule (Epsilon, Gamma, AlphaBeta, ZPlus,
  WSquare, Flat) on small 3D networks with biases and non-negative layer inputs,
  through our configuration machinery (segments, execution order) against a
  composite built directly with Zennit.
* A custom ten-parameter rule on one dense layer equals Eqn. 5 computed by hand
  with NumPy.
* Rules with alpha - beta = 1, epsilon = 0 and no biases conserve relevance.
* Layers are listed in execution order, not registration order; configurations
  survive a JSON round trip; bad configurations give one-line errors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from napari_xai.core.errors import UserError
from napari_xai.core.lrp import (
    PARAM_HELP,
    PARAM_NAMES,
    PRESETS,
    STEPS,
    LrpConfig,
    RuleParams,
    Segment,
    UnifiedRule,
    conserves,
    default_config,
    formula,
    list_layers,
    load_config,
    load_configs,
    match_preset,
    preset_params,
    resolve,
    run_config,
    save_configs,
)
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.methods.catalogue import get_method


class Encoder(nn.Module):
    """Conv (bias) -> ReLU -> MaxPool -> Conv (stride 2) -> ReLU -> Flatten -> Linear."""

    def __init__(self, cin=2):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool3d(2)
        self.conv2 = nn.Conv3d(4, 5, 3, padding=1, stride=2)
        self.act2 = nn.ReLU()
        self.flat = nn.Flatten()
        self.fc = nn.Linear(5 * 2 * 2 * 2, 3)

    def forward(self, x):
        x = self.pool(self.act1(self.conv1(x)))
        return self.fc(self.flat(self.act2(self.conv2(x))))


class EncoderDecoder(nn.Module):
    """Conv (stride 2) -> ReLU -> ConvTranspose3d -> ReLU -> average pool -> Linear (all with biases)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv3d(1, 4, 3, padding=1, stride=2)
        self.act1 = nn.ReLU()
        self.up = nn.ConvTranspose3d(4, 3, 2, stride=2)
        self.act2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = self.act2(self.up(self.act1(self.down(x))))
        return self.fc(self.gap(x).flatten(1))


def zennit_lrp(model, x, target, rule, canonizers=()):
    """Reference: Zennit's own rule on every Conv/ConvTranspose/Linear, Pass on ReLU, Norm on average pooling;
    ``canonizers`` (e.g. Zennit's ``SequentialMergeBatchNorm``) applied by Zennit."""
    from zennit.composites import LayerMapComposite
    from zennit.rules import Norm, Pass

    comp = LayerMapComposite([
        (nn.modules.conv._ConvNd, rule), (nn.Linear, rule), (nn.ReLU, Pass()), (nn.AdaptiveAvgPool3d, Norm()),
    ], canonizers=list(canonizers))
    xg = x.clone().requires_grad_(True)
    with comp.context(model) as m:
        out = m(xg)
        g = torch.zeros_like(out)
        g[0, target] = out[0, target].detach()
        (rel,) = torch.autograd.grad(out, xg, g)
    return rel


def one_segment(model, x, params, zero_bias=False):
    layers = list_layers(model, x)
    rule_layers = [l.name for l in layers if l.kind == "rule"]
    return LrpConfig(name="all", segments=[Segment(rule_layers[0], rule_layers[-1], params, "all")],
                     default=RuleParams(alpha=5.0, beta=4.0), zero_bias=zero_bias)  # default must not be used


def _zennit(name, **kw):
    from zennit import rules

    return getattr(rules, name)(**kw)


CASES = [
    ("lrp-0", {}, "Epsilon", {"epsilon": 1e-6}),
    ("lrp-epsilon", {"epsilon": 0.25}, "Epsilon", {"epsilon": 0.25}),
    ("lrp-epsilon", {"epsilon": 1.0}, "Epsilon", {"epsilon": 1.0}),
    ("lrp-gamma", {}, "Gamma", {"gamma": 1.0}),
    ("lrp-gamma", {"gamma1p": 0.25}, "Gamma", {"gamma": 0.25}),
    ("lrp-alphabeta", {}, "AlphaBeta", {"alpha": 2.0, "beta": 1.0}),
    ("lrp-alphabeta", {"alpha": 1.0, "beta": 0.0}, "AlphaBeta", {"alpha": 1.0, "beta": 0.0}),
    ("lrp-zplus", {}, "ZPlus", {}),
    ("lrp-wsquare", {}, "WSquare", {}),
    ("lrp-flat", {}, "Flat", {}),
]


@pytest.mark.parametrize("preset, free, zname, zkw", CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
@pytest.mark.parametrize("net", ["encoder", "encoder-decoder"])
def test_each_preset_equals_zennits_rule(preset, free, zname, zkw, net):
    torch.manual_seed(0)
    model = (Encoder() if net == "encoder" else EncoderDecoder()).eval()
    cin = 2 if net == "encoder" else 1
    x = torch.rand(1, cin, 8, 8, 8)  # non-negative: Eqn. 5 and Zennit's signed generalisation agree
    with torch.no_grad():
        target = int(model(x)[0].argmax())
    cfg = one_segment(model, x, preset_params(preset, **free))
    ours = run_config(model, x, target, cfg, RunContext(), boundaries=False).relevance
    ref = zennit_lrp(model, x, target, _zennit(zname, **zkw))
    scale = float(ref.abs().max())
    assert scale > 0
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5 * scale), float((ours - ref).abs().max())


@pytest.mark.parametrize("preset, zname, zkw", [("lrp-0", "Epsilon", {"epsilon": 1e-6}), ("lrp-zplus", "ZPlus", {}),
                                                  ("lrp-alphabeta", "AlphaBeta", {"alpha": 2.0, "beta": 1.0})])
def test_zero_bias_equals_zennits_zero_params_and_conserves(preset, zname, zkw):
    torch.manual_seed(1)
    model = Encoder().eval()
    x = torch.rand(1, 2, 8, 8, 8)
    with torch.no_grad():
        out = model(x)[0]
    target = int(out.argmax())
    ours = run_config(model, x, target, one_segment(model, x, preset_params(preset), zero_bias=True), RunContext(),
                      boundaries=False)
    ref = zennit_lrp(model, x, target, _zennit(zname, zero_params=["bias"], **zkw))
    assert torch.allclose(ours.relevance, ref, atol=1e-5 * float(ref.abs().max()))
    # without biases the rule conserves layer by layer: the input relevance sums to the target logit
    assert float(ours.relevance.sum()) == pytest.approx(float(out[target]), rel=1e-4)
    assert ours.used["conservation"]["expected"] is True


def test_signed_inputs_follow_zennits_generalised_rules():
    """First layer with negative inputs (z-scored image): negative activations use w- as their 'positive' weights."""
    torch.manual_seed(2)
    model = Encoder().eval()
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        target = int(model(x)[0].argmax())
    for preset, zname, zkw in (("lrp-zplus", "ZPlus", {}), ("lrp-alphabeta", "AlphaBeta", {"alpha": 2.0, "beta": 1.0}),
                               ("lrp-0", "Epsilon", {"epsilon": 1e-6})):
        ours = run_config(model, x, target, one_segment(model, x, preset_params(preset)), RunContext(), boundaries=False)
        ref = zennit_lrp(model, x, target, _zennit(zname, **zkw))
        assert torch.allclose(ours.relevance, ref, atol=1e-5 * float(ref.abs().max())), preset


def test_custom_parameters_equal_eqn5_by_hand():
    """One dense layer, all ten parameters non-trivial, no bias: the rule is Eqn. 5 as printed."""
    p = RuleParams(alpha=2.5, beta=1.5, epsilon=0.05, theta0=0.5, theta1=1.5, gamma0=0.1, gamma1=0.7,
                   gamma1p=0.3, gamma1n=0.4, gamma2=0.2)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 4))  # (out j, in i)
    a = rng.uniform(0.0, 2.0, size=4)
    r_out = rng.normal(size=3)
    t = p.theta0 + p.theta1 * a
    gp = p.gamma0 + p.gamma1 * w + p.gamma1p * np.clip(w, 0, None) + p.gamma2 * w ** 2
    gn = p.gamma0 + p.gamma1 * w + p.gamma1n * np.clip(w, None, 0) + p.gamma2 * w ** 2

    def ratio(g):
        z = (g * t[None, :]).sum(axis=1)
        z = z + p.epsilon * np.where(z >= 0, 1.0, -1.0)
        return (t[None, :] * g / z[:, None] * r_out[:, None]).sum(axis=0)

    expected = p.alpha * ratio(gp) - p.beta * ratio(gn)

    layer = nn.Linear(4, 3, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(w))
    from zennit.core import Composite

    comp = Composite(module_map=lambda ctx, name, m: UnifiedRule(p) if isinstance(m, nn.Linear) else None)
    xin = torch.from_numpy(a)[None].requires_grad_(True)
    with comp.context(layer) as m:
        out = m(xin)
        (rel,) = torch.autograd.grad(out, xin, torch.from_numpy(r_out)[None])
    np.testing.assert_allclose(rel[0].numpy(), expected, rtol=1e-10, atol=1e-12)


def test_conserving_custom_rule_keeps_the_logit_through_a_3d_net():
    p = RuleParams(alpha=1.7, beta=0.7, theta0=0.2, theta1=1.0, gamma0=0.05, gamma1=0.5, gamma1p=0.4,
                   gamma1n=0.6, gamma2=0.1)
    assert conserves(p)
    torch.manual_seed(4)
    model = EncoderDecoder().eval()
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        out = model(x)[0]
    t = int(out.argmax())
    res = run_config(model, x, t, one_segment(model, x, p, zero_bias=True), RunContext(), boundaries=False)
    assert float(res.relevance.sum()) == pytest.approx(float(out[t]), rel=1e-4)


def test_table1_presets_and_guide():
    # Table 1 of Huang et al.: (alpha, beta, eps, theta0, theta1, gamma0, gamma1, gamma1p, gamma1n, gamma2)
    table = {
        "lrp-0": (1, 0, 0, 0, 1, 0, 1, 0, 0, 0),
        "lrp-gamma": (1, 0, 0, 0, 1, 0, 1, 1, 0, 0),
        "lrp-zplus": (1, 0, 0, 0, 1, 0, 0, 1, 0, 0),
        "lrp-wsquare": (1, 0, 0, 1, 0, 0, 0, 0, 0, 1),
        "lrp-flat": (1, 0, 0, 1, 0, 1, 0, 0, 0, 0),
    }
    for name, row in table.items():
        assert tuple(PRESETS[name].params.to_dict()[k] for k in PARAM_NAMES) == row, name
    ab = PRESETS["lrp-alphabeta"].params
    assert ab.alpha - ab.beta == 1 and (ab.gamma1, ab.gamma1p, ab.gamma1n, ab.theta1) == (0, 1, 1, 1)
    eps = PRESETS["lrp-epsilon"].params
    assert 0 < eps.epsilon <= 1 and eps.replace(epsilon=0) == PRESETS["lrp-0"].params
    assert set(PARAM_HELP) == set(PARAM_NAMES) and all(PARAM_HELP[n].startswith("Step") for n in PARAM_NAMES)
    assert [s[1] for s in STEPS] == [("alpha", "beta"), ("theta0", "theta1"),
                                     ("gamma0", "gamma1", "gamma1p", "gamma1n", "gamma2"), ("epsilon",)]
    for name, p in PRESETS.items():
        assert match_preset(p.params) == name
    assert match_preset(preset_params("lrp-epsilon", epsilon=0.01)) == "lrp-epsilon"
    assert match_preset(RuleParams(gamma1=0.5)) == "custom"
    assert formula(PRESETS["lrp-alphabeta"].params) == "2·a·w⁺ / (Σ) − 1·a·w⁻ / (Σ)"
    assert formula(preset_params("lrp-epsilon", epsilon=0.25)) == "a·w / (0.25 + Σ)"


@pytest.mark.parametrize("bad, message", [
    ({"alpha": -1}, "alpha and beta must be >= 0"),
    ({"alpha": 0, "beta": 0}, "no relevance"),
    ({"theta0": 0, "theta1": 0}, "no activation"),
    ({"gamma1": 0}, "alpha term has no weights"),
    ({"epsilon": -0.1}, "epsilon must be >= 0"),
    ({"kappa": 1}, "unknown LRP parameter"),
    ({"alpha": "two"}, "must be a number"),
])
def test_bad_rule_parameters(bad, message):
    with pytest.raises(UserError, match=message):
        RuleParams.from_dict(bad, "segment 'x'")


# --------------------------------------------------------------------------- configurations


class Reversed(nn.Module):
    """Registers its layers in the opposite order of execution."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4, 2)
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.act2 = nn.ReLU()
        self.second = nn.Conv3d(4, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.first = nn.Conv3d(1, 4, 3, padding=1)

    def forward(self, x):
        x = self.act2(self.second(self.act1(self.first(x))))
        return self.head(self.gap(x).flatten(1))


def test_layers_are_listed_in_execution_order_with_shapes():
    model = Reversed().eval()
    x = torch.rand(1, 1, 6, 6, 6)
    layers = list_layers(model, x)
    assert [l.name for l in layers] == ["first", "act1", "second", "act2", "gap", "head"]
    assert [n for n, _ in model.named_modules()][1:] == ["head", "gap", "act2", "second", "act1", "first"]
    assert [l.kind for l in layers] == ["rule", "pass", "rule", "pass", "sum", "rule"]
    assert layers[0].output_shape == (1, 4, 6, 6, 6) and layers[-1].output_shape == (1, 2)
    assert layers[2].type == "Conv3d" and layers[0].label == "#0 first · Conv3d · 4×6×6×6"
    # a segment from 'first' to 'second' covers the two convolutions, not the head
    cfg = LrpConfig(name="c", segments=[Segment("first", "second", preset_params("lrp-zplus"), "convs")])
    res = resolve(cfg, layers)
    assert res.owner == {"first": "convs", "second": "convs", "head": ""}
    assert res.spans == [(0, 2)]


def test_config_json_round_trip_and_library(tmp_path):
    a = LrpConfig(name="a", segments=[Segment("first", "second", preset_params("lrp-gamma", gamma1p=0.25), "low")],
                  default=preset_params("lrp-epsilon", epsilon=0.1), zero_bias=True, intermediate=["act1"],
                  layer_rules={"gap": "sum"}, description="test")
    b = a.copy("b")
    b.segments[0].rule = preset_params("lrp-flat")
    one = save_configs(tmp_path / "a.json", [a])
    data = json.loads(one.read_text())
    assert data["format"] == "napari-xai/lrp-config" and data["segments"][0]["preset"] == "lrp-gamma-rule"
    assert load_config(one).to_dict() == a.to_dict()
    lib = save_configs(tmp_path / "lib.json", [a, b], active="b")
    configs, active = load_configs(lib)
    assert [c.name for c in configs] == ["a", "b"] and active == "b"
    assert load_config(lib).segments[0].preset == "lrp-flat"
    assert load_config(lib, "a").segments[0].rule.gamma1p == 0.25
    # a hand-written file: a preset with one free parameter is enough
    (tmp_path / "hand.json").write_text(json.dumps({
        "name": "hand", "segments": [{"start": "first", "end": "second", "preset": "lrp-epsilon", "params": {"epsilon": 0.5}}],
    }))
    hand = load_config(tmp_path / "hand.json")
    assert hand.segments[0].rule == preset_params("lrp-epsilon", epsilon=0.5) and hand.default == RuleParams()
    # files written before the Table 1 rules were named like their methods still read: lrp-gamma was the gamma rule
    (tmp_path / "old.json").write_text(json.dumps({
        "name": "old", "default": {"preset": "lrp-zplus"},
        "segments": [{"start": "first", "end": "second", "preset": "lrp-gamma", "params": {"gamma1p": 0.25}}],
    }))
    old = load_config(tmp_path / "old.json")
    assert old.segments[0].preset == "lrp-gamma-rule" and old.segments[0].rule.gamma1p == 0.25
    assert old.default == preset_params("lrp-z-plus") and match_preset(old.default) == "lrp-z-plus"


@pytest.mark.parametrize("segments, message", [
    ([("first", "nope")], r"refers to layer 'nope', which this model does not have"),
    ([("frist", "second")], "did you mean first"),
    ([("second", "first")], r"is empty: its start layer 'second' \(#2\) runs after its end layer 'first' \(#0\); swap"),
    ([("act2", "gap")], "contains no Conv/Linear layer"),
    ([("first", "second"), ("act1", "head")], r"overlap at layer 'act1'"),
])
def test_bad_segments(segments, message):
    model = Reversed().eval()
    layers = list_layers(model, torch.rand(1, 1, 6, 6, 6))
    cfg = LrpConfig(name="bad", segments=[Segment(a, b, RuleParams(), f"s{i}") for i, (a, b) in enumerate(segments)])
    with pytest.raises(UserError, match=message):
        resolve(cfg, layers)


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text('{"name": "x",')
    with pytest.raises(UserError, match=r"not valid JSON \(line 1"):
        load_config(tmp_path / "broken.json")
    (tmp_path / "seg.json").write_text(json.dumps({"name": "x", "segments": [{"start": "a"}]}))
    with pytest.raises(UserError, match="needs 'start' and 'end'"):
        load_config(tmp_path / "seg.json")
    (tmp_path / "lib.json").write_text(json.dumps({"format": "napari-xai/lrp-configs", "active": "zz",
                                                    "configurations": [{"name": "a"}]}))
    with pytest.raises(UserError, match="active configuration 'zz'"):
        load_configs(tmp_path / "lib.json")


class Scaled(nn.Module):
    """A layer with parameters that LRP has no rule for."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)
        self.scale = _Affine(2)
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.scale(self.conv(x)).mean(dim=(2, 3, 4)))


class _Affine(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1, c, 1, 1, 1) * 2)

    def forward(self, x):
        return x * self.w


def test_layer_without_rule_is_named_with_a_suggestion(tmp_path):
    model = Scaled().eval()
    x = torch.rand(1, 1, 6, 6, 6)
    for method in ("lrp", "lrp-epsilon"):
        m = get_method(method)
        with pytest.raises(UserError, match=r"no rule for layer 'scale' \(_Affine, 2 parameters\).*\"layer_rules\""):
            m.fn(model, x, 0, m.parse({}), RunContext())
    # the suggested fix works: give it the pass rule in a configuration file
    cfg = default_config(list_layers(model, x))
    cfg.layer_rules = {"scale": "pass"}
    path = save_configs(tmp_path / "c.json", [cfg])
    m = get_method("lrp")
    out = m.fn(model, x, 0, m.parse({"config": str(path)}), RunContext())
    assert out.relevance.shape == x.shape and torch.isfinite(out.relevance).all()


def test_lrp_method_with_config_file_and_conservation_report(tmp_path):
    torch.manual_seed(5)
    model = Encoder().eval()
    with torch.no_grad():
        for mod in model.modules():
            if getattr(mod, "bias", None) is not None:
                mod.bias.zero_()
    x = torch.rand(1, 2, 8, 8, 8)
    with torch.no_grad():
        out = model(x)[0]
    t = int(out.argmax())
    cfg = LrpConfig(name="z+ low, 0 top", segments=[Segment("conv1", "conv2", preset_params("lrp-zplus"), "low")],
                    intermediate=["act1"])
    path = save_configs(tmp_path / "cfg.json", [cfg])
    m = get_method("lrp")
    ctx = RunContext()
    res = m.fn(model, x, t, m.parse({"config": str(path)}), ctx)
    # the configuration object itself (the designer's and the comparison's way, no file) gives the same relevance;
    # the record names no file then, and holds the whole configuration as JSON
    direct = m.fn(model, x, t, m.parse({"config": cfg}), RunContext())
    torch.testing.assert_close(direct.relevance, res.relevance)
    assert res.used["config"] == str(path) and direct.used["config"] is None
    assert json.loads(json.dumps(direct.used["configuration"])) == cfg.to_dict()
    cons = res.used["conservation"]
    assert cons["expected"] and cons["ratio"] == pytest.approx(1.0, abs=1e-4) and not ctx.warnings
    assert cons["output"] == pytest.approx(float(out[t]))
    # intermediate relevance: at the boundary below the segment (= the input) and at act1; sums conserved
    sums = res.used["intermediate_sums"]
    assert sums["after low"] == pytest.approx(float(res.relevance.sum()), rel=1e-5)
    assert sums["act1"] == pytest.approx(float(out[t]), rel=1e-4)
    arrays = res.used["_arrays"]["intermediate"]
    assert arrays["act1"].shape == (8, 8, 8) and float(arrays["act1"].sum()) == pytest.approx(sums["act1"], rel=1e-4)
    # a non-conserving rule with biases restored: no warning (epsilon absorbs by design)
    eps = LrpConfig(name="eps", segments=[Segment("conv1", "fc", preset_params("lrp-epsilon", epsilon=5.0), "all")])
    ctx = RunContext()
    res = run_config(model, x, t, eps, ctx)
    assert res.used["conservation"]["expected"] is False and res.used["conservation"]["ratio"] < 0.9
    assert not any("not conserved" in w for w in ctx.warnings)


def test_conservation_warning_names_biases():
    torch.manual_seed(6)
    model = Encoder().eval()
    with torch.no_grad():
        model.conv1.bias.fill_(-0.5)  # biases absorb much of the relevance
    x = torch.rand(1, 2, 8, 8, 8)
    with torch.no_grad():
        t = int(model(x)[0].argmax())
    cfg = LrpConfig(name="zero", segments=[Segment("conv1", "fc", RuleParams(), "all")])
    ctx = RunContext()
    res = run_config(model, x, t, cfg, ctx)
    ratio = res.used["conservation"]["ratio"]
    assert abs(ratio - 1) > 0.1, "the biased run must be off by more than 10 %"
    assert any("not conserved" in w and "biases" in w and "zero_bias" in w for w in ctx.warnings), ctx.warnings
    cfg.zero_bias = True
    ctx = RunContext()
    res = run_config(model, x, t, cfg, ctx)
    assert res.used["conservation"]["ratio"] == pytest.approx(1.0, abs=1e-3) and not ctx.warnings


def test_default_config_is_gamma_epsilon_zero_in_thirds():
    layers = list_layers(Encoder().eval(), torch.rand(1, 2, 8, 8, 8))
    cfg = default_config(layers)
    assert [s.preset for s in cfg.segments] == ["lrp-gamma-rule", "lrp-epsilon", "lrp-0"]
    assert [(s.start, s.end) for s in cfg.segments] == [("conv1", "conv1"), ("conv2", "conv2"), ("fc", "fc")]


class SqueezeExcite(nn.Module):
    """Conv -> ReLU -> MONAI squeeze-and-excitation (x * sigmoid gate) -> GroupNorm -> ReLU -> pool -> Linear."""

    def __init__(self):
        super().__init__()
        from monai.networks.blocks import ChannelSELayer

        self.conv = nn.Conv3d(1, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.se = ChannelSELayer(3, 8, r=2)
        self.norm = nn.GroupNorm(4, 8)
        self.act2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        x = self.norm(self.se(self.act(self.conv(x))))
        return self.fc(self.gap(self.act2(x)).flatten(1))


@pytest.mark.parametrize("size", [6, 1], ids=["6^3 map (broadcast gate)", "1^3 map (same-shape gate)"])
def test_squeeze_excitation_gates_and_groupnorm_conserve(size, monkeypatch):
    from napari_xai.core.lrp.canonizers import ResidualSums

    torch.manual_seed(7)
    model = SqueezeExcite().eval()
    x = torch.rand(1, 1, size, size, size)
    with torch.no_grad():
        out = model(x)[0]
    t = int(out.argmax())
    cfg = LrpConfig(name="z+", segments=[Segment("conv", "fc", preset_params("lrp-zplus"), "all")], zero_bias=True)
    res = run_config(model, x, t, cfg, RunContext(), boundaries=False)
    assert res.used["gates"] == 1
    assert float(res.relevance.sum()) == pytest.approx(float(out[t]), rel=1e-4)
    # control: without the gate rule the gradient also feeds the gate branch, which pools the signal back in
    monkeypatch.setattr(ResidualSums, "_gate", classmethod(lambda cls, args, kwargs: None))
    res = run_config(model, x, t, cfg, RunContext(), boundaries=False)
    assert res.used["gates"] == 0
    assert float(res.relevance.sum()) != pytest.approx(float(out[t]), rel=1e-2)


class DeadChannel(nn.Module):
    """Conv -> ReLU with one channel that is 0 everywhere -> average pooling -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AvgPool3d(2)
        self.fc = nn.Linear(3 * 8, 2)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.weight[1].neg_()  # channel 1: negative weights on a positive input -> ReLU gives 0

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


@pytest.mark.parametrize("preset", ["lrp-flat", "lrp-wsquare"])
def test_pooling_keeps_relevance_that_reaches_dead_windows(preset, monkeypatch):
    """Rules that ignore activations send relevance to all-zero pooling windows; the sum rule must not drop it."""
    from napari_xai.core.lrp import rules as lrp_rules

    torch.manual_seed(8)
    model = DeadChannel().eval()
    x = torch.rand(1, 1, 4, 4, 4)
    with torch.no_grad():
        out = model(x)[0]
        assert float(model.act(model.conv(x))[0, 1].abs().max()) == 0.0
    t = int(out.argmax())
    cfg = LrpConfig(name="f", segments=[Segment("conv", "fc", preset_params(preset), "all")], zero_bias=True)
    res = run_config(model, x, t, cfg, RunContext(), boundaries=False)
    assert float(res.relevance.sum()) == pytest.approx(float(out[t]), rel=1e-4)
    # control: Zennit's plain Norm rule loses the share of the dead channel
    from zennit.rules import Norm

    monkeypatch.setattr(lrp_rules, "SumRule", lambda stabilizer=1e-6: Norm(stabilizer))
    res = run_config(model, x, t, cfg, RunContext(), boundaries=False)
    assert float(res.relevance.sum()) < 0.9 * float(out[t])


def _monai(kind):
    from monai.networks import nets

    if kind == "DenseNet":
        return nets.DenseNet(spatial_dims=3, in_channels=1, out_channels=2, init_features=4, growth_rate=4,
                             block_config=(2, 2)), 16, False
    if kind == "ResNet":
        return nets.ResNet(block="basic", layers=(1, 1, 1, 1), block_inplanes=(4, 4, 8, 8), spatial_dims=3,
                           n_input_channels=1, num_classes=2), 16, False
    if kind == "SEResNet":
        return nets.SENet(spatial_dims=3, in_channels=1, block="se_resnet_bottleneck", layers=(1, 1, 1, 1), groups=1,
                          reduction=4, inplanes=8, downsample_kernel_size=1, input_3x3=False, num_classes=2), 16, False
    if kind == "Classifier":
        return nets.Classifier(in_shape=(1, 12, 12, 12), classes=2, channels=(4, 8), strides=(2, 2),
                               num_res_units=1), 12, False
    if kind == "UNet":
        return nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,),
                         num_res_units=1), 12, True
    if kind == "SegResNet":
        return nets.SegResNet(spatial_dims=3, in_channels=1, out_channels=2, init_filters=8, blocks_down=(1, 1),
                              blocks_up=(1,)), 12, True
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["DenseNet", "ResNet", "SEResNet", "Classifier", "UNet", "SegResNet"])
def test_monai_networks_are_canonised_and_conserve(kind):
    """Small variants of the MONAI families (BatchNorm merge, residual sums, SE gates, Instance/GroupNorm, PReLU,
    skip concatenations, upsampling): without biases LRP-0 conserves the target score exactly. Checked in float64
    with epsilon -> 0, because LRP-0's ratios R/z get large where z ~ 0 and float32 cancellation would hide it.
    LRP-z+ and the presets run and give finite maps."""
    from napari_xai.core.segmentation import SegmentationScores

    torch.manual_seed(9)
    net, n, seg = _monai(kind)
    net = net.eval().double()
    with torch.no_grad():  # bias-free (BatchNorm at its initial statistics merges without a bias)
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    x = torch.rand(1, 1, n, n, n, dtype=torch.float64)
    if seg:
        mask = torch.zeros(n, n, n, dtype=torch.bool)
        mask[2:-2, 2:-2, 2:-2] = True
        net = SegmentationScores(net, mask)
    with torch.no_grad():
        out = net(x)[0]
    t = int(out.argmax())
    layers = list_layers(net, x)
    rule = [l.name for l in layers if l.kind == "rule"]
    assert not [l for l in layers if l.kind == "none"]
    cfg = LrpConfig(name="0", segments=[Segment(rule[0], rule[-1], preset_params("lrp-epsilon", epsilon=1e-13), "all")])
    ctx = RunContext()
    res = run_config(net, x, t, cfg, ctx, boundaries=False)
    assert float(res.relevance.sum()) == pytest.approx(float(out[t]), rel=1e-5), kind
    assert not ctx.warnings
    zplus = LrpConfig(name="z+", segments=[Segment(rule[0], rule[-1], preset_params("lrp-zplus"), "all")])
    assert torch.isfinite(run_config(net, x, t, zplus, RunContext(), boundaries=False).relevance).all()
    preset = get_method("lrp-epsilon-plus")
    assert torch.isfinite(preset.fn(net, x, t, preset.parse({}), RunContext()).relevance).all()


class TwoLayer(nn.Module):
    """x (4) -> Linear A (3, no bias) -> ReLU -> Linear B (2, no bias): LRP-0 by hand in numpy."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.a = nn.Linear(4, 3, bias=False)
        self.act = nn.ReLU()
        self.b = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(torch.tensor([[1.0, 0.5, 0.0, 0.2], [0.3, 1.0, 0.4, 0.0], [0.0, 0.2, 1.0, 0.9]]))
            self.b.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.25, 2.0]]))

    def forward(self, x):
        return self.b(self.act(self.a(self.flat(x))))


@pytest.mark.parametrize(("kind", "alpha"), [("pass", [0.0, 0.4]), ("clamp", [0.0, 0.2]), ("pass", [0.1, 1.0])])
def test_relevance_filter_inside_lrp_equals_the_hand_computation(kind, alpha):
    """Filters within LRP layers (Joa et al.): filter the hidden relevance, then LRP-0 down to the input."""
    from napari_xai.core.lrp import LayerFilter

    net = TwoLayer().eval()
    x = torch.tensor([0.8, 0.6, 1.0, 0.5]).view(1, 1, 1, 2, 2)
    xv = x.numpy().ravel()
    A, B = net.a.weight.detach().numpy(), net.b.weight.detach().numpy()
    h = np.maximum(A @ xv, 0)
    r_hidden = h * B[1]  # LRP-0 at the output of layer a (the logit split by h_j w_j)
    n = np.abs(r_hidden).max()
    frac = np.abs(r_hidden) / n
    if kind == "pass":
        filtered = np.where((frac >= alpha[0]) & (frac <= alpha[1]), r_hidden, 0.0)
    else:
        filtered = np.sign(r_hidden) * np.clip(frac, *alpha) * n
    z = A @ xv
    expected = (xv[None, :] * A / z[:, None] * filtered[:, None]).sum(axis=0)  # LRP-0 through layer a
    cfg = LrpConfig(name="f", default=preset_params("lrp-0"), filter=LayerFilter(kind, *alpha))
    out = run_config(net, x, 1, cfg)
    np.testing.assert_allclose(out.relevance.numpy().ravel(), expected, rtol=1e-5, atol=1e-7)
    assert out.used["filtered_layers"] == 1 and out.used["conservation"]["expected"] is False
    assert not np.allclose(expected.sum(), h @ B[1])  # the filter really changed the relevance
    # without the filter, LRP-0 on this bias-free net conserves the logit
    plain = run_config(net, x, 1, LrpConfig(name="plain", default=preset_params("lrp-0")))
    assert float(plain.relevance.sum()) == pytest.approx(float(h @ B[1]), rel=1e-5)
    # JSON round trip and bad ranges
    back = LrpConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.filter == cfg.filter
    with pytest.raises(UserError, match="must satisfy 0 <= alpha1 < alpha2 <= 1"):
        LrpConfig.from_dict({**cfg.to_dict(), "filter": {"kind": "pass", "alpha": [0.5, 0.2]}})
    with pytest.raises(UserError, match="filter kind must be one of pass, clamp"):
        LrpConfig.from_dict({**cfg.to_dict(), "filter": {"kind": "band", "alpha": 0.4}})


def test_the_documented_example_configurations_fit_the_shipped_demo_model():
    """docs/images/lrp_configs_example.json must name layers the demo model has (docs drift when it is retrained)."""
    from pathlib import Path

    from napari_xai.core.demo import demo_volume
    from napari_xai.core.explain import prepare_input
    from napari_xai.core.models import load_model

    model = load_model("demo", device="cpu")
    vol, _ = demo_volume(seed=0, condition=True)
    x, *_ = prepare_input(vol, model)
    layers = list_layers(model.module, x)
    configs, active = load_configs(Path(__file__).resolve().parents[1] / "docs" / "images" / "lrp_configs_example.json")
    assert len(configs) == 5
    for cfg in configs:
        resolved = resolve(cfg, layers)
        assert len(resolved.spans) == len(cfg.segments)


@pytest.mark.parametrize("name", ["lrp-epsilon", "lrp-epsilon-plus", "lrp-epsilon-plus-flat", "lrp-alpha1-beta0",
                                  "lrp-alpha2-beta1", "lrp-gamma"])
def test_composite_presets_are_configurations_run_by_the_one_engine(name, tmp_path):
    """A composite written to a configuration file and run by 'lrp' gives the composite method's bits."""
    from napari_xai.core.lrp import COMPOSITES

    c = COMPOSITES[name]
    m = get_method(name)
    params = m.parse({})
    cfg = c.config(params["epsilon"], params.get("gamma"))
    path = save_configs(tmp_path / "c.json", [cfg])
    back = load_config(path)
    assert back.to_dict() == cfg.to_dict() and (back.first, back.dense, back.default) == (cfg.first, cfg.dense, cfg.default)
    torch.manual_seed(13)
    model = Encoder().eval()
    x = torch.randn(1, 2, 8, 8, 8)
    preset = m.fn(model, x, 1, params, RunContext())
    lrp = get_method("lrp")
    configured = lrp.fn(model, x, 1, lrp.parse({"config": str(path)}), RunContext())
    assert torch.equal(preset.relevance, configured.relevance)
    assert preset.used["conservation"] == configured.used["conservation"]
