"""Embedding of learned features: PCA, hooked features, nearest-neighbour outliers and ``napari-xai embed``.

Facts used: points on a line have all their variance on one component, and
their coordinate on it is the position along the line times the direction's
length; the eigenvalues of a 2x2 covariance [[a, b], [b, c]] are
(a + c)/2 +- sqrt(((a - c)/2)^2 + b^2), with eigenvector (b, lambda - a); the
correlation matrix of two features has the eigenvalues 1 +- r; a z-scored
input has mean 0, so a 1x1x1 convolution's channel means are its biases; the
modified z-score of (1, 2, 3, 4, 100) is 0.6745 (v - 3) / 1 (median 3, MAD 1).
"""

from __future__ import annotations

import csv
import json
import struct

import numpy as np
import pytest
import torch
from torch import nn

from model_factory import nifti, python_source
from model_factory import run_cli as run
from napari_xai.core.embedding import features, knn_outliers, pc_correlations, pca, robust_z
from napari_xai.core.errors import UserError
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume


def test_pca_of_points_on_a_line():
    rng = np.random.default_rng(0)
    t = rng.normal(size=12)
    d = np.array([3.0, -4.0, 12.0])  # length 13
    pts = np.array([1.0, 2.0, 3.0]) + t[:, None] * d
    res = pca(pts, k=2)
    np.testing.assert_allclose(res.explained_variance_ratio, [1.0, 0.0], atol=1e-12)
    # PC1 is the position along the line times |d| (the sign: largest loading, +12/13, positive)
    np.testing.assert_allclose(res.scores[:, 0], 13.0 * (t - t.mean()), atol=1e-9)
    np.testing.assert_allclose(res.components[0], d / 13.0, atol=1e-12)
    np.testing.assert_allclose(res.scores[:, 1], 0.0, atol=1e-9)


def test_pca_matches_the_closed_form_eigen_decomposition_of_a_2x2_covariance():
    x = np.array([[2.0, 1.0], [0.0, 1.0], [-1.0, -2.0], [3.0, 2.0], [-2.0, 0.0], [1.0, -1.0], [0.0, 3.0]])
    n = len(x)
    xc = x - x.mean(axis=0)
    a = (xc[:, 0] ** 2).sum() / (n - 1)
    c = (xc[:, 1] ** 2).sum() / (n - 1)
    b = (xc[:, 0] * xc[:, 1]).sum() / (n - 1)
    root = np.sqrt(((a - c) / 2) ** 2 + b**2)
    lam = np.array([(a + c) / 2 + root, (a + c) / 2 - root])
    v1 = np.array([b, lam[0] - a])
    v1 /= np.linalg.norm(v1)
    res = pca(x, k=2)
    np.testing.assert_allclose(res.explained_variance, lam, rtol=1e-12)
    np.testing.assert_allclose(res.explained_variance_ratio, lam / lam.sum(), rtol=1e-12)
    sign = np.sign(res.components[0] @ v1)
    np.testing.assert_allclose(res.components[0], sign * v1, atol=1e-12)
    np.testing.assert_allclose(res.scores[:, 0], sign * xc @ v1, atol=1e-12)
    # standardised: the eigenvalues of a 2x2 correlation matrix are 1 +- r
    scaled = x * np.array([1.0, 1000.0])
    r = np.corrcoef(scaled[:, 0], scaled[:, 1])[0, 1]
    std = pca(scaled, k=2, standardize=True)
    np.testing.assert_allclose(std.explained_variance, [1 + abs(r), 1 - abs(r)], rtol=1e-12)
    assert pca(x, k=None).scores.shape == (7, 2)
    with pytest.raises(UserError, match="at least 2 subjects"):
        pca(x[:1])
    with pytest.raises(UserError, match="same features"):
        pca(np.ones((4, 3)))


def test_robust_z_and_nearest_neighbour_distances_by_hand():
    np.testing.assert_allclose(robust_z([1, 2, 3, 4, 100]), 0.6745 * (np.array([1, 2, 3, 4, 100]) - 3.0))
    # MAD 0: the mean absolute deviation (0.8) takes over, scaled by sqrt(2/pi) = 0.7979
    np.testing.assert_allclose(robust_z([1, 1, 1, 1, 5]), [0, 0, 0, 0, 0.7979 * 4 / 0.8])
    o = knn_outliers(np.array([0.0, 1.0, 3.0, 7.0]), k=1)
    np.testing.assert_allclose(o.distance, [1.0, 1.0, 2.0, 4.0])
    assert o.neighbours[:, 0].tolist() == [1, 0, 1, 2]
    np.testing.assert_allclose(knn_outliers(np.array([0.0, 1.0, 3.0, 7.0]), k=2).distance, [2.0, 1.5, 2.5, 5.0])
    with pytest.raises(UserError, match="at least 4 subjects"):
        knn_outliers(np.zeros((3, 2)), k=3)


