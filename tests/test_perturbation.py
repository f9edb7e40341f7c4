"""Voxel flipping, flipping curves and channel ablation (core.evaluation.flipping) against hand-computed cases.

Facts used:

* a bias-free linear model ``y_c = sum_i W[c, i] x_i`` loses exactly
  ``W[c, i] x_i`` of its logit when voxel i is set to 0, so after flipping a
  set S the logit is ``y_c - sum_{i in S} W[c, i] x_i`` (numpy, from the weights);
* hence the most-relevant-first curve with ``R = W[c] * x`` is the logit minus
  the running sum of the sorted relevance, and it lies at or below the random
  and the least-relevant-first curves at every step;
* a 1x1 convolution with weights (1, 2, 3) followed by ReLU, global average
  pooling and a sum gives the logit ``6 mean(x)`` for x > 0; channel c carries
  ``w_c mean(x)`` of it (LRP-0 conserves here) and ablating it removes exactly that.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from model_factory import ThreeChannels
from napari_xai.core.errors import Cancelled, UserError
from napari_xai.core.lrp import LrpConfig
from napari_xai.core.lrp import preset_params
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.evaluation.flipping import (
    Scorer,
    flip_curve,
    flip_voxels,
    flipped_mask,
    predict_flipped,
    region_ranking,
    replacement,
)
from napari_xai.core.evaluation.ablation import ablate, channel_relevance
from napari_xai.core.volumes import Volume

SHAPE = (6, 5, 4)


def loaded(net, names=("healthy", "sick")):
    return LoadedModel(module=net.eval(), spec=ModelSpec(channels=1, class_names=list(names)), source="test",
                       kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


@pytest.fixture
def linear():
    rng = np.random.default_rng(11)
    n = int(np.prod(SHAPE))
    w = rng.normal(size=(2, n)).astype(np.float32)
    net = nn.Sequential(nn.Flatten(), nn.Linear(n, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(w))
    x = (rng.random((1, *SHAPE)) + 0.5).astype(np.float32)
    vol = Volume(data=x, affine=np.diag([2.0, 2.0, 2.0, 1.0]), name="t1")
    return loaded(net), vol, w, x


def test_flip_voxels_and_baselines():
    data = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4) + 1
    vol = Volume(data=data, affine=np.eye(4), name="v")
    mask = np.zeros((2, 3, 4), bool)
    mask[0, 1, 2] = mask[1, 2, 3] = True
    out = flip_voxels(vol, mask, "zero")
    assert out.data[0, 0, 1, 2] == 0 and out.data[0, 1, 2, 3] == 0
    assert np.array_equal(out.data[0][~mask], data[0][~mask]) and vol.data[0, 0, 1, 2] == 7  # the input is untouched
    assert np.allclose(flip_voxels(vol, mask, "mean").data[0][mask], 12.5)  # mean of 1..24
    blurred = replacement(np.ones((1, 5, 5, 5), np.float32) * 4, "blur")
    assert np.allclose(blurred, 4.0)  # blurring a constant image leaves it unchanged
    with pytest.raises(UserError, match="the flip mask is empty"):
        flip_voxels(vol, np.zeros((2, 3, 4)), "zero")
    with pytest.raises(UserError, match=r"the flip mask has shape \(3, 3, 4\) but the input volume has \(2, 3, 4\)"):
        flip_voxels(vol, np.ones((3, 3, 4)), "zero")
    with pytest.raises(UserError, match="baseline must be one of zero, mean, blur"):
        flip_voxels(vol, mask, "noise")


def test_predict_flipped_removes_exactly_the_masked_contributions(linear):
    model, vol, w, x = linear
    mask = np.zeros(SHAPE, bool)
    mask[1:3, 2:4, 0:2] = True
    res = predict_flipped(model, vol, mask, "zero", target="sick")
    before = w @ x.ravel()
    after = before - w @ (x * mask).ravel()
    np.testing.assert_allclose(res["before"]["logits"], before, rtol=1e-5)
    np.testing.assert_allclose(res["after"]["logits"], after, rtol=1e-4, atol=1e-5)
    assert res["delta"] == pytest.approx(after[1] - before[1], rel=1e-4, abs=1e-5)
    assert res["voxels"] == 8 and res["target_name"] == "sick"
    p = np.exp(after - after.max())
    np.testing.assert_allclose(res["after"]["probabilities"], p / p.sum(), rtol=1e-5)


def test_morf_curve_is_the_logit_minus_the_running_sum_of_sorted_relevance(linear):
    model, vol, w, x = linear
    rel = (w[1] * x.ravel()).reshape(SHAPE)
    n = rel.size
    logit = float(w[1] @ x.ravel())
    morf = flip_curve(model, vol, rel, "sick", order="morf", baseline="zero", region=1, steps=10, max_fraction=0.5)
    counts = [round(f * n) for f in morf.fractions]
    top = np.sort(rel.ravel())[::-1]
    expected = [logit - top[:c].sum() for c in counts]
    np.testing.assert_allclose(morf.scores, expected, rtol=1e-4, atol=1e-4)
    assert morf.voxels == counts and morf.fractions[0] == 0 and morf.fractions[-1] == 0.5
    assert morf.aopc == pytest.approx(np.mean(expected[0] - np.asarray(expected)), rel=1e-4)
    lerf = flip_curve(model, vol, rel, "sick", order="lerf", baseline="zero", region=1, steps=10, max_fraction=0.5)
    bottom = np.sort(rel.ravel())
    np.testing.assert_allclose(lerf.scores, [logit - bottom[:c].sum() for c in counts], rtol=1e-4, atol=1e-4)
    rand = flip_curve(model, vol, rel, "sick", order="random", baseline="zero", region=1, steps=10, max_fraction=0.5)
    assert all(m <= r + 1e-4 and r <= l + 1e-4 for m, r, l in zip(morf.scores, rand.scores, lerf.scores))
    assert morf.aopc > rand.aopc > lerf.aopc
    # the mask of the last step holds exactly the most relevant half of the voxels
    last = flipped_mask(rel, 0.5, region=1, order="morf")
    assert last.sum() == counts[-1] and rel[last].min() >= rel[~last].max()


def test_region_ranking_sums_cubes():
    rel = np.zeros((4, 4, 2))
    rel[2:4, 0:2, :] = 1.0  # region (1, 0, 0) of 2-voxel cubes holds 8
    rel[0, 3, 1] = 5.0  # region (0, 1, 0) holds 5
    rel[3, 3, 0] = -2.0  # region (1, 1, 0) holds -2
    labels, ranked = region_ranking(rel, 2, "morf")
    assert labels.shape == (4, 4, 2) and labels.max() == 3  # 2 x 2 x 1 regions
    assert list(ranked) == [2, 1, 0, 3]
    assert list(region_ranking(rel, 2, "lerf")[1]) == [3, 0, 1, 2]
    with pytest.raises(UserError, match="order must be one of morf, lerf, random"):
        region_ranking(rel, 2, "up")


def test_curve_bad_input_and_cancel(linear):
    model, vol, w, x = linear
    rel = np.ones(SHAPE)
    with pytest.raises(UserError, match=r"the relevance has shape \(3, 3, 3\) but the input volume has \(6, 5, 4\)"):
        flip_curve(model, vol, np.ones((3, 3, 3)))
    with pytest.raises(UserError, match="max_fraction must be in"):
        flip_curve(model, vol, rel, max_fraction=0)
    with pytest.raises(Cancelled):
        flip_curve(model, vol, rel, should_stop=lambda: True)


def test_channel_relevance_and_ablation_are_hand_computed():
    rng = np.random.default_rng(5)
    x = (rng.random((1, 4, 4, 4)) + 0.5).astype(np.float32)
    vol = Volume(data=x, affine=np.eye(4), name="v")
    model = loaded(ThreeChannels())
    m = float(x.mean())
    scorer = Scorer(model, vol, "sick")
    assert scorer.base_logits[1] == pytest.approx(6 * m, rel=1e-5)
    res = channel_relevance(model, vol, "conv", "sick", LrpConfig(name="zero", default=preset_params("lrp-0")),
                            scorer=scorer)
    pos = [c["positive"] for c in res["channels"]]
    np.testing.assert_allclose(pos, [m, 2 * m, 3 * m], rtol=1e-4)
    assert all(c["negative"] == 0 for c in res["channels"])
    np.testing.assert_allclose([c["activation"] for c in res["channels"]], [m, 2 * m, 3 * m], rtol=1e-5)
    assert res["volumes"].shape == (3, 4, 4, 4)
    np.testing.assert_allclose(res["volumes"][2], 3 * x[0] / x.size, rtol=1e-4)  # relevance of channel 2 per voxel
    np.testing.assert_allclose(res["activations"][1], 2 * x[0], rtol=1e-5)  # conv output of channel 1 = 2 x
    out = ablate(model, vol, "conv", [2], scorer=scorer)
    assert out["after"]["logits"][1] == pytest.approx(3 * m, rel=1e-5) and out["delta"] == pytest.approx(-3 * m, rel=1e-5)
    assert out["layer_channels"] == 3
    assert ablate(model, vol, "conv", [0, 1, 2], scorer=scorer)["after"]["logits"][1] == pytest.approx(0.0, abs=1e-6)
    # the model is unchanged afterwards: no hook is left behind
    assert Scorer(model, vol, "sick").base_logits[1] == pytest.approx(6 * m, rel=1e-5)
    with pytest.raises(UserError, match=r"channel 5 does not exist: layer 'conv' has 3 channels \(0..2\)"):
        ablate(model, vol, "conv", [5], scorer=scorer)
    with pytest.raises(UserError, match="layer 'nope' does not exist"):
        ablate(model, vol, "nope", [0], scorer=scorer)
    with pytest.raises(UserError, match="choose at least one channel"):
        ablate(model, vol, "conv", [], scorer=scorer)


class VoxelSeg(nn.Module):
    """Two-class logit map: class 1 = 2 relu(x - 0.5) per voxel, class 0 = relu(0.5 - x)."""

    def forward(self, x):
        return torch.cat([torch.relu(0.5 - x), 2 * torch.relu(x - 0.5)], dim=1)


def test_segmentation_curve_keeps_the_unperturbed_mask():
    """Score = sum over the predicted class-1 region of 2 (x - 0.5); zeroing a voxel there removes its term."""
    rng = np.random.default_rng(8)
    x = rng.random((1, 5, 5, 5)).astype(np.float32)
    vol = Volume(data=x, affine=np.eye(4), name="v")
    model = loaded(VoxelSeg())
    inside = x[0] > 0.5
    terms = np.where(inside, 2 * (x[0] - 0.5), 0.0)
    rel = terms  # the relevance of each voxel is its own term
    curve = flip_curve(model, vol, rel, "sick", order="morf", region=1, steps=5, max_fraction=0.5, segmentation=True)
    top = np.sort(terms.ravel())[::-1]
    expected = [terms.sum() - top[:v].sum() for v in curve.voxels]
    np.testing.assert_allclose(curve.scores, expected, rtol=1e-5, atol=1e-5)
    assert np.isnan(curve.probabilities[0])  # segmentation scores are masked sums, not probabilities


def test_flipping_atlas_regions_in_relevance_order(linear, tmp_path):
    """Regions of a user atlas (slabs 1, 2, 3; the rest never flipped): each step removes one slab's w x, by hand."""
    import nibabel as nib

    model, vol, w, x = linear
    lab = np.zeros(SHAPE, np.int16)
    lab[0:2] = 1
    lab[2:4] = 2
    lab[4:5] = 3  # i = 5 stays outside the atlas
    nib.save(nib.Nifti1Image(lab, vol.affine), str(tmp_path / "slabs.nii.gz"))
    rel = (w[1] * x.ravel()).reshape(SHAPE)
    curve = flip_curve(model, vol, rel, "sick", order="morf", baseline="zero", steps=3, max_fraction=1.0,
                       atlas=str(tmp_path / "slabs.nii.gz"))
    sums = {v: float(rel[lab == v].sum()) for v in (1, 2, 3)}
    order = sorted(sums, key=lambda v: -sums[v])
    logit = float(rel.sum())
    expected = [logit - sum(sums[v] for v in order[:k]) for k in range(4)]
    np.testing.assert_allclose(curve.scores, expected, rtol=1e-4, atol=1e-4)
    assert curve.voxels[-1] == int((lab > 0).sum())  # the voxels outside the atlas are never flipped
    assert curve.flipped == [f"label {v}" for v in order] and curve.record()["atlas"].endswith("slabs.nii.gz")


