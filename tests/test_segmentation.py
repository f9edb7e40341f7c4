"""Segmentation targets, checked against independent facts.

* The masked-output relevance of LRP-epsilon (epsilon -> 0) on 3D U-Nets with
  skip concatenations, transposed convolutions or upsampling, biases zeroed, is
  conserved: the input relevance sums to the masked logit sum, and the relevance
  entering the output layer is exactly y_c * mask.
* The same holds for MONAI's BasicUNet and UNet (InstanceNorm, (Leaky/P)ReLU,
  residual units).
* Masks: the predicted region is the arg-max region; user masks and connected
  components at a point are resampled by nearest neighbour; bad masks are
  one-line errors.
* The pipeline returns the predicted segmentation on the volume grid, picks
  the first of a tuple output with a warning, and gives per-channel relevance
  for multi-channel inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xai.core.errors import UserError
from napari_xai.core.explain import explain
from napari_xai.core.lrp import LrpConfig, Segment, list_layers, run_config, save_configs
from napari_xai.core.lrp import preset_params
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.segmentation import Ray, SegmentationScores, component_at, predicted_labels, resolve_mask
from napari_xai.core.volumes import Volume


class TinyUNet(nn.Module):
    """enc -> pool -> mid -> up (transposed conv or trilinear upsampling) -> cat(skip) -> dec -> 1x1 out."""

    def __init__(self, cin=1, classes=3, up="transpose"):
        super().__init__()
        self.enc = nn.Conv3d(cin, 4, 3, padding=1)
        self.a1 = nn.ReLU()
        self.down = nn.MaxPool3d(2)
        self.mid = nn.Conv3d(4, 6, 3, padding=1)
        self.a2 = nn.ReLU()
        if up == "transpose":
            self.up = nn.ConvTranspose3d(6, 4, 2, stride=2)
        else:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="trilinear"), nn.Conv3d(6, 4, 1))
        self.a3 = nn.ReLU()
        self.dec = nn.Conv3d(8, 4, 3, padding=1)
        self.a4 = nn.ReLU()
        self.out = nn.Conv3d(4, classes, 1)

    def forward(self, x):
        e = self.a1(self.enc(x))
        u = self.a3(self.up(self.a2(self.mid(self.down(e)))))
        return self.out(self.a4(self.dec(torch.cat([u, e], dim=1))))


def zero_biases(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    return net.eval()


def epsilon_config(net, x, name="eps", eps=1e-7):
    rule = [l.name for l in list_layers(net, x) if l.kind == "rule"]
    return LrpConfig(name=name, segments=[Segment(rule[0], rule[-1], preset_params("lrp-epsilon", epsilon=eps), "all")])


@pytest.mark.parametrize("up", ["transpose", "trilinear"])
def test_masked_output_relevance_is_conserved_through_a_unet(up):
    torch.manual_seed(0)
    net = zero_biases(TinyUNet(up=up))
    x = torch.rand(1, 1, 8, 8, 8)
    with torch.no_grad():
        y = net(x)
    c = 1
    mask = predicted_labels(y)[...] == c
    assert mask.any()
    scores = SegmentationScores(net, mask)
    assert [n for n, _ in scores.named_modules()][1:4] == ["enc", "a1", "down"]  # the network's own names
    cfg = epsilon_config(scores, x)
    ctx = RunContext()
    res = run_config(scores, x, c, cfg, ctx, capture=["out"], boundaries=False)
    masked_sum = float((y[0, c] * mask).sum())
    assert res.used["conservation"]["output"] == pytest.approx(masked_sum, rel=1e-6)
    assert float(res.relevance.sum()) == pytest.approx(masked_sum, rel=1e-4)
    assert not ctx.warnings
    # the relevance entering the output layer is the class-c logit inside the mask, 0 elsewhere
    entering = res.used["_arrays"]["intermediate"]["out"]
    np.testing.assert_allclose(entering, (y[0, c] * mask).numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["BasicUNet", "UNet"])
def test_masked_output_conservation_on_monai_unets(kind):
    from monai.networks import nets

    torch.manual_seed(1)
    if kind == "BasicUNet":  # four 2x poolings: InstanceNorm needs more than one voxel at the bottom
        net = nets.BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=(2, 2, 4, 4, 4, 2))
        # LRP-0 through InstanceNorm at a 2^3 bottleneck makes relevances of ~1e8 that cancel; float32
        # cancellation then hides conservation, so this check runs in float64 with epsilon -> 0
        n, dtype, eps = 32, torch.float64, 1e-13
    else:
        net = nets.UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(4, 8, 8), strides=(2, 2),
                        num_res_units=1)
        n, dtype, eps = 16, torch.float32, 1e-7
    net = zero_biases(net).to(dtype)
    x = torch.rand(1, 1, n, n, n, dtype=dtype)
    with torch.no_grad():
        y = net(x)
    mask = torch.zeros(n, n, n, dtype=torch.bool)
    mask[n // 4:3 * n // 4, n // 4:3 * n // 4, n // 4:3 * n // 4] = True  # a user mask: class-1 logits in a cube
    scores = SegmentationScores(net, mask)
    ctx = RunContext()
    res = run_config(scores, x, 1, epsilon_config(scores, x, eps=eps), ctx, boundaries=False)
    masked_sum = float((y[0, 1] * mask).sum())
    assert float(res.relevance.sum()) == pytest.approx(masked_sum, rel=1e-3)
    from monai.networks.blocks import ResidualUnit

    units = sum(isinstance(m, ResidualUnit) for m in net.modules())
    assert res.used["residual_sums"] == units and (units > 0) == (kind == "UNet")  # one sum rule per residual unit
    assert not ctx.warnings


def _blobs():
    region = np.zeros((10, 10, 10), bool)
    region[1:4, 1:4, 1:4] = True
    region[6:9, 6:9, 6:9] = True
    return region


def test_component_at_point_and_its_errors():
    region = _blobs()
    comp = component_at(region, (7, 7, 7))
    assert comp.sum() == 27 and comp[6:9, 6:9, 6:9].all() and not comp[1:4, 1:4, 1:4].any()
    # corner-touching voxels: one component with 26-connectivity, two with 6
    diag = np.zeros((4, 4, 4), bool)
    diag[0, 0, 0] = diag[1, 1, 1] = True
    assert component_at(diag, (0, 0, 0), 26).sum() == 2 and component_at(diag, (0, 0, 0), 6).sum() == 1
    with pytest.raises(UserError, match="not in the predicted region"):
        component_at(region, (5, 5, 5))
    with pytest.raises(UserError, match="outside the volume"):
        component_at(region, (10, 0, 0))


class Blobs(nn.Module):
    """Logits from the input itself: class 1 where channel 0 > 0.5, class 2 where channel 0 < -0.5, else class 0."""

    def forward(self, x):
        v = x[:, :1]
        return torch.cat([torch.zeros_like(v), v - 0.5, -v - 0.5], dim=1)


def test_resolve_mask_predicted_user_and_component():
    x = torch.zeros(1, 1, 10, 10, 10)
    x[0, 0, 1:4, 1:4, 1:4] = 1.0
    x[0, 0, 6:9, 6:9, 6:9] = 1.0
    x[0, 0, 0, 8, 0] = -1.0
    y = Blobs()(x)
    seg = resolve_mask(y, 1, (10, 10, 10))
    assert seg.source == "predicted" and seg.voxels == 54 and seg.class_voxels == [1000 - 55, 54, 1]
    assert seg.score == pytest.approx(54 * 0.5)
    comp = resolve_mask(y, 1, (10, 10, 10), point=(2, 2, 2))
    assert comp.source == "component" and comp.voxels == 27 and comp.mask[1:4, 1:4, 1:4].all()
    # a user mask on a finer volume grid (20^3) is resampled to the 10^3 output grid by nearest neighbour
    user = np.zeros((20, 20, 20), np.uint8)
    user[12:18, 12:18, 12:18] = 3
    m = resolve_mask(y, 1, (20, 20, 20), mask=user)
    assert m.source == "mask" and m.voxels == 27 and m.mask[6:9, 6:9, 6:9].all()
    with pytest.raises(UserError, match=r"the mask has shape \(10, 10, 10\) but the input volume has \(20, 20, 20\)"):
        resolve_mask(y, 1, (20, 20, 20), mask=np.ones((10, 10, 10)))
    with pytest.raises(UserError, match="the mask is empty"):
        resolve_mask(y, 1, (10, 10, 10), mask=np.zeros((10, 10, 10)))
    with pytest.raises(UserError, match="vanishes on the model"):
        tiny = np.zeros((20, 20, 20))
        tiny[0, 0, 0] = 1  # voxel 0 of the fine grid maps to no coarse voxel centre
        resolve_mask(y, 1, (20, 20, 20), mask=tiny)
    with pytest.raises(UserError, match="no voxel is predicted as 'tumour'"):
        resolve_mask(torch.zeros(1, 3, 4, 4, 4), 2, (4, 4, 4), names=["bg", "edema", "tumour"])


def test_resolve_mask_component_from_a_3d_ray():
    """A click in a 3D view is a ray: the component is the first one of the target class that the ray meets."""
    x = torch.zeros(1, 1, 10, 10, 10)
    x[0, 0, 1:4, 1:4, 1:4] = 1.0  # blob A, nearer to the origin
    x[0, 0, 6:9, 6:9, 6:9] = 1.0  # blob B
    x[0, 0, 4, 4, 4] = -1.0  # a class-2 voxel between them, on the diagonal
    y = Blobs()(x)
    forward = resolve_mask(y, 1, (10, 10, 10), point=Ray((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    assert forward.source == "component" and forward.point == (1, 1, 1) and forward.voxels == 27
    assert forward.mask[1:4, 1:4, 1:4].all() and not forward.mask[6:9, 6:9, 6:9].any()
    # the same line seen from the other side meets blob B first; the origin may lie anywhere on the line
    backward = resolve_mask(y, 1, (10, 10, 10), point=Ray((5.0, 5.0, 5.0), (-2.0, -2.0, -2.0)))
    assert backward.point == (8, 8, 8) and backward.mask[6:9, 6:9, 6:9].all() and not backward.mask[1:4, 1:4, 1:4].any()
    assert backward.record()["ray"] == {"origin": [5.0, 5.0, 5.0], "direction": [-2.0, -2.0, -2.0]}
    # class 2's only voxel is on the line too
    assert resolve_mask(y, 2, (10, 10, 10), point=Ray((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))).point == (4, 4, 4)
    # a ray along the first axis at j = k = 5 meets no class-1 voxel
    with pytest.raises(UserError, match="the viewing ray through the click meets no voxel predicted as 'class 1'"):
        resolve_mask(y, 1, (10, 10, 10), point=Ray((0.0, 5.0, 5.0), (1.0, 0.0, 0.0)))


def loaded(net, channels=1, names=()):
    return LoadedModel(module=net.eval(), spec=ModelSpec(channels=channels, class_names=list(names)), source="test",
                       kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


def volume(data, name="v"):
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    return Volume(data=np.asarray(data, np.float32), affine=aff, name=name)


def test_pipeline_segmentation_lrp_conserves_and_returns_labels(tmp_path):
    torch.manual_seed(2)
    net = zero_biases(TinyUNet(classes=3))
    rng = np.random.default_rng(2)
    data = rng.random((1, 8, 8, 8)).astype(np.float32)
    vol = volume(data)
    with torch.no_grad():
        y = net(torch.from_numpy(data)[None])
    labels = y.argmax(1)[0].numpy()
    counts = np.bincount(labels.ravel(), minlength=3)
    expected_target = int(np.argmax(counts[1:])) + 1
    cfg = save_configs(tmp_path / "eps.json", [epsilon_config(net, torch.from_numpy(data)[None])])
    with pytest.raises(UserError, match=r"segmentation map, not class scores \(N, classes\).*--segmentation"):
        explain(vol, loaded(net), "lrp", params={"config": str(cfg)})
    rel = explain(vol, loaded(net, names=("background", "edema", "core")), "lrp", params={"config": str(cfg)},
                  segmentation=True)
    assert rel.target == expected_target and rel.target_name == ("edema", "core")[expected_target - 1]
    np.testing.assert_array_equal(rel.segmentation, labels.astype(np.uint16))
    np.testing.assert_array_equal(rel.mask, labels == expected_target)
    masked_sum = float((y[0, expected_target].numpy() * (labels == expected_target)).sum())
    assert rel.provenance["segmentation"]["score"] == pytest.approx(masked_sum, rel=1e-6)
    assert float(rel.data.sum()) == pytest.approx(masked_sum, rel=1e-4)
    assert rel.probabilities["edema"] == pytest.approx(counts[1] / counts.sum())
    # the same through a gradient method: input x gradient of the masked sum, completeness on a bias-free ReLU net
    ixg = explain(vol, loaded(net), "input-x-gradient", segmentation=True, target=expected_target)
    assert float(ixg.data.sum()) == pytest.approx(masked_sum, rel=1e-4)


def test_pipeline_user_mask_and_point_on_a_resampled_grid():
    x = np.zeros((1, 12, 12, 12), np.float32)
    x[0, 0:4, 0:4, 0:4] = 1.0  # blobs aligned to the 2x2x2 blocks of the 6^3 model grid
    x[0, 8:12, 8:12, 8:12] = 1.0
    vol = volume(x)
    model = loaded(Blobs(), names=("bg", "bright", "dark"))
    comp = explain(vol, model, "saliency", point=(9, 9, 9), input_shape=(6, 6, 6))
    assert comp.provenance["segmentation"]["mask"] == "component"
    assert comp.provenance["segmentation"]["mask_voxels"] == 8  # 2^3 voxels of the model grid
    expected = np.zeros((12, 12, 12), bool)
    expected[8:12, 8:12, 8:12] = True
    np.testing.assert_array_equal(comp.mask, expected)
    assert comp.segmentation.shape == (12, 12, 12) and comp.segmentation.dtype == np.uint16
    assert comp.target_name == "bright"
    user = np.zeros((12, 12, 12), np.uint8)
    user[0:6, 0:6, 0:6] = 1
    um = explain(vol, model, "saliency", mask=user, target="bright")
    # the gradient of the masked sum is 1 inside the mask (class-1 logit = v - 0.5), 0 outside
    np.testing.assert_allclose(um.data[0], user.astype(np.float32))
    with pytest.raises(UserError, match="the mask has shape"):
        explain(vol, model, "saliency", mask=np.ones((6, 6, 6)))
    with pytest.raises(UserError, match="not in the predicted region"):
        explain(vol, model, "saliency", point=(6, 0, 6))


class DeepSupervision(nn.Module):
    def __init__(self):
        super().__init__()
        self.unet = TinyUNet(classes=2)
        self.aux = nn.Conv3d(1, 2, 1)

    def forward(self, x):
        return self.unet(x), self.aux(x)


def test_tuple_output_picks_the_first_with_a_warning():
    torch.manual_seed(3)
    net = DeepSupervision().eval()
    data = np.random.default_rng(3).random((1, 8, 8, 8)).astype(np.float32)
    rel = explain(volume(data), loaded(net), "input-x-gradient", segmentation=True)
    assert any("2 outputs" in w and "output 0" in w for w in rel.warnings)
    ref = explain(volume(data), loaded(net.unet), "input-x-gradient", segmentation=True)
    np.testing.assert_allclose(rel.data, ref.data, rtol=1e-6, atol=1e-7)
    second = explain(volume(data), loaded(net), "input-x-gradient", segmentation=True, output_index=1, target=1,
                     mask=np.ones((8, 8, 8)))
    assert second.provenance["output_index"] == 1


def test_multichannel_input_gives_per_channel_relevance_and_shares():
    torch.manual_seed(4)
    net = zero_biases(TinyUNet(cin=3, classes=2))
    data = np.random.default_rng(4).random((3, 8, 8, 8)).astype(np.float32)
    data[2] *= 0.01  # a nearly empty modality gets a small share
    x = torch.from_numpy(data)[None]
    with torch.no_grad():
        y = net(x)
    mask = np.ones((8, 8, 8), bool)
    rel = explain(volume(data), loaded(net, channels=3), "lrp-epsilon", params={"epsilon": 1e-9}, mask=mask, target=1)
    assert rel.data.shape == (3, 8, 8, 8)
    assert float(rel.data.sum()) == pytest.approx(float(y[0, 1].sum()), rel=1e-3)
    shares = rel.channel_shares(["ADC", "MTT", "rCBF"])
    assert [s["name"] for s in shares] == ["ADC", "MTT", "rCBF"]
    assert sum(s["positive_share"] for s in shares) == pytest.approx(1.0)
    assert sum(s["negative_share"] for s in shares) == pytest.approx(1.0)
    for s, ch in zip(shares, rel.data):
        assert s["positive"] == pytest.approx(float(ch[ch > 0].sum()), rel=1e-5)
    assert shares[2]["positive_share"] < 0.1


def test_masks_are_refused_for_classifiers():
    class Clf(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(x.flatten(1)[:, :8])

    with pytest.raises(UserError, match="applies to segmentation models"):
        explain(volume(np.ones((1, 4, 4, 4))), loaded(Clf()), "saliency", mask=np.ones((4, 4, 4)))
