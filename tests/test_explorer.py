"""The cached explorer, export with provenance, and the ``napari-xai clusters`` command."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_xai.core import postprocess as pp
from napari_xai.core.errors import UserError
from napari_xai.core.explorer import Explorer, params_from_sidecar, run, save_outputs, source_provenance


def affine_2mm():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = [-20.0, -30.0, -10.0]
    return a


def smooth_noise(shape=(24, 26, 22), seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.standard_normal(shape), 1.2).astype(np.float32)


def same_result(a: pp.PostResult, b: pp.PostResult) -> None:
    assert np.array_equal(a.filtered, b.filtered)
    assert np.array_equal(a.labels, b.labels)
    assert a.labels.dtype == b.labels.dtype == np.uint16
    assert len(a.table) == len(b.table)
    assert np.array_equal(a.table.voxels, b.table.voxels)
    assert np.allclose(a.table.sum, b.table.sum)
    assert np.array_equal(a.histogram.counts, b.histogram.counts)
    assert a.messages == b.messages


# ---------------------------------------------------------------------------
# caching
# ---------------------------------------------------------------------------


def test_each_change_reruns_only_the_stages_it_needs():
    ex = Explorer(smooth_noise(), affine_2mm(), pp.PostParams(sigma_mm=2.0, threshold=0.3))
    ex.update()
    assert ex.last_ran == ("smooth", "filter", "label", "size")
    ex.update(min_size=5)
    assert ex.last_ran == ("size",)  # the labelling is reused
    ex.update(min_size=40.0, size_unit="mm3")
    assert ex.last_ran == ("size",)
    ex.update(threshold=0.4)
    assert ex.last_ran == ("label", "size")  # the filtered map is reused
    ex.update(connectivity=6)
    assert ex.last_ran == ("label", "size")
    ex.update(sign="positive")
    assert ex.last_ran == ("filter", "label", "size")  # the smoothed map is reused
    ex.update(filter="clamp", alpha=(0.0, 0.5))
    assert ex.last_ran == ("filter", "label", "size")
    ex.update(sigma_mm=3.0)
    assert ex.last_ran == ("smooth", "filter", "label", "size")  # back to the raw map
    ex.update()
    assert ex.last_ran == ()
    assert ex.counts == {"smooth": 2, "filter": 4, "label": 6, "size": 8}
    assert ex.stages_needed(min_size=7) == ("size",)
    assert ex.stages_needed(threshold=0.9) == ("label", "size")


def test_cached_updates_equal_fresh_runs_for_a_random_slider_sequence():
    raw = smooth_noise(seed=1)
    aff = affine_2mm()
    rng = np.random.default_rng(5)
    ex = Explorer(raw, aff)
    p = pp.PostParams(threshold=0.3)
    for _ in range(25):
        which = rng.integers(0, 6)
        if which == 0:
            p = p.replace(min_size=float(rng.integers(0, 30)))
        elif which == 1:
            p = p.replace(threshold=float(rng.uniform(0.05, 0.9)))
        elif which == 2:
            p = p.replace(sign=str(rng.choice(pp.SIGNS)))
        elif which == 3:
            p = p.replace(filter=str(rng.choice(pp.FILTERS)), alpha=tuple(sorted(rng.uniform(0, 1, 2))))
        elif which == 4:
            p = p.replace(sigma_mm=float(rng.choice([0.0, 2.0, 4.0])))
        else:
            p = p.replace(connectivity=int(rng.choice([6, 18, 26])), size_unit=str(rng.choice(pp.SIZE_UNITS)))
        same_result(ex.update(p), run(raw, aff, p))


def test_absolute_sign_clusters_join_positive_and_negative_voxels():
    d = np.zeros((5, 5, 5), np.float32)
    d[2, 2, 1] = 1.0
    d[2, 2, 2] = -1.0
    both = run(d, np.eye(4), pp.PostParams(scale="none", threshold=0.5, sign="both", connectivity=6))
    absolute = run(d, np.eye(4), pp.PostParams(scale="none", threshold=0.5, sign="absolute", connectivity=6))
    assert both.n_clusters == 2 and list(both.table.sign) == [1, -1]
    assert absolute.n_clusters == 1 and absolute.table.row(1)["sign"] == "absolute"


# ---------------------------------------------------------------------------
# bad input: clear messages, never a crash
# ---------------------------------------------------------------------------


def test_all_zero_map_gives_an_empty_result_with_a_message():
    res = run(np.zeros((6, 6, 6), np.float32), np.eye(4))
    assert res.n_clusters == 0 and not res.labels.any()
    assert any("all zeros" in m for m in res.messages)


def test_threshold_above_the_maximum_gives_an_empty_result_with_a_message():
    res = run(smooth_noise(), affine_2mm(), pp.PostParams(threshold=1.5))  # scale=max: max |r| is 1
    assert res.n_clusters == 0 and not res.labels.any()
    assert any("above the largest" in m and "Lower the threshold" in m for m in res.messages)


def test_min_size_above_every_cluster_gives_an_empty_result_with_a_message():
    res = run(smooth_noise(), affine_2mm(), pp.PostParams(threshold=0.3, min_size=1e6))
    assert res.n_clusters == 0 and res.n_clusters_before_size > 0
    assert any("no cluster has at least" in m for m in res.messages)


def test_nan_voxels_are_reported_and_treated_as_zero():
    d = smooth_noise()
    d[3, 4, 5] = np.nan
    with pytest.warns(UserWarning, match="NaN"):
        ex = Explorer(d, affine_2mm())
    res = ex.update()
    assert np.isfinite(res.filtered).all()
    assert res.messages[0].startswith("relevance has 1 NaN/Inf")


def test_too_many_clusters_is_refused_and_the_explorer_keeps_its_state():
    d = np.zeros((82, 82, 82), np.float32)
    d[::2, ::2, ::2] = 1.0
    ex = Explorer(d, np.eye(4), pp.PostParams(scale="none", threshold=0.5, min_size=2))
    first = ex.update()
    assert first.n_clusters == 0
    with pytest.raises(UserError, match="65,535"):
        ex.update(min_size=0)
    assert ex.params.min_size == 2 and ex.result is first
    assert ex.update(min_size=2).n_clusters == 0


def test_bad_affine_and_negative_sigma():
    with pytest.raises(UserError, match="affine"):
        Explorer(np.ones((3, 3, 3)), np.zeros((4, 4)))
    ex = Explorer(np.ones((3, 3, 3)), np.eye(4))
    with pytest.raises(UserError, match="sigma"):
        ex.update(sigma_mm=-2)


# ---------------------------------------------------------------------------
# export with provenance
# ---------------------------------------------------------------------------


def test_save_writes_nifti_csv_and_sidecars_with_provenance(tmp_path):
    aff = affine_2mm()
    prov = {"kind": "relevance", "method": "saliency", "model": {"sha256": "abc"}}
    res = run(smooth_noise(), aff, pp.PostParams(sigma_mm=2.0, threshold=0.3, min_size=3))
    paths = save_outputs(
        res, labels_path=tmp_path / "L.nii.gz", filtered_path=tmp_path / "F.nii.gz", table_path=tmp_path / "T.csv",
        source={"file": "rel.nii.gz"}, provenance=prov, mask_filtered=True,
    )
    assert {p.name for p in paths} == {"L.nii.gz", "L.nii.gz.xai.json", "F.nii.gz", "F.nii.gz.xai.json", "T.csv", "T.csv.xai.json"}
    lab = nib.load(tmp_path / "L.nii.gz")
    assert lab.get_data_dtype() == np.uint16
    assert np.allclose(lab.affine, aff)
    assert np.array_equal(np.asarray(lab.dataobj), res.labels)
    filt = np.asarray(nib.load(tmp_path / "F.nii.gz").dataobj)
    assert np.array_equal(filt, np.where(res.labels > 0, res.filtered, 0))
    for name, kind in (("L.nii.gz.xai.json", "clusters"), ("F.nii.gz.xai.json", "filtered_relevance"), ("T.csv.xai.json", "cluster_table")):
        rec = json.loads((tmp_path / name).read_text())
        assert rec["kind"] == kind
        assert rec["provenance"] == prov
        assert pp.PostParams.from_dict(rec["postprocess"]) == res.params
        assert rec["result"]["n_clusters"] == res.n_clusters
    rows = list(csv.DictReader((tmp_path / "T.csv").open()))
    assert len(rows) == res.n_clusters
    assert [int(r["voxels"]) for r in rows] == list(res.table.voxels)
    assert int(rows[0]["voxels"]) == int((res.labels == 1).sum())


def test_save_refuses_colliding_or_existing_outputs(tmp_path):
    res = run(smooth_noise(), affine_2mm())
    with pytest.raises(UserError, match="collide"):
        save_outputs(res, labels_path=tmp_path / "A.nii.gz", filtered_path=tmp_path / "A.nii.gz")
    # A.nii.gz and A.nii have their own sidecars (A.nii.gz.xai.json, A.nii.xai.json): no collision any more
    (tmp_path / "L.nii.gz").write_bytes(b"x")
    with pytest.raises(UserError, match="exists"):
        save_outputs(res, labels_path=tmp_path / "L.nii.gz", overwrite=False)
    with pytest.raises(UserError, match=".csv"):
        save_outputs(res, table_path=tmp_path / "T.txt")


def test_source_provenance_rules():
    assert source_provenance(None) is None
    assert source_provenance({"kind": "relevance", "method": "x"}) == {"kind": "relevance", "method": "x"}
    assert source_provenance({"kind": "image", "provenance": {"method": "y"}}) == {"method": "y"}
    assert source_provenance({"foo": 1}) is None


# ---------------------------------------------------------------------------
# the command line gives the explorer's result
# ---------------------------------------------------------------------------


@pytest.fixture
def relevance_file(tmp_path):
    d = smooth_noise((20, 22, 18), seed=3)
    d[0, 0, 0] = np.nan
    path = tmp_path / "rel.nii.gz"
    nib.save(nib.Nifti1Image(d, affine_2mm()), str(path))
    (tmp_path / "rel.json").write_text(json.dumps({"kind": "relevance", "method": "integrated-gradients"}))
    return path


def cli(*args):
    from napari_xai.cli import main

    return main([str(a) for a in args])


def test_cli_clusters_equals_the_explorer_and_carries_provenance(relevance_file, tmp_path, capsys):
    params = pp.PostParams(sigma_mm=2.0, scale="percentile", percentile=99.0, clip=True, sign="both",
                           threshold=0.35, min_size=24.0, size_unit="mm3", connectivity=26)
    rc = cli("clusters", relevance_file, "--sigma", 2, "--scale", "percentile", "--percentile", 99, "--clip",
             "--threshold", 0.35, "--min-size", 24, "--size-unit", "mm3", "--connectivity", 26,
             "--out-table", tmp_path / "T.csv", "--out-labels", tmp_path / "L.nii.gz")
    assert rc == 0
    out = capsys.readouterr()
    assert "NaN" in out.err and "wrote" in out.out
    vol = nib.load(relevance_file)
    with pytest.warns(UserWarning):
        expected = Explorer(np.asarray(vol.dataobj), vol.affine, params).update()
    assert np.array_equal(np.asarray(nib.load(tmp_path / "L.nii.gz").dataobj), expected.labels)
    assert (tmp_path / "T.csv").read_text() == expected.table.to_csv()
    rec = json.loads((tmp_path / "L.nii.gz.xai.json").read_text())
    assert rec["provenance"] == {"kind": "relevance", "method": "integrated-gradients"}
    assert rec["source_relevance"]["sha256"]
    # the sidecar alone reproduces the result; a flag overrides one parameter
    assert params_from_sidecar(tmp_path / "L.nii.gz.xai.json") == params
    rc = cli("clusters", relevance_file, "--params-from", tmp_path / "L.nii.gz.xai.json", "--out-labels", tmp_path / "L2.nii.gz")
    assert rc == 0
    assert np.array_equal(np.asarray(nib.load(tmp_path / "L2.nii.gz").dataobj), expected.labels)
    rc = cli("clusters", relevance_file, "--params-from", tmp_path / "L.nii.gz.xai.json", "--min-size", 0,
             "--out-labels", tmp_path / "L3.nii.gz")
    assert rc == 0
    rec3 = json.loads((tmp_path / "L3.nii.gz.xai.json").read_text())
    assert rec3["postprocess"]["min_size"] == 0 and rec3["postprocess"]["connectivity"] == 26


@pytest.mark.parametrize(
    "args,match",
    [
        (["--sigma", "-1", "--out-table", "T.csv"], "sigma"),
        (["--out-table", "T.csv", "--threshold", "-0.2"], "threshold"),
        ([], "at least one output"),
        (["--params-from", "missing.json", "--out-table", "T.csv"], "not found"),
        (["--out-table", "T.txt"], ".csv"),
    ],
)
def test_cli_user_errors_exit_2_with_one_line(relevance_file, tmp_path, capsys, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    assert cli("clusters", relevance_file, *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "Traceback" not in err[0]


def test_cli_empty_result_is_not_an_error(relevance_file, tmp_path, capsys):
    assert cli("clusters", relevance_file, "--threshold", 5, "--out-table", tmp_path / "T.csv") == 0
    assert "Lower the threshold" in capsys.readouterr().err
    assert (tmp_path / "T.csv").read_text().strip().splitlines() == [",".join(pp.TABLE_COLUMNS)]