def test_nan_voxels_count_as_zero_as_in_explain(linear):
    """A NaN/Inf voxel is 0 for the model (Volume.model_copy); flipping scores stay finite and hand-computed."""
    model, vol, w, x = linear
    bad = x.copy()
    bad[0, 0, 0, 0], bad[0, 5, 4, 3] = np.nan, np.inf
    clean = x.copy()
    clean[0, 0, 0, 0] = clean[0, 5, 4, 3] = 0.0
    nan_vol = Volume(data=bad, affine=vol.affine, name="t1")
    mask = np.zeros(SHAPE, bool)
    mask[2:4, 1:3, 1:3] = True
    res = predict_flipped(model, nan_vol, mask, "blur", target="sick")
    np.testing.assert_allclose(res["before"]["logits"], w @ clean.ravel(), rtol=1e-5)
    assert np.isfinite(res["after"]["logits"]).all()
    rel = (w[1] * clean.ravel()).reshape(SHAPE)
    curve = flip_curve(model, nan_vol, rel, "sick", order="morf", baseline="zero", region=1, steps=4, max_fraction=0.5)
    top = np.sort(rel.ravel())[::-1]
    expected = [float(w[1] @ clean.ravel()) - top[:c].sum() for c in curve.voxels]
    np.testing.assert_allclose(curve.scores, expected, rtol=1e-4, atol=1e-4)
    assert np.isnan(nan_vol.data[0, 0, 0, 0])  # the user's volume is untouched