def test_the_one_subject_far_from_a_tight_cluster_is_flagged():
    # a 3x3x3 grid with spacing 1: every point has at least 3 neighbours at distance exactly 1
    grid = np.stack(np.meshgrid(*[np.arange(3.0)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    pts = np.vstack([grid[:13], [[40.0, 40.0, 40.0]], grid[13:]])  # subject 13 is far away
    labels = ["a"] * 13 + ["b"] + ["a"] * 14
    o = knn_outliers(pts, k=3, labels=labels)
    np.testing.assert_allclose(np.delete(o.distance, 13), 1.0)
    assert np.flatnonzero(o.flagged).tolist() == [13] and np.all(np.delete(o.z, 13) == 0.0)
    # MAD 0 (27 equal distances): the mean absolute deviation, (d - 1)/28, scales the far one to 0.7979 * 28
    assert o.z[13] == pytest.approx(0.7979 * 28)
    assert o.agreement[13] == 0.0 and np.all(np.delete(o.agreement, 13) == 1.0)
    # a noisy cluster in 20 dimensions: the far subject has the largest score and is flagged
    rng = np.random.default_rng(3)
    cloud = rng.normal(scale=0.1, size=(12, 20))
    cloud[7] += 1.0
    o = knn_outliers(cloud, k=3)
    assert o.flagged[7] and int(np.argmax(o.z)) == 7
    # on PCA scores with every component the distances are those of the centred points
    full = pca(cloud, k=None)
    np.testing.assert_allclose(knn_outliers(full.scores, k=3).distance, o.distance, rtol=1e-9)
    rows = pc_correlations(full.scores, {"dist": o.distance})
    assert [r["component"] for r in rows] == ["PC1", "PC2"] and abs(rows[0]["r"]) > 0.5


class Tiny(nn.Module):
    """1x1x1 conv (weights 2, -1; biases 0.5, 0) -> ReLU -> global average pool -> Linear(2, 2)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.5, 0.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 2.0]]))
            self.fc.bias.copy_(torch.tensor([0.0, 0.25]))

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.conv(x)))))


def loaded(module, **spec) -> LoadedModel:
    return LoadedModel(module=module.eval(), spec=ModelSpec(**spec), source="test", kind="python", sha256="0" * 64,
                       device=torch.device("cpu"), is_scripted=False)


def test_hooked_features_are_the_hand_computed_channel_means():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1, 4, 5, 3)).astype(np.float32)
    vol = Volume(x, np.eye(4))
    model = loaded(Tiny(), class_names=["no", "yes"])
    f = features(model, vol)
    hand = np.array([np.maximum(2 * x + 0.5, 0).mean(), np.maximum(-x, 0).mean()])
    np.testing.assert_allclose(f.values, hand, rtol=1e-5)
    assert f.layer == "fc:input" and f.shape == (2,) and not f.pooled
    logits = np.array([[1.0, -1.0], [0.5, 2.0]]) @ hand + [0.0, 0.25]
    np.testing.assert_allclose(f.probabilities, np.exp(logits) / np.exp(logits).sum(), rtol=1e-5)
    assert f.class_names == ["no", "yes"] and f.predicted == int(np.argmax(logits))
    np.testing.assert_allclose(features(model, vol, "fc:input").values, hand, rtol=1e-5)
    conv = features(model, vol, "conv")  # the conv's output before the ReLU, averaged per channel
    np.testing.assert_allclose(conv.values, [2 * x.mean() + 0.5, -x.mean()], rtol=1e-5)
    assert conv.pooled and conv.shape == (2, 4, 5, 3)
    flat = features(model, vol, "act", pool=False)
    np.testing.assert_allclose(flat.values, np.concatenate([np.maximum(2 * x + 0.5, 0).ravel(), np.maximum(-x, 0).ravel()]),
                               rtol=1e-5)
    with pytest.raises(UserError, match="'nope' does not exist"):
        features(model, vol, "nope")
    # the model sees what explain gives it: z-scored input has mean 0, so the conv's channel means are its biases
    z = features(loaded(Tiny(), normalization="zscore", input_shape=(6, 6, 6)), vol, "conv")
    np.testing.assert_allclose(z.values, [0.5, 0.0], atol=1e-5)
    # no linear layer: the output of the last spatial layer, pooled; no class scores, no prediction
    seq = nn.Sequential(nn.Conv3d(1, 3, 1), nn.ReLU())
    g = features(loaded(seq), vol)
    assert g.layer == "1" and g.values.shape == (3,) and g.probabilities is None


@pytest.fixture
def cohort(tmp_path):
    source, weights, kwargs = python_source(tmp_path / "model")
    lines = ["id,path,age"]
    for k in range(6):
        nifti(tmp_path / f"s{k}.nii.gz", shape=(8, 8, 8), seed=k)
        lines.append(f"s{k},s{k}.nii.gz,{60 + 3 * k}")
    (tmp_path / "subjects.csv").write_text("\n".join(lines) + "\n")
    model = ["--model", source, "--weights", weights, "--model-kwargs", kwargs, "--normalization", "none"]
    return tmp_path, model


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_embed_cli_writes_csv_json_and_png(cohort, capsys):
    from PIL import Image

    from model_factory import _tiny_class

    tmp, model = cohort
    out = tmp / "out"
    code, stdout, err = run(capsys, "embed", tmp / "subjects.csv", *model, "--knn", "2", "--color", "age",
                            "--out", out, "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader((out / "embedding.csv").open()))
    assert [r["id"] for r in rows] == [f"s{k}" for k in range(6)] and {r["status"] for r in rows} == {"ok"}
    assert {"PC1", "PC2", "predicted", "probability", "outlier_z", "outlier", "age"} <= set(rows[0])
    # independent: TinyNet's penultimate features are the channel means of act2; PCA by eigh of their covariance
    _, cls = _tiny_class(tmp / "model")
    net = cls()
    net.load_state_dict(torch.load(tmp / "model" / "tiny_net.pt"))
    import nibabel as nib

    feats = []
    with torch.no_grad():
        for k in range(6):
            x = torch.from_numpy(np.asarray(nib.load(str(tmp / f"s{k}.nii.gz")).dataobj, np.float32))[None, None]
            feats.append(net.act2(net.conv2(net.act1(net.conv1(x)))).mean(dim=(2, 3, 4))[0].numpy())
    fc = np.array(feats, float) - np.mean(feats, axis=0)
    lam, vec = np.linalg.eigh(np.cov(fc.T))
    pc1 = fc @ vec[:, -1]
    got = np.array([float(r["PC1"]) for r in rows])
    np.testing.assert_allclose(np.abs(got), np.abs(pc1), rtol=1e-3, atol=1e-6)
    side = json.loads((out / "embedding.json").read_text())
    assert side["layer"] == "fc:input" and side["features"] == 4 and side["ok"] == 6
    assert side["pca"]["explained_variance_ratio"][0] == pytest.approx(lam[-1] / lam.sum(), rel=1e-3)
    assert side["model"]["sha256"] and side["versions"] and "embed" in side["command"]
    assert {c["covariate"] for c in side["correlations"]} == {"age"}
    assert png_size(out / "embedding.png") == (side["png"]["width"], side["png"]["height"]) == (800, 600)
    img = np.asarray(Image.open(out / "embedding.png").convert("RGB")).astype(int)
    assert (np.abs(img - 255).sum(axis=2) > 30).mean() > 0.01  # axes, labels and points on white
    assert "6 of 6 subjects, 4 features at fc:input" in stdout
    # the files exist now: a second run refuses without --overwrite
    code, _, err = run(capsys, "embed", tmp / "subjects.csv", *model, "--out", out, "--quiet")
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("case, message", [
    ("missing-column", "needs the columns 'id' and 'path'"),
    ("unknown-layer", "layer 'nope' does not exist"),
    ("unknown-color", "--color 'height' is not a numeric covariate"),
])
def test_embed_cli_bad_input_exits_2_with_one_line(cohort, capsys, case, message):
    tmp, model = cohort
    table = tmp / "subjects.csv"
    extra = []
    if case == "missing-column":
        table = tmp / "bad.csv"
        table.write_text("id,file\ns0,s0.nii.gz\n")
    elif case == "unknown-layer":
        extra = ["--layer", "nope"]
    else:
        extra = ["--color", "height"]
    code, _, err = run(capsys, "embed", table, *model, *extra, "--out", tmp / "out", "--quiet")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp / "out" / "embedding.csv").exists()


def test_embed_cli_skips_a_failing_subject_and_exits_2(cohort, capsys):
    tmp, model = cohort
    nifti(tmp / "two.nii.gz", shape=(8, 8, 8), channels=2)
    with (tmp / "subjects.csv").open("a") as fh:
        fh.write("two,two.nii.gz,70\n")
    code, _, err = run(capsys, "embed", tmp / "subjects.csv", *model, "--out", tmp / "out", "--quiet")
    assert code == 2 and "subject two:" in err and "1 subject(s) failed (two)" in err
    rows = {r["id"]: r for r in csv.DictReader((tmp / "out" / "embedding.csv").open())}
    assert rows["two"]["status"] == "failed" and rows["two"]["PC1"] == "" and rows["s0"]["status"] == "ok"
    assert json.loads((tmp / "out" / "embedding.json").read_text())["ok"] == 6
