"""Readouts against a mask and per-channel shares, on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xai.core.errors import UserError
from napari_xai.core.evaluation.metrics import (
    binarize,
    channel_shares,
    ground_truth_inclusivity,
    inclusivity,
    input_inclusivity,
    mask_report,
    rank_accuracy,
    relevance_mass,
)


def line(values):
    """A (1, 1, n) volume from a list: easy to count by hand."""
    return np.asarray(values, dtype=float)[None, None, :]


def test_inclusivity_by_hand():
    a = line([1, 1, 1, 0, 0, 0]) > 0
    b = line([0, 1, 1, 1, 1, 0]) > 0
    assert inclusivity(a, b) == pytest.approx(2 / 4)  # |a ∩ b| = 2 of |b| = 4
    assert inclusivity(b, a) == pytest.approx(2 / 3)  # not symmetric
    assert inclusivity(a | b, b) == 1.0  # b ⊆ a∪b
    assert inclusivity(a, b, smooth=1.0) == pytest.approx(2 / 5)
    with pytest.raises(UserError, match="reference mask is empty"):
        inclusivity(a, np.zeros_like(a))
    with pytest.raises(UserError, match="one shape"):
        inclusivity(a, np.zeros((2, 2, 2), bool))


def test_ground_truth_and_input_inclusivity_by_hand():
    rel = line([0.5, -0.2, 0.0, 0.9, 0.1, -0.7])
    gt = line([1, 1, 1, 1, 0, 0])
    # positive relevance: voxels 0, 3, 4; within the 4 ground-truth voxels: 0 and 3 -> 2/4
    assert ground_truth_inclusivity(rel, gt) == pytest.approx(0.5)
    # threshold 0.3: voxels 0, 3 -> still 2/4; nonzero: 0, 1, 3 -> 3/4
    assert ground_truth_inclusivity(rel, gt, threshold=0.3) == pytest.approx(0.5)
    assert ground_truth_inclusivity(rel, gt, mode="nonzero") == pytest.approx(0.75)
    assert ground_truth_inclusivity(rel, gt, mode="negative") == pytest.approx(0.25)
    image = line([10, 0, 0, 10, 10, 10])  # mean 6.67 -> bright voxels 0, 3, 4, 5
    # positive relevance covers 0, 3, 4 of the 4 bright voxels
    assert input_inclusivity(rel, image) == pytest.approx(0.75)
    assert input_inclusivity(rel, image, input_threshold=-1) == pytest.approx(3 / 6)
    with pytest.raises(UserError, match="brighter than"):
        input_inclusivity(rel, image, input_threshold=100)


def test_relevance_mass_and_rank_accuracy_by_hand():
    rel = line([4.0, -1.0, 3.0, 2.0, 1.0, -2.0])
    mask = line([1, 1, 0, 0, 1, 0])
    m = relevance_mass(rel, mask)
    # positive relevance 4 + 3 + 2 + 1 = 10, inside the mask 4 + 1 = 5
    assert (m["inside"], m["total"], m["fraction"], m["voxels"]) == (5.0, 10.0, 0.5, 3)
    assert relevance_mass(rel, mask, "signed")["fraction"] == pytest.approx((4 - 1 + 1) / 7)
    assert relevance_mass(rel, mask, "negative")["fraction"] == pytest.approx(1 / 3)
    assert relevance_mass(rel, mask, "absolute")["fraction"] == pytest.approx(6 / 13)
    # K = 3 mask voxels; the top 3 values are voxels 0 (4), 2 (3), 3 (2): one of them in the mask
    assert rank_accuracy(rel, mask) == pytest.approx(1 / 3)
    assert rank_accuracy(-rel, mask) == pytest.approx(2 / 3)  # top 3 of -rel: voxels 5, 1, 4
    # ties at the K-th value are taken in voxel order
    assert rank_accuracy(line([1, 1, 1, 1]), line([0, 0, 1, 1])) == 0.0
    assert rank_accuracy(line([1, 1, 1, 1]), line([1, 1, 0, 0])) == 1.0
    with pytest.raises(UserError, match="mask is empty"):
        rank_accuracy(rel, np.zeros_like(mask))
    with pytest.raises(UserError, match="mask has shape"):
        relevance_mass(rel, np.ones((1, 1, 5)))


def test_multichannel_relevance_is_summed_over_channels():
    rel = np.stack([line([1.0, -2.0, 0.0])[None], line([1.0, 3.0, -1.0])[None]])[:, 0]  # (2, 1, 1, 3)
    assert binarize(rel).tolist() == [[[True, True, False]]]  # sums 2, 1, -1
    mask = line([0, 1, 0])
    assert relevance_mass(rel, mask)["fraction"] == pytest.approx(1 / 3)
    report = mask_report(rel, mask, image=line([5, 5, 0]))
    assert report["rank_accuracy"] == 0.0 and report["ground_truth_inclusivity"] == 1.0
    assert report["input_inclusivity"] == 1.0 and report["mask_voxels"] == 1


def test_channel_shares_by_hand():
    rel = np.zeros((3, 1, 1, 4))
    rel[0, 0, 0] = [1.0, 2.0, -1.0, 0.0]   # +3, -1
    rel[1, 0, 0] = [0.5, 0.5, 0.0, -3.0]   # +1, -3
    rel[2, 0, 0] = [0.0, 0.0, 0.0, 0.0]    # nothing
    shares = channel_shares(rel, ["ADC", "Tmax", "TTP"])
    assert [s["positive"] for s in shares] == [3.0, 1.0, 0.0]
    assert [s["negative"] for s in shares] == [-1.0, -3.0, 0.0]
    assert [s["net"] for s in shares] == [2.0, -2.0, 0.0]
    assert [s["positive_share"] for s in shares] == [0.75, 0.25, 0.0]
    assert [s["negative_share"] for s in shares] == [0.25, 0.75, 0.0]
    assert np.isnan(channel_shares(np.ones((2, 1, 1, 1)))[0]["negative_share"])  # no negative relevance at all
    with pytest.raises(UserError, match="2 channel names for 3 channels"):
        channel_shares(rel, ["a", "b"])
