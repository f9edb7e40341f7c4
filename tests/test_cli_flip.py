"""``napari-xai flip``: curves on disk equal hand-computed ones; target from the sidecar; bad input.

Fact: for a bias-free linear model ``y = W x``, zeroing voxel set S lowers
logit c by ``sum_{i in S} W[c, i] x_i``; input x gradient gives ``R = W[c] * x``,
so the most-relevant-first curve is the logit minus the running sum of the
sorted relevance (numpy, from the saved weights and volume).
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from model_factory import lin_source
from model_factory import run_cli as run

SHAPE = (5, 4, 6)
@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(9)
    w = rng.normal(size=(2, int(np.prod(SHAPE)))).astype(np.float32)
    source, weights = lin_source(tmp_path, w)
    x = (rng.random(SHAPE) + 0.5).astype(np.float32)
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(x, np.diag([2.0, 2.0, 2.0, 1.0])), str(vol))
    model = ["--model", source, "--weights", weights]
    return tmp_path, vol, x, w, model


def test_curves_are_hand_computed_and_the_target_comes_from_the_sidecar(case, capsys):
    tmp, vol, x, w, model = case
    rel = tmp / "rel.nii.gz"
    code, _, err = run(capsys, "explain", vol, *model, "--method", "input-x-gradient", "--target", "1", "--out", rel, "--quiet")
    assert code == 0, err
    out = tmp / "curves.csv"
    code, stdout, err = run(capsys, "flip", vol, *model, "--relevance", rel, "--target", "0", "--region", "1",
                            "--steps", "5", "--max-fraction", "0.5", "--order", "morf", "--order", "lerf", "--out", out)
    assert code == 0, err
    rows = list(csv.DictReader(out.open()))
    morf = [r for r in rows if r["order"] == "morf"]
    assert len(morf) == 6 and {r["target"] for r in rows} == {"class 1"}  # the sidecar's target wins over --target
    r = (w[1] * x.ravel())
    logit = float(w[1] @ x.ravel())
    top = np.sort(r)[::-1]
    expected = [logit - top[:int(row["voxels"])].sum() for row in morf]
    assert [int(row["voxels"]) for row in morf] == [round(f * r.size) for f in (0, 0.1, 0.2, 0.3, 0.4, 0.5)]
    np.testing.assert_allclose([float(row["score"]) for row in morf], expected, rtol=1e-4, atol=1e-4)
    side = json.loads((tmp / "curves.csv.xai.json").read_text())
    aopc = {c["order"]: c["aopc"] for c in side["curves"]}
    assert aopc["morf"] == pytest.approx(np.mean(expected[0] - np.asarray(expected)), rel=1e-4)
    assert aopc["morf"] > 0 > aopc["lerf"]
    assert side["curves"][0]["target_from"] == "sidecar" and len(side["relevance"][str(rel)]) == 64
    assert "AOPC" in stdout
    # refuses to overwrite; one line
    code, _, err = run(capsys, "flip", vol, *model, "--relevance", rel, "--out", out)
    assert code == 2 and err.strip() == f"napari-xai: error: {out} exists; choose another --out or pass --overwrite."


@pytest.mark.parametrize(
    ("make_rel", "tail", "message"),
    [
        (lambda t: np.zeros((3, 3, 3), np.float32), [], "has shape (3, 3, 3) but the input has (5, 4, 6)"),
        (lambda t: np.zeros(SHAPE, np.float32), ["--out", "{tmp}/c.txt"], "must end in .csv"),
        (lambda t: np.zeros(SHAPE, np.float32), ["--max-fraction", "2"], "max_fraction must be in (0, 1]"),
    ],
)
def test_user_errors_exit_2_with_one_line(case, capsys, make_rel, tail, message):
    tmp, vol, x, w, model = case
    rel = tmp / "r.nii.gz"
    nib.save(nib.Nifti1Image(make_rel(tmp), np.diag([2.0, 2.0, 2.0, 1.0])), str(rel))
    tail = [a.replace("{tmp}", str(tmp)) for a in tail]
    if "--out" not in tail:
        tail += ["--out", str(tmp / "c.csv")]
    code, _, err = run(capsys, "flip", vol, *model, "--relevance", rel, *tail)
    assert code == 2 and message in err and err.count("\n") == 1
    assert not (tmp / "c.csv").exists()


def test_atlas_regions_are_flipped_and_named(case, capsys):
    tmp, vol, x, w, model = case
    lab = np.zeros(SHAPE, np.int16)
    lab[:2] = 1
    lab[3:] = 2
    nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp / "atlas.nii.gz"))
    rel = tmp / "rel.nii.gz"
    code, _, err = run(capsys, "explain", vol, *model, "--method", "input-x-gradient", "--target", "1", "--out", rel, "--quiet")
    assert code == 0, err
    out = tmp / "atlas_curves.csv"
    code, stdout, err = run(capsys, "flip", vol, *model, "--relevance", rel, "--atlas", tmp / "atlas.nii.gz",
                            "--order", "morf", "--steps", "2", "--max-fraction", "1", "--out", out)
    assert code == 0, err
    r = (w[1] * x.ravel()).reshape(SHAPE)
    sums = {1: float(r[:2].sum()), 2: float(r[3:].sum())}
    first = max(sums, key=sums.get)
    side = json.loads((tmp / "atlas_curves.csv.xai.json").read_text())
    assert side["curves"][0]["flipped"] == [f"label {first}", f"label {3 - first}"]
    scores = [float(row["score"]) for row in csv.DictReader(out.open())]
    assert scores == pytest.approx([r.sum(), r.sum() - sums[first], r.sum() - sums[1] - sums[2]], rel=1e-4, abs=1e-4)
    assert "most relevant regions first: label" in stdout
