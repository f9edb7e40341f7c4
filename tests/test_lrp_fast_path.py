"""LRP-0, LRP-ε, LRP-w² and LRP-flat run one modified pass per layer (the fast path, rules.py ``_terms``).

Checked against independent facts: Eqn. 5 evaluated literally (two passes per
layer, positive and negative activations apart), Zennit's own Epsilon / WSquare /
Flat rules with Zennit's BatchNorm canonizer on a small 3D net with BatchNorm
and signed inputs, relevance conservation, and a model whose weights change
between two explanations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xai.core.explain import explain, prepare
from napari_xai.core.lrp import UnifiedRule, preset_params
from napari_xai.core.methods.catalogue import get_method
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume


class BNNet(nn.Module):
    """Conv(bias) -> BN -> ReLU -> Conv(no bias) -> BN -> ReLU -> Flatten -> Linear: BatchNorm merges twice."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
            nn.Conv3d(4, 6, 3, padding=1, stride=2, bias=False), nn.BatchNorm3d(6), nn.ReLU(),
        )
        self.flat = nn.Flatten()
        self.fc = nn.Linear(6 * 4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(self.flat(self.features(x)))


def bn_net(seed: int = 0) -> BNNet:
    torch.manual_seed(seed)
    net = BNNet()
    with torch.no_grad():  # BatchNorm statistics away from the identity, so the merge matters
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def zennit_relevance(model, x, target, rule):
    """Zennit: ``rule`` on every Conv/Linear, Pass on ReLU, BatchNorm merged by Zennit's own canonizer."""
    from test_lrp_rules import zennit_lrp
    from zennit.canonizers import SequentialMergeBatchNorm

    return zennit_lrp(model, x, target, rule, canonizers=[SequentialMergeBatchNorm()])


def zennit_rule(method: str):
    from zennit.rules import Epsilon, Flat, WSquare

    return {"lrp-0": lambda: Epsilon(epsilon=1e-6), "lrp-epsilon": lambda: Epsilon(epsilon=0.25),
            "lrp-w-square": WSquare, "lrp-flat": Flat}[method]()


def run_method(method, model, x, target):
    m = get_method(method)
    return m.fn(model, x, target, m.parse({}), RunContext()).relevance


FAST = ["lrp-0", "lrp-epsilon", "lrp-w-square", "lrp-flat"]


@pytest.mark.parametrize("method", FAST)
def test_fast_path_equals_the_literal_rule_and_zennit_on_a_3d_net_with_batchnorm(method, monkeypatch):
    model = bn_net()
    x = torch.randn(1, 1, 8, 8, 8)  # signed: the first layer sees negative activations too
    with torch.no_grad():
        out = model(x)[0]
    target = int(out.argmax())
    fast = run_method(method, model, x, target)
    monkeypatch.setattr(UnifiedRule, "merge_signs", False)  # Eqn. 5 literally: a+ and a- in two passes
    literal = run_method(method, model, x, target)
    monkeypatch.undo()
    ref = zennit_relevance(model, x, target, zennit_rule(method))
    scale = float(ref.abs().max())
    assert scale > 0 and float(fast.abs().sum()) > 0
    assert torch.allclose(fast, literal, rtol=1e-4, atol=1e-5 * scale), float((fast - literal).abs().max())
    assert torch.allclose(fast, ref, rtol=1e-4, atol=1e-5 * scale), float((fast - ref).abs().max())


@pytest.mark.parametrize("method", FAST)
def test_fast_path_uses_one_pass_per_layer_and_z_plus_two(method):
    rule = UnifiedRule(preset_params(method))
    assert len(rule.input_modifiers) == 1
    assert len(UnifiedRule(preset_params("lrp-z-plus")).input_modifiers) == 2  # w+ on a+, w- on a-: two passes
    assert len(UnifiedRule(preset_params("lrp-alpha-beta")).input_modifiers) == 4


@pytest.mark.parametrize("method", ["lrp-0", "lrp-w-square", "lrp-flat"])
def test_fast_path_conserves_with_merged_batchnorm_when_biases_are_left_out(method):
    """Without biases (also the merged BatchNorm biases), these rules conserve layer by layer: sum R = the logit."""
    from napari_xai.core.lrp import LrpConfig, run_config

    model = bn_net(seed=3)
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        out = model(x)[0]
    target = int(out.argmax())
    res = run_config(model, x, target, LrpConfig(name=method, default=preset_params(method), zero_bias=True),
                     RunContext(), boundaries=False)
    assert res.used["merged_batchnorm"] == 2
    assert float(res.relevance.sum()) == pytest.approx(float(out[target]), rel=1e-3)  # 1e-6 stabiliser


def _loaded(net):
    return LoadedModel(module=net, spec=ModelSpec(channels=1, class_names=["a", "b", "c"]), source="test",
                       kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


@pytest.mark.parametrize("method", ["lrp-0", "lrp-epsilon", "lrp-w-square"])
def test_a_weight_change_between_two_explanations_is_seen(method):
    """Retrained weights (in place, as an optimiser step does): the next explanation uses them, nothing stale."""
    net = bn_net(seed=4)
    model = _loaded(net)
    rng = np.random.default_rng(0)
    vol = Volume(data=rng.normal(size=(1, 8, 8, 8)).astype(np.float32), affine=np.eye(4), name="v")
    x = prepare(vol, model, model_spacing="stored").x
    assert tuple(x.shape) == (1, 1, 8, 8, 8)

    def both():
        rel = explain(vol, model, method, target=0, model_spacing="stored")
        ref = zennit_relevance(net, x, 0, zennit_rule(method))[0, 0].numpy()
        ours = np.asarray(rel.data).reshape(ref.shape)
        return ours, ref

    before, ref_before = both()
    with torch.no_grad():  # an optimiser step changes weights in place
        net.features[3].weight.mul_(-1.5)
        net.features[0].weight.add_(0.2)
        net.features[4].running_var.mul_(3.0)
        net.fc.weight.mul_(0.5)
    after, ref_after = both()
    scale = float(np.abs(ref_after).max())
    assert not np.allclose(ref_before, ref_after, atol=1e-3 * scale)  # the change matters to Zennit
    assert not np.allclose(before, after, atol=1e-3 * scale)  # and to us
    np.testing.assert_allclose(after, ref_after, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(before, ref_before, rtol=1e-4, atol=1e-5 * float(np.abs(ref_before).max()))
