"""Cohorts: the subject table, group means, correlations and ``napari-xai cohort`` end to end.

Facts: Pearson's r of (1..5) with (2, 1, 4, 3, 5) is 0.8 with a two-sided p of
0.1041 (t = 2.309, 3 degrees of freedom, tables); y = 3x + 2 correlates with
r = 1. For a bias-free linear model ``y = W x``, input x gradient gives
``R = W[c] * x``, so every subject's region sums and the cohort mean map are
computed here with numpy from the saved weights and volumes.
"""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest

from model_factory import lin_source
from model_factory import run_cli as run
from napari_xai.core.cohort import RunningMean, correlations, pearson, read_subjects, subjects_from_paths
from napari_xai.core.errors import UserError

SHAPE = (5, 4, 6)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


def nii(path, data, affine=AFF):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


def test_pearson_hand_cases():
    r, p, n = pearson([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert (round(r, 6), n) == (0.8, 5) and p == pytest.approx(0.1041, abs=5e-4)
    assert pearson([1, 2, 3, 4], [5, 8, 11, 14])[:2] == (1.0, 0.0)
    assert pearson([1, 2, 3, 4], [4, 3, 2, 1])[0] == pytest.approx(-1.0)
    assert np.isnan(pearson([1, 2], [3, 4])[0]) and np.isnan(pearson([1, 2, 3], [1, 1, 1])[0])
    assert pearson([1, 2, float("nan"), 3, 4], [2, 4, 5, 6, 8])[2] == 4  # NaN pairs are left out


def test_read_subjects_paths_channels_covariates_and_errors(tmp_path):
    for name in ("a.nii.gz", "b.nii.gz", "b2.nii.gz"):
        nii(tmp_path / name, np.zeros(SHAPE))
    table = tmp_path / "cohort.csv"
    table.write_text("id,path,age,site\ns1,a.nii.gz,70,A\ns2,b.nii.gz;b2.nii.gz,,B\n")
    s1, s2 = read_subjects(table)
    assert s1.id == "s1" and s1.paths == [tmp_path / "a.nii.gz"] and s1.covariates == {"age": 70.0}
    assert s2.paths == [tmp_path / "b.nii.gz", tmp_path / "b2.nii.gz"] and np.isnan(s2.covariates["age"])
    cases = [
        ("name,path\nx,a.nii.gz\n", "needs the columns 'id' and 'path'"),
        ("id,path\ns1,a.nii.gz\ns1,b.nii.gz\n", "line 3: id 's1' appears twice"),
        ("id,path\ns1,missing.nii.gz\n", "line 2: file not found"),
        ("id,path\n", "lists no subject"),
        ("id,path\ns/1,a.nii.gz\n", "contains '/'"),
        ("id,path,truth\ns1,a.nii.gz,none.nii.gz\n", "line 2: truth mask not found"),
    ]
    for text, message in cases:
        table.write_text(text)
        with pytest.raises(UserError, match=message):
            read_subjects(table)
    assert [s.id for s in subjects_from_paths([tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])] == ["a", "b"]


def test_running_mean_and_correlation_order():
    m = RunningMean()
    assert m.add(np.ones((2, 2, 2)), AFF, "a") and m.add(3 * np.ones((2, 2, 2)), AFF, "b")
    assert not m.add(np.ones((3, 2, 2)), AFF, "c") and m.skipped == ["c"]
    assert np.allclose(m.mean, 2.0) and m.count == 2
    from napari_xai.core.cohort import Subject

    subjects = [Subject(f"s{i}", [], {"score": float(i)}) for i in range(5)]
    values = {f"s{i}": {"up": 2.0 * i, "down": -float(i) + (0.5 if i == 2 else 0.0)} for i in range(5)}
    rows = correlations(values, subjects, "sum")
    assert [r["region"] for r in rows] == ["up", "down"] and rows[0]["r"] == pytest.approx(1.0)
    assert -1.0 < rows[1]["r"] < -0.9


@pytest.fixture
def cohort(tmp_path):
    rng = np.random.default_rng(21)
    w = rng.normal(size=(2, int(np.prod(SHAPE)))).astype(np.float32)
    source, weights = lin_source(tmp_path, w)
    atlas = np.zeros(SHAPE, np.int16)
    atlas[:2] = 1  # region "front": i < 2
    atlas[3:] = 2  # region "back": i >= 3
    nii(tmp_path / "atlas.nii.gz", atlas)
    (tmp_path / "atlas.csv").write_text("index,name\n1,front\n2,back\n")
    xs = {}
    lines = ["id,path,score,site"]
    for k in range(5):
        x = (rng.random(SHAPE) + 0.5).astype(np.float32)
        xs[f"s{k}"] = x
        nii(tmp_path / f"s{k}.nii.gz", x)
        front = float((w[1].reshape(SHAPE) * x)[:2].sum())
        lines.append(f"s{k},s{k}.nii.gz,{3 * front + 2:.9g},X")
    (tmp_path / "cohort.csv").write_text("\n".join(lines) + "\n")
    model = ["--model", source, "--weights", weights]
    return tmp_path, model, w, xs


def test_cohort_cli_end_to_end_with_hand_computed_regions_mean_and_correlation(cohort, capsys):
    tmp, model, w, xs = cohort
    out = tmp / "out"
    args = ["cohort", tmp / "cohort.csv", *model, "--method", "input-x-gradient", "--target", "1",
            "--atlas", tmp / "atlas.nii.gz", "--labels", tmp / "atlas.csv", "--measure", "sum", "--out-dir", out, "--quiet"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    W1 = w[1].reshape(SHAPE)
    subjects = {r["id"]: r for r in csv.DictReader((out / "subjects.csv").open())}
    assert set(subjects) == set(xs) and {r["status"] for r in subjects.values()} == {"ok"}
    regions = list(csv.DictReader((out / "regions.csv").open()))
    for r in regions:
        rel = W1 * xs[r["id"]]
        part = rel[:2] if r["region"] == "front" else rel[3:]
        assert float(r["sum"]) == pytest.approx(float(part.sum()), rel=1e-4, abs=1e-5)
        assert float(r["pos_sum"]) == pytest.approx(float(part[part > 0].sum()), rel=1e-4, abs=1e-5)
    mean = np.asarray(nib.load(str(out / "mean_relevance.nii.gz")).dataobj)
    np.testing.assert_allclose(mean, np.mean([W1 * x for x in xs.values()], axis=0), rtol=1e-4, atol=1e-6)
    corr = {(r["region"], r["covariate"]): r for r in csv.DictReader((out / "correlations.csv").open())}
    assert float(corr[("front", "score")]["r"]) == pytest.approx(1.0, abs=1e-6)  # score = 3 * front + 2
    assert ("front", "site") not in corr  # a non-numeric column is no covariate
    # "back" is not a linear function of the score: its r is Pearson's r of the back sums (--measure sum) by hand
    back = [float((W1 * xs[k])[3:].sum()) for k in sorted(xs)]
    scores = [float(subjects[k]["score"]) for k in sorted(xs)]
    assert float(corr[("back", "score")]["r"]) == pytest.approx(float(np.corrcoef(back, scores)[0, 1]), abs=1e-5)
    side = json.loads((out / "subjects.csv.xai.json").read_text())
    assert side["ok"] == 5 and side["settings"]["method"] == "input-x-gradient" and not side["failures"]
    assert "5 of 5 subjects explained (0 reused)" in stdout
    # the same settings again (tables replaced with --overwrite): every map is reused, the numbers are the same
    before = (out / "regions.csv").read_text()
    code, stdout, err = run(capsys, *args, "--overwrite")
    assert code == 0, err
    assert "(5 reused)" in stdout
    assert (out / "regions.csv").read_text() == before
    assert {r["status"] for r in csv.DictReader((out / "subjects.csv").open())} == {"reused"}


def test_cohort_resume_refuses_other_settings_and_survives_a_bad_subject(cohort, capsys):
    tmp, model, w, xs = cohort
    out = tmp / "out"
    code, _, err = run(capsys, "cohort", tmp / "s0.nii.gz", tmp / "s1.nii.gz", *model, "--method", "input-x-gradient",
                       "--out-dir", out, "--quiet")
    assert code == 0, err
    for name in ("subjects.csv", "subjects.csv.xai.json", "failures.csv", "mean_relevance.nii.gz", "mean_relevance.nii.gz.xai.json"):
        (out / name).unlink()  # as if the run had been interrupted before the tables
    map_before = (out / "maps" / "s0.nii.gz").read_bytes()
    code, _, err = run(capsys, "cohort", tmp / "s0.nii.gz", *model, "--method", "saliency", "--out-dir", out)
    assert code == 2 and "s0.nii.gz was made with other settings; pass --overwrite" in err
    assert (out / "maps" / "s0.nii.gz").read_bytes() == map_before  # nothing was lost
    # a subject whose volume has another shape fails on its own; the others are written, exit code 2
    nii(tmp / "odd.nii.gz", np.ones((4, 4, 4)))
    code, _, err = run(capsys, "cohort", tmp / "s0.nii.gz", tmp / "odd.nii.gz", tmp / "s2.nii.gz", *model,
                       "--method", "input-x-gradient", "--out-dir", tmp / "out2", "--quiet")
    assert code == 2 and "subject odd:" in err and "1 subject(s) failed (odd)" in err
    status = {r["id"]: r["status"] for r in csv.DictReader((tmp / "out2" / "subjects.csv").open())}
    assert status == {"s0": "ok", "odd": "failed", "s2": "ok"}
    assert (tmp / "out2" / "maps" / "s2.nii.gz").exists() and not (tmp / "out2" / "maps" / "odd.nii.gz").exists()


def test_truth_masks_and_flipping_readouts_per_subject(cohort, capsys):
    """relevance mass by hand; AOPC by hand: 3-voxel cubes ranked by summed w x, flipped to 0, 10 steps up to 20 %."""
    tmp, model, w, xs = cohort
    truth = np.zeros(SHAPE, np.uint8)
    truth[1:4, 1:3, 2:5] = 1
    nii(tmp / "gt.nii.gz", truth)
    lines = ["id,path,truth"] + [f"{k},{k}.nii.gz,gt.nii.gz" for k in ("s0", "s1", "s2")]
    (tmp / "with_truth.csv").write_text("\n".join(lines) + "\n")
    out = tmp / "gt_out"
    code, stdout, err = run(capsys, "cohort", tmp / "with_truth.csv", *model, "--method", "input-x-gradient",
                            "--target", "1", "--flip", "--out-dir", out, "--quiet")
    assert code == 0, err
    rows = {r["id"]: r for r in csv.DictReader((out / "subjects.csv").open())}
    W1 = w[1].reshape(SHAPE)
    idx = [np.arange(n) // 3 for n in SHAPE]
    cube = (idx[0][:, None, None] * 2 + idx[1][None, :, None]) * 2 + idx[2][None, None, :]  # 2 x 2 x 2 cubes
    aopcs = []
    for sid in ("s0", "s1", "s2"):
        r = W1 * xs[sid]
        pos = np.clip(r, 0, None)
        assert float(rows[sid]["relevance_mass"]) == pytest.approx(pos[truth > 0].sum() / pos.sum(), rel=1e-4)
        sums = np.bincount(cube.ravel(), weights=r.ravel(), minlength=8)
        order = np.argsort(-sums, kind="stable")
        counts = [int(round(0.2 * k / 10 * 8)) for k in range(11)]
        scores = [r.sum() - sums[order[:c]].sum() for c in counts]
        aopc = float(np.mean(scores[0] - np.asarray(scores)))
        assert float(rows[sid]["aopc_morf"]) == pytest.approx(aopc, rel=1e-4, abs=1e-5)
        aopcs.append(aopc)
    summary = json.loads((out / "subjects.csv.xai.json").read_text())["readouts"]
    assert summary["aopc_morf"]["n"] == 3 and summary["aopc_morf"]["mean"] == pytest.approx(np.mean(aopcs), rel=1e-4)
    assert summary["aopc_morf"]["sd"] == pytest.approx(np.std(aopcs, ddof=1), rel=1e-3)
    assert "aopc_morf: mean" in stdout


def test_pick_subjects_spreads_over_a_covariate():
    from napari_xai.core.cohort import pick_subjects

    rows = [{"id": f"s{k}", "status": "ok", "group": g, "age": float(a)}
            for k, (g, a) in enumerate([("AD", 80), ("CN", 60), ("MCI", 70)] * 4)]
    rows.append({"id": "bad", "status": "failed", "group": "AD", "age": 1.0})
    assert [r["id"] for r in pick_subjects(rows, 3)] == ["s0", "s1", "s2"]  # table order
    # 12 rows sorted by group (AD x4, CN x4, MCI x4), 6 evenly spaced picks: 2 per group, failed never picked
    picked = pick_subjects(rows, 6, "group")
    assert [r["group"] for r in picked] == ["AD", "AD", "CN", "CN", "MCI", "MCI"] and "bad" not in [r["id"] for r in picked]
    # numeric covariates sort as numbers: youngest and oldest are the ends
    assert [r["age"] for r in pick_subjects(rows, 2, "age")] == [60.0, 80.0]
    assert len(pick_subjects(rows, 50)) == 12
    with pytest.raises(UserError, match="not a column"):
        pick_subjects(rows, 2, "sex")


def test_cohort_png_grid_of_subjects(cohort, capsys):
    from PIL import Image

    tmp, model, w, xs = cohort
    out = tmp / "png"
    args = ["cohort", tmp / "cohort.csv", *model, "--method", "input-x-gradient", "--target", "1", "--out-dir", out,
            "--quiet", "--png", "--png-subjects", "4", "--png-by", "score", "--view", "2d"]
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    img = np.asarray(Image.open(out / "subjects.png").convert("RGB"))
    assert img.shape[0] > 300 and img.shape[1] > 600 and img.std() > 5  # 2 x 2 cells of 460 px, not blank
    assert "subjects.png" in stdout
    # run again without --overwrite: refused in one line; the figure is kept
    stamp = (out / "subjects.png").stat().st_mtime_ns
    code, _, err = run(capsys, *args)
    assert code == 2 and "exists" in err and (out / "subjects.png").stat().st_mtime_ns == stamp
    code, _, err = run(capsys, *args[:-6], "--png", "--png-by", "age", "--overwrite")
    assert code == 2 and "--png-by 'age' is not a covariate" in err and "score" in err
