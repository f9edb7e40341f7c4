"""Sanity checks (model-parameter randomization, Adebayo et al. 2018) against independent facts.

* Spearman, SSIM and top-k overlap of hand-made arrays equal hand-computed values.
* A "method" that ignores the model (an edge detector of the input) keeps
  correlation 1 at every randomization step; saliency of a conv net does not.
* The user's model is byte-identical afterwards; layers are randomized in
  execution order even when the modules are registered in another order.
"""

from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from model_factory import nifti, python_source, torchscript_source
from model_factory import run_cli as run
from napari_xai.core.errors import Cancelled, UserError
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.evaluation.similarity import (
    compare_maps,
    rank_similarity,
    spearman,
    ssim,
    top_overlap,
    verdict,
)
from napari_xai.core.evaluation.sanity import (
    parametrised_layers,
    randomization_test,
    randomize_layer,
    sanity_check,
    weights_sha256,
)
from napari_xai.core.volumes import Volume


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv3d(4, 4, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))), 1))


class Shuffled(nn.Module):
    """Registered fc, conv2, norm, conv1 (and a parameter-free ReLU) but run conv1 -> norm -> conv2 -> fc."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.conv2 = nn.Conv3d(2, 3, 1)
        self.norm = nn.BatchNorm3d(2)
        self.act = nn.ReLU()
        self.conv1 = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x):
        h = self.conv2(self.act(self.norm(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3, 4)))


def loaded(net, names=("class 0", "class 1")):
    return LoadedModel(module=net.eval(), spec=ModelSpec(channels=1, class_names=list(names)), source="test",
                       kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


def volume(shape=(12, 12, 12), seed=0):
    rng = np.random.default_rng(seed)
    return Volume(data=(rng.normal(size=(1, *shape)) + 2.0).astype(np.float32), affine=np.diag([2.0, 2.0, 2.0, 1.0]),
                  name="v")


def state_bytes(module):
    return {k: v.detach().cpu().numpy().tobytes() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- metrics


def test_spearman_of_hand_made_arrays():
    # ranks (1,2,3) vs (3,1,2): d = (-2, 1, 1), rho = 1 - 6 * 6 / (3 * 8) = -0.5
    assert spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert spearman([10, 20, 30, 40], [1, 4, 9, 16]) == pytest.approx(1.0)  # any increasing map
    assert spearman([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    # ties share their average rank: (1.5, 1.5, 3) vs (1, 2, 3): cov 1.5, variances 1.5 and 2 -> sqrt(3)/2
    assert spearman([5, 5, 9], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman([2, 2, 2], [1, 2, 3]))  # undefined for a constant map
    with pytest.raises(UserError, match="cannot be compared"):
        spearman([1, 2], [1, 2, 3])


def test_ssim_of_identical_and_constant_maps():
    a = np.random.default_rng(1).random((8, 9, 7))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, 1.0 - a, data_range=1.0) < 0
    # constants c1, c2 (no variance): SSIM = (2 c1 c2 + C1) / (c1² + c2² + C1), C1 = (0.01 L)², L = 1
    c1, c2 = np.full((6, 6, 6), 0.2), np.full((6, 6, 6), 0.6)
    assert ssim(c1, c2, data_range=1.0) == pytest.approx((2 * 0.2 * 0.6 + 1e-4) / (0.04 + 0.36 + 1e-4))


def test_top_overlap_counts_shared_top_voxels():
    a = np.arange(20.0)
    b = a.copy()
    b[[19, 10]] = b[[10, 19]]  # b's top 5 (25 %) are voxels 15..18 and 10: 4 of a's 5
    assert top_overlap(a, b, 0.25) == pytest.approx(4 / 5)
    assert top_overlap(a, b, 0.25, jaccard=True) == pytest.approx(4 / 6)
    assert top_overlap(a, a[::-1].copy(), 0.25) == 0.0
    assert top_overlap(a, -a, 0.05) == 1.0  # ranked by |value|: voxel 19 is on top of both
    m = compare_maps(a.reshape(1, 4, 5), a.reshape(1, 4, 5))  # (C, ...) maps are summed over channels
    assert m["spearman"] == pytest.approx(1.0) and m["ssim"] == pytest.approx(1.0) and m["top_overlap"] == 1.0


# --------------------------------------------------------------------------- randomization


def test_a_model_independent_map_keeps_correlation_one():
    torch.manual_seed(0)
    net = ConvNet().eval()
    x = torch.from_numpy(volume().data)[None]
    edges = np.linalg.norm(np.gradient(x[0, 0].numpy()), axis=0)  # an "edge detector": ignores the model

    res = randomization_test(net, lambda model: edges, x, keep_maps=True)
    assert res.layers == ["fc", "conv2", "conv1"]
    assert len(res.rows) == 4 and len(res.maps) == 4
    for row in res.rows:
        assert row["spearman"] == pytest.approx(1.0) and row["spearman_abs"] == pytest.approx(1.0)
        assert row["ssim"] == pytest.approx(1.0) and row["top_overlap"] == 1.0


def test_saliency_of_a_conv_net_changes_when_the_top_layers_are_randomized():
    torch.manual_seed(0)
    model = loaded(ConvNet())
    vol = volume()
    res = sanity_check(vol, model, "saliency", target=1, keep_maps=True)
    assert res.rows[0]["spearman"] == pytest.approx(1.0)
    assert [r["randomized"] for r in res.rows] == [[], ["fc"], ["fc", "conv2"], ["fc", "conv2", "conv1"]]
    later = res.rows[1:]
    assert max(abs(r["spearman"]) for r in later) < 0.6
    assert max(r["spearman_abs"] for r in later) < 0.5
    assert max(r["top_overlap"] for r in later) < 0.5
    assert not np.allclose(res.maps[0], res.maps[-1])
    # every step explains the original class; provenance names the test and the model
    assert res.provenance["target"]["index"] == 1 and res.provenance["method"] == "saliency"
    assert res.provenance["model"]["sha256"] == "0" * 64 and len(res.provenance["model"]["weights_sha256"]) == 64
    assert [p["target"]["index"] for p in res.step_provenance] == [1, 1, 1, 1]
    assert res.step_provenance[2]["sanity"]["randomized_layers"] == ["fc", "conv2"]


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_the_users_model_is_byte_identical_afterwards(mode):
    torch.manual_seed(3)
    net = ConvNet()
    net.train()  # the session must not leave it in eval mode either
    model = loaded(net)
    net.train()
    before, digest = state_bytes(net), weights_sha256(net)
    sanity_check(volume(), model, "integrated-gradients", target=0, mode=mode, params={"steps": 4})
    assert state_bytes(net) == before and weights_sha256(net) == digest
    assert model.module is net and net.training


def test_layers_are_randomized_in_execution_order_not_registration_order():
    torch.manual_seed(0)
    net = Shuffled().eval()
    x = torch.randn(1, 1, 6, 6, 6)
    registered = [n for n, m in net.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    assert registered == ["fc", "conv2", "norm", "conv1"]
    assert [layer.name for layer in parametrised_layers(net, x)] == ["conv1", "norm", "conv2", "fc"]
    res = randomization_test(net, lambda model: np.arange(27.0), x)
    assert res.layers == ["fc", "conv2", "norm", "conv1"]  # output end first
    res = randomization_test(net, lambda model: np.arange(27.0), x, last=2)
    assert res.layers == ["fc", "conv2"] and res.provenance["layers_in_model"] == 4


def test_independent_mode_randomizes_one_layer_and_restores_it():
    """A 'map' made of the fc weights changes only where fc is random."""
    torch.manual_seed(0)
    net = ConvNet().eval()
    x = torch.randn(1, 1, 5, 5, 5)

    def fc_weights(model):
        return model.fc.weight.detach().numpy().copy()

    ind = randomization_test(net, fc_weights, x, mode="independent", seed=7, keep_maps=True)
    assert [r["randomized"] for r in ind.rows] == [[], ["fc"], ["conv2"], ["conv1"]]
    assert ind.rows[1]["spearman"] < 0.9
    assert ind.rows[2]["spearman"] == pytest.approx(1.0) and ind.rows[3]["spearman"] == pytest.approx(1.0)
    cas = randomization_test(net, fc_weights, x, mode="cascading", seed=7, keep_maps=True)
    assert all(r["spearman"] < 0.9 for r in cas.rows[1:])
    # one seed -> the same random weights for a layer in both modes; another seed -> others
    np.testing.assert_array_equal(ind.maps[1], cas.maps[1])
    other = randomization_test(net, fc_weights, x, seed=8, keep_maps=True)
    assert not np.array_equal(other.maps[1], cas.maps[1])
    assert cas.provenance["seed"] == 7 and cas.provenance["drawn"]["fc"]["weight"]["shape"] == [2, 4]


def test_randomize_layer_draws_from_the_documented_distributions():
    layer = nn.Conv3d(8, 16, 3)
    with torch.no_grad():
        layer.weight.normal_(0.5, 0.2, generator=torch.Generator().manual_seed(0))
        layer.bias.fill_(3.0)  # constant: std 0 -> fallback 0.1 * max(|mean|, 1) = 0.3
    drawn = randomize_layer(layer, seed=1, index=0)
    w = layer.weight.detach().double()
    assert drawn["weight"]["mean"] == pytest.approx(0.5, abs=0.01) and drawn["weight"]["std"] == pytest.approx(0.2, abs=0.01)
    assert float(w.mean()) == pytest.approx(0.5, abs=0.01) and float(w.std()) == pytest.approx(0.2, abs=0.01)
    assert drawn["bias"]["std"] == pytest.approx(0.3)
    randomize_layer(layer, seed=1, index=0, init="kaiming")
    fan_in = 8 * 27
    assert float(layer.weight.detach().double().std()) == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert float(layer.weight.detach().double().mean()) == pytest.approx(0.0, abs=0.01)
    with pytest.raises(UserError, match="unknown initialisation"):
        randomize_layer(layer, 0, 0, init="uniform")


def test_segmentation_steps_keep_the_original_target_mask():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 2, 1))
    model = loaded(net, names=("background", "lesion"))
    res = sanity_check(volume((8, 8, 8)), model, "input-x-gradient", target=1, segmentation=True, keep_maps=True)
    seg = [p["segmentation"] for p in res.step_provenance]
    assert len(seg) == 3 and [s["mask"] for s in seg[1:]] == ["mask"] * 2
    assert {s["mask_voxels"] for s in seg} == {seg[0]["mask_voxels"]}
    assert res.layers == ["2", "0"] and res.provenance["segmentation"]["mask_voxels"] == seg[0]["mask_voxels"]


def test_progress_cancellation_and_errors():
    torch.manual_seed(0)
    model = loaded(ConvNet())
    seen: list[float] = []
    sanity_check(volume(), model, "saliency", progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and seen == sorted(seen)
    calls = [0]

    def stop():
        calls[0] += 1
        return calls[0] > 5

    with pytest.raises(Cancelled):
        sanity_check(volume(), model, "saliency", should_stop=stop)
    with pytest.raises(UserError, match="at least 1"):
        sanity_check(volume(), model, "saliency", last=0)
    with pytest.raises(UserError, match="unknown mode"):
        sanity_check(volume(), model, "saliency", mode="sideways")
    with pytest.raises(UserError, match="no parameter 'bogus'"):
        sanity_check(volume(), model, "saliency", params={"bogus": 1})
    with pytest.raises(UserError, match="nothing to randomize"):
        randomization_test(nn.ReLU(), lambda m: np.arange(3.0), torch.randn(1, 1, 2, 2, 2))


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def tiny(tmp_path):
    source, weights, kwargs = python_source(tmp_path / "m")
    vol = nifti(tmp_path / "v.nii.gz", shape=(12, 12, 12))
    return tmp_path, vol, ["--model", source, "--weights", weights, "--model-kwargs", kwargs]


def test_cli_writes_the_table_maps_and_provenance(tiny, capsys):
    tmp, vol, model = tiny
    out = tmp / "sanity"
    code, stdout, err = run(capsys, "sanity", vol, *model, "--method", "saliency", "--seed", "3", "--out", out, "--maps")
    assert code == 0, err
    table = json.loads((out / "sanity.json").read_text())
    assert table["kind"] == "sanity-check" and table["mode"] == "cascading" and table["seed"] == 3
    assert table["layers"] == ["fc", "conv2", "conv1"] and [r["step"] for r in table["rows"]] == [0, 1, 2, 3]
    assert table["rows"][0]["spearman"] == pytest.approx(1.0) and len(table["model"]["sha256"]) == 64
    assert table["method"] == "saliency" and table["command"].startswith("napari-xai")
    assert table["files"] == ["00_original.nii.gz", "01_fc.nii.gz", "02_conv2.nii.gz", "03_conv1.nii.gz"]
    for name in table["files"]:
        img = nib.load(str(out / name))
        assert img.shape == (12, 12, 12)
        side = json.loads((out / (name + ".xai.json")).read_text())
        assert side["sanity"]["seed"] == 3 and side["method"] == "saliency"
    side = json.loads((out / "02_conv2.nii.gz.xai.json").read_text())
    assert side["sanity"]["randomized_layers"] == ["fc", "conv2"]
    lines = stdout.splitlines()
    assert "spearman" in lines[1] and lines[2].split()[:2] == ["0", "(none)"] and lines[3].split()[:3] == ["1", "fc", "Linear"]
    # an earlier run blocks the folder: one line, exit 2; --overwrite replaces it
    code, _, err = run(capsys, "sanity", vol, *model, "--method", "saliency", "--out", out)
    assert code == 2 and err.strip() == f"napari-xai: error: {out / 'sanity.json'} exists; choose another --out or pass --overwrite."
    code, _, err = run(capsys, "sanity", vol, *model, "--method", "grad-cam", "--mode", "independent", "--layers", "2",
                       "--out", out, "--overwrite")
    assert code == 0, err
    table = json.loads((out / "sanity.json").read_text())
    assert table["mode"] == "independent" and table["layers"] == ["fc", "conv2"]
    assert [r["randomized"] for r in table["rows"]] == [[], ["fc"], ["conv2"]]


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (["--layers", "0"], "--layers must be at least 1, got 0."),
        (["--method", "no-such-method"], "unknown method 'no-such-method'"),
        (["--maps"], "give --out FOLDER too"),
        (["--param", "bogus=1"], "has no parameter 'bogus'"),
        (["--seed", "-1"], "--seed must be a non-negative integer"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(tiny, capsys, tail, message):
    tmp, vol, model = tiny
    tail = tail if "--method" in tail else ["--method", "saliency", *tail]
    code, stdout, err = run(capsys, "sanity", vol, *model, *tail)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp.glob("**/sanity.json"))


def test_cli_refuses_torchscript_in_one_line(tmp_path, capsys):
    ts = torchscript_source(tmp_path / "ts")
    vol = nifti(tmp_path / "v.nii.gz", shape=(8, 8, 8))
    code, _, err = run(capsys, "sanity", vol, "--model", ts, "--method", "saliency", "--trust-model")
    assert code == 2 and "needs an eager nn.Module" in err and err.count("\n") == 1


SEG_PY = """
from torch import nn


