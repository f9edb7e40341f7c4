"""Network dissection with an atlas (core.dissect, ``napari-xai dissect``) on hand-built channels.

The model is a 1x1x1 convolution of a two-channel input, so each channel's
activation map is a known mix of the inputs. The inputs are indicator volumes
of two atlas regions A (i < 2) and B (5 <= i < 7), 200 voxels each of 1000:

* channel 0 = [A], channel 1 = [B]: the top 15 % (quantile 0.85) of a channel
  that is 1 on 20 % of the voxels is exactly its region, IoU 1;
* channel 2 = 0: dead;
* channel 3 = [A] + [B]: the mask is A ∪ B, IoU with A = 200 / 400 = 0.5;
* channel 4 = 2[A] + [B]: the top 15 % are all on A (value 2), IoU 1 with A.

With a pooled linear read-out ``y_1 = mean(ch0) + 3 mean(ch1)`` (no biases),
LRP-0 at the convolution's output gives channel 0 a relevance of 0.2 and
channel 1 of 0.6: shares 0.25 and 0.75.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from model_factory import run_cli

from napari_xai.core.atlas import load_atlas
from napari_xai.core.dissect import dissect
from napari_xai.core.errors import UserError
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume

SHAPE = (10, 10, 10)
NET = '''
import torch
from torch import nn


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.mix = nn.Conv3d(2, 5, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(5, 2, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(torch.tensor([[1., 0.], [0., 1.], [0., 0.], [1., 1.], [2., 1.]]).view(5, 2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[0., 0., 0., 0., 0.], [1., 3., 0., 0., 0.]]))

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.mix(x)), 1))
'''


def regions():
    a = np.zeros(SHAPE, bool)
    a[:2] = True
    b = np.zeros(SHAPE, bool)
    b[5:7] = True
    return a, b


@pytest.fixture
def setup(tmp_path):
    a, b = regions()
    atlas = np.zeros(SHAPE, np.int16)
    atlas[a], atlas[b] = 1, 2
    nib.save(nib.Nifti1Image(atlas, np.eye(4)), str(tmp_path / "atlas.nii.gz"))
    (tmp_path / "atlas.csv").write_text("index,name\n1,A\n2,B\n")
    x = np.stack([a, b]).astype(np.float32)
    nib.save(nib.Nifti1Image(np.moveaxis(x, 0, -1), np.eye(4)), str(tmp_path / "sub.nii.gz"))
    ns: dict = {}
    exec(NET, ns)
    (tmp_path / "mixer.py").write_text(NET)
    torch.save(ns["Mixer"]().state_dict(), tmp_path / "mixer.pt")
    model = LoadedModel(module=ns["Mixer"]().eval(), spec=ModelSpec(channels=2), source="test", kind="python",
                        sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)
    vol = Volume(data=x, affine=np.eye(4), name="sub")
    return tmp_path, model, vol


def test_channels_get_their_hand_computed_regions(setup):
    tmp, model, vol = setup
    atlas = load_atlas(tmp / "atlas.nii.gz", labels=tmp / "atlas.csv")
    res = dissect(model, [vol], atlas, "mix", quantile=0.85)
    rows = {r.channel: r for r in res.rows}
    assert (rows[0].region, rows[0].iou, rows[0].second_iou) == ("A", 1.0, 0.0) and rows[0].detector
    assert (rows[1].region, rows[1].iou) == ("B", 1.0)
    assert rows[2].dead and not rows[2].detector and rows[2].region == "" and rows[2].voxels == 0
    assert rows[3].iou == pytest.approx(0.5) and rows[3].second_iou == pytest.approx(0.5) and rows[3].voxels == 400
    assert (rows[4].region, rows[4].iou, rows[4].threshold) == ("A", 1.0, 2.0)
    assert "4 of 5 channels detect a region" in res.summary() and "1 dead" in res.summary()
    # two subjects: the counts add up; B is missing in the second, so channel 1's zeros there never join its mask
    empty_b = Volume(data=np.stack([vol.data[0], np.zeros(SHAPE, np.float32)]), affine=np.eye(4), name="s2")
    two = {r.channel: r for r in dissect(model, [vol, empty_b], atlas, "mix", quantile=0.85).rows}
    assert two[0].iou == 1.0 and two[0].voxels == 400
    assert two[1].voxels == 200 and two[1].iou == pytest.approx(200 / 400)  # B counted in both subjects
    with pytest.raises(UserError, match="no layer 'nope'"):
        dissect(model, [vol], atlas, "nope")
    with pytest.raises(UserError, match="not a 3D feature map"):
        dissect(model, [vol], atlas, "fc")
    with pytest.raises(UserError, match="quantile"):
        dissect(model, [vol], atlas, "mix", quantile=1.0)


def test_cli_with_relevance_shares(setup, capsys):
    tmp, *_ = setup
    out = tmp / "channels.csv"
    args = ["dissect", tmp / "sub.nii.gz", "--model", f"{tmp / 'mixer.py'}:Mixer", "--weights", tmp / "mixer.pt",
            "--atlas", tmp / "atlas.nii.gz", "--labels", tmp / "atlas.csv", "--layer", "mix", "--quantile", "0.85",
            "--relevance", "--target", "1", "--out", out, "--quiet"]
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    assert [int(r["channel"]) for r in rows[:2]] == [1, 0]  # sorted by relevance share
    assert float(rows[0]["relevance_share"]) == pytest.approx(0.75, abs=1e-4)
    assert float(rows[1]["relevance_share"]) == pytest.approx(0.25, abs=1e-4)
    assert rows[0]["region"] == "B" and rows[0]["detector"] == "1"
    side = json.loads(out.with_name(out.name + ".xai.json").read_text())
    assert side["layer"] == "mix" and side["quantile"] == 0.85 and side["relevance"]["target"] == "1"
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "exists" in err and err.count("\n") == 1