def test_baseline_sets_keep_the_cli_contract_and_share_one_maker():
    """docs/cli.md: flip/robustness --baseline zero|mean|blur; the methods' baseline parameter zero|min|blur.
    Both sets come from one table, and the flipping mean/blur images are hand-checkable."""
    from napari_xai.core.evaluation.flipping import BASELINES as FLIP
    from napari_xai.core.methods.baselines import BASELINE_KINDS
    from napari_xai.core.methods.catalogue import get_method

    assert FLIP == ("zero", "mean", "blur")
    assert get_method("integrated-gradients").param("baseline").choices == ("zero", "min", "blur")
    assert set(FLIP) | {"min"} == set(BASELINE_KINDS)
    data = np.stack([np.full((4, 4, 4), 2.0, np.float32), np.arange(64, dtype=np.float32).reshape(4, 4, 4)])
    mean = replacement(data, "mean")
    np.testing.assert_allclose(mean[0], 2.0)
    np.testing.assert_allclose(mean[1], 31.5)  # (0 + 63) / 2
    blurred = replacement(data, "blur", sigma=1.0)
    np.testing.assert_allclose(blurred[0], 2.0, rtol=1e-6)  # a constant channel stays constant
    assert blurred[1].min() > data[1].min() and blurred[1].max() < data[1].max()  # a ramp is smoothed inward