class Seg(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv3d(3, 2, 1)

    def forward(self, x):
        return self.head(self.act(self.conv(x)))
"""


def test_cli_segmentation_model_with_its_mask(tmp_path, capsys):
    (tmp_path / "seg.py").write_text(SEG_PY)
    torch.manual_seed(0)
    net = nn.Sequential()
    net.conv, net.act, net.head = nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 2, 1)
    torch.save(net.state_dict(), tmp_path / "seg.pt")
    vol = nifti(tmp_path / "v.nii.gz", shape=(8, 8, 8))
    model = ["--model", f"{tmp_path / 'seg.py'}:Seg", "--weights", tmp_path / "seg.pt"]
    code, stdout, err = run(capsys, "sanity", vol, *model, "--method", "saliency", "--segmentation", "--target", "1",
                            "--out", tmp_path / "o", "--maps")
    assert code == 0, err
    table = json.loads((tmp_path / "o" / "sanity.json").read_text())
    assert table["layers"] == ["head", "conv"] and table["segmentation"]["mask"] == "predicted"
    assert table["target"]["index"] == 1 and nib.load(str(tmp_path / "o" / "01_head.nii.gz")).shape == (8, 8, 8)
    side = json.loads((tmp_path / "o" / "02_conv.nii.gz.xai.json").read_text())
    assert side["segmentation"]["mask"] == "mask"  # the original's predicted region, kept for every step
    assert side["segmentation"]["mask_voxels"] == table["segmentation"]["mask_voxels"]
    # without --segmentation the map output is refused in one line
    code, _, err = run(capsys, "sanity", vol, *model, "--method", "saliency")
    assert code == 2 and "segmentation map" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- verdict and target score


def _row(step, layer, sp, sp_abs):
    return {"step": step, "layer": layer, "spearman": sp, "spearman_abs": sp_abs}


def test_verdict_applies_the_threshold_to_the_larger_rank_correlation():
    original = _row(0, "", 1.0, 1.0)
    # guided backprop on the demo (docs/sanity.md): 0.725 with the classifier random -> fails at step 1
    gbp = [original, _row(1, "classifier", 0.725, 0.571), _row(2, "features.7", 0.724, 0.571),
           _row(3, "features.6", 0.653, 0.470), _row(4, "features.0", 0.272, 0.097)]
    v = verdict(gbp)
    assert not v["passes"] and v["step"] == 1 and v["similarity"] == 0.725
    assert v["text"] == "map barely changes: fails, rank correlation 0.72 with 'classifier' randomized (threshold 0.5)"
    # integrated gradients: |Spearman| 0.306 at most -> passes; an anti-correlated map counts as changed
    ig = [original, _row(1, "classifier", -0.001, 0.306), _row(2, "features.7", -0.6, -0.6)]
    v = verdict(ig)
    assert v["passes"] and v["similarity"] == 0.306
    assert v["text"] == ("map changes with the weights: passes (rank correlation at most 0.31 once 'classifier' is "
                         "randomized; threshold 0.5)")
    # the worst cascading step decides, and names how many layers were random
    late = [original, _row(1, "fc", 0.1, 0.2), _row(2, "conv2", 0.3, 0.55)]
    v = verdict(late)
    assert not v["passes"] and v["step"] == 2
    assert "0.55 with the top 2 layers randomized (down to 'conv2')" in v["text"]
    assert verdict(late, threshold=0.6)["passes"]
    assert math.isnan(rank_similarity(_row(1, "fc", float("nan"), float("nan"))))
    assert rank_similarity(_row(1, "fc", float("nan"), 0.3)) == 0.3
    assert verdict([original, _row(1, "fc", float("nan"), float("nan"))])["passes"]  # a constant map changed


def test_verdict_in_independent_mode_judges_the_top_layer_and_lists_similar_ones():
    rows = [_row(0, "", 1.0, 1.0), _row(1, "classifier", 0.2, 0.3), _row(2, "norm", 0.99, 0.98),
            _row(3, "conv", 0.4, 0.45)]
    v = verdict(rows, "independent")
    assert v["passes"] and v["similar_layers"] == ["norm"]
    assert v["text"] == ("map changes with the weights: passes (rank correlation 0.30 with only 'classifier' "
                         "randomized; threshold 0.5); randomized alone, 1 of 3 layers leave it at ≥ 0.5: norm")
    with pytest.raises(UserError, match="unknown mode"):
        verdict(rows, "sideways")


def test_rows_hold_the_target_logit_of_the_randomized_model():
    """A bias-free linear classifier: the logit after randomizing fc is W' x with W' drawn as documented."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(27, 2, bias=False)).eval()
    model = loaded(net)
    vol = volume((3, 3, 3))
    x = vol.data.ravel().astype(np.float64)
    w = net[1].weight.detach().double().numpy()
    res = sanity_check(vol, model, "saliency", target=1, seed=5)
    assert res.layers == ["1"]
    assert res.rows[0]["target_score"] == pytest.approx(float(w[1] @ x), rel=1e-5)
    index = parametrised_layers(net, torch.from_numpy(vol.data)[None])[0].index
    drawn = np.random.default_rng([5, index]).standard_normal(w.shape) * w.std() + w.mean()
    logits = drawn @ x
    assert res.rows[1]["target_score"] == pytest.approx(float(logits[1]), rel=1e-4)
    p = np.exp(logits - logits.max())
    assert res.rows[1]["target_probability"] == pytest.approx(float(p[1] / p.sum()), rel=1e-4)
