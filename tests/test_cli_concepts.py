"""``napari-xai concepts`` through the executable (subprocess), and the reference cubes' geometry."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from napari_xai.core.geometry import crop_cube
from napari_xai.core.geometry import vox_to_world


def _exe() -> str:
    cand = os.path.join(os.path.dirname(sys.executable), "napari-xai")
    return cand if os.path.exists(cand) else shutil.which("napari-xai")


def _run(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([_exe(), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory):
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.volumes import save_nifti

    d = tmp_path_factory.mktemp("concepts")
    rows = ["id,path"]
    for seed in (1, 2, 3):
        vol, mask = demo_volume(seed, bool(seed % 2))
        save_nifti(d / f"s{seed}.nii.gz", vol.data[0], vol.affine)
        save_nifti(d / f"m{seed}.nii.gz", mask.astype(np.uint8), vol.affine)
        rows.append(f"s{seed},{d / f's{seed}.nii.gz'}")
    (d / "cohort.csv").write_text("\n".join(rows) + "\n")
    return d


def _one_line_error(r, text: str):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [l for l in r.stderr.strip().splitlines() if l]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert text in lines[0], lines[0]


def test_concepts_of_the_demo_volume(demo_files):
    import nibabel as nib

    out = demo_files / "out"
    r = _run("concepts", demo_files / "s1.nii.gz", "--model", "demo", "--top", "3", "--target", "atrophy",
             "--truth", demo_files / "m1.nii.gz", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "concepts.csv").open()))
    assert [int(x["rank"]) for x in rows] == [1, 2, 3]
    rel = [float(x["relevance"]) for x in rows]
    assert rel == sorted(rel, reverse=True)
    side = json.loads((out / "concepts.csv.xai.json").read_text())
    every = np.array(side["channel_relevance"])
    assert len(every) == 16 and sorted(every, reverse=True)[:3] == pytest.approx(rel, rel=1e-5)
    assert sum(float(x["share"]) for x in rows) == pytest.approx(sum(rel) / every.sum(), rel=1e-5)
    src = nib.load(demo_files / "s1.nii.gz")
    total = 0.0
    for x in rows:
        img = nib.load(out / x["map"])
        assert img.shape == src.shape and np.allclose(img.affine, src.affine)
        data = np.asarray(img.dataobj, np.float64)
        assert data.sum() == pytest.approx(float(x["map_sum"]), rel=1e-4)
        total += data.sum()
        assert 0.0 <= float(x["truth_share"]) <= 1.0 and x["region"]  # named by the default atlas (AAL)
        assert (out / (x["map"] + ".xai.json")).exists()
    unc = np.asarray(nib.load(out / "unconditioned.nii.gz").dataobj, np.float64)
    assert total < unc.sum()  # three of sixteen channels: part of the whole map
    # each map's record makes that map again: crp on its channel, the plain method for the unconditioned map
    for name in (rows[1]["map"], "unconditioned.nii.gz"):
        again = _run("reproduce", out / name)
        assert again.returncode == 0 and "reproduced" in again.stdout, (name, again.stdout, again.stderr)
    # again without --overwrite: refused in one line, nothing changed
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r2 = _run("concepts", demo_files / "s1.nii.gz", "--model", "demo", "--top", "3", "--out-dir", out)
    _one_line_error(r2, "exists")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.parametrize("args, text", [
    (["--method", "saliency"], "not LRP"),
    (["--top", "0"], "--top must be 1 to 4096"),
    (["--batch", "1000"], "--batch must be 1 to 256"),
    (["--channels", "two"], "channel numbers"),
    (["--refs", "3"], "give a cohort CSV"),
    (["--config", "nope.json"], "--method lrp"),
    (["--atlas-threshold", "150"], "percent"),
])
def test_bad_options_fail_before_work(demo_files, tmp_path, args, text):
    out = tmp_path / "o"
    r = _run("concepts", demo_files / "s1.nii.gz", "--model", "demo", *args, "--out-dir", out)
    _one_line_error(r, text)
    assert not out.exists() or not any(out.iterdir())


def test_a_cohort_csv_needs_refs(demo_files, tmp_path):
    _one_line_error(_run("concepts", demo_files / "cohort.csv", "--model", "demo", "--out-dir", tmp_path / "o"),
                    "--refs N")


def test_relevance_maximisation_writes_cubes_around_the_peaks(demo_files, tmp_path):
    import nibabel as nib

    out = tmp_path / "refs"
    r = _run("concepts", demo_files / "cohort.csv", "--model", "demo", "--channels", "15", "--refs", "2",
             "--target", "atrophy", "--crop-mm", "30", "--out-dir", out, "--quiet")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "references.csv").open()))
    assert [x["rank"] for x in rows] == ["1", "2"] and {x["channel"] for x in rows} == {"15"}
    peaks = [float(x["peak_relevance"]) for x in rows]
    assert peaks == sorted(peaks, reverse=True)
    # the ranking is the channel's peak relevance recorded by each subject's conditional map
    recorded = {}
    for s in ("s1", "s2", "s3"):
        side = json.loads((out / "channel_15" / "maps" / f"{s}.nii.gz.xai.json").read_text())
        assert side["params"]["channels"] == [15] and side["method"] == "crp"
        recorded[s] = side["params"]["peak_relevance"]
    assert [x["id"] for x in rows] == sorted(recorded, key=lambda s: -recorded[s])[:2]
    for x in rows:
        cube = nib.load(out / x["scan_cube"])
        assert cube.shape == (15, 15, 15)  # 30 mm at 2 mm voxels
        centre = vox_to_world(cube.affine, np.array([7, 7, 7]))
        peak = np.array([float(x[f"peak_{a}_mm"]) for a in "xyz"])
        assert np.all(np.abs(centre - peak) <= 1.0 + 1e-6)  # the nearest voxel to the peak
        src = nib.load(demo_files / f"{x['id']}.nii.gz")
        ijk = np.rint(np.linalg.inv(src.affine) @ np.append(centre, 1))[:3].astype(int)
        assert np.asarray(cube.dataobj)[7, 7, 7] == pytest.approx(np.asarray(src.dataobj)[tuple(ijk)], rel=1e-5)
        assert (out / (x["scan_cube"] + ".xai.json")).exists()
        assert (out / x["scan_cube"].replace(".nii.gz", "_relevance.nii.gz")).exists()
    png = (out / "channel_15" / "refs" / "montage.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("codes", ["LAS", "PIR"])
def test_crop_cube_keeps_world_positions(codes):
    """A cube cut from a scan stored LAS or PIR (1.5 mm) holds, at each voxel, the value the scan has at the same
    world point; parts outside the scan are the fill value."""
    import nibabel as nib

    shape = (30, 26, 22)
    ras = np.diag([1.5, 1.5, 1.5, 1.0])
    ras[:3, 3] = [-20, -18, -15]
    img = nib.Nifti1Image(np.zeros(shape, np.float32), ras)
    xform = nib.orientations.ornt_transform(nib.orientations.io_orientation(ras), nib.orientations.axcodes2ornt(tuple(codes)))
    aff = img.as_reoriented(xform).affine
    sshape = img.as_reoriented(xform).shape
    world = vox_to_world(aff, np.indices(sshape).reshape(3, -1).T).T.reshape(3, *sshape)
    data = world[0] * 1000 + world[1] * 10 + world[2]  # encodes the world point
    cube, caff = crop_cube(data, aff, (3.0, -1.5, 2.0), 12.0, fill=np.nan)
    assert cube.shape == (8, 8, 8)
    w = vox_to_world(caff, np.indices(cube.shape).reshape(3, -1).T).T.reshape(3, *cube.shape)
    ok = np.isfinite(cube)
    assert ok.sum() > 0
    np.testing.assert_allclose(cube[ok], (w[0] * 1000 + w[1] * 10 + w[2])[ok], atol=1e-3)
    edge, eaff = crop_cube(data, aff, (-20, -18, -15), 12.0, fill=np.nan)  # at a corner: partly outside
    assert np.isnan(edge).any() and np.isfinite(edge).any()


def test_all_channels_with_a_designer_configuration_add_up_to_the_plain_map(demo_files, tmp_path):
    """--method lrp --config (a designer file) --channels all: the 16 concept maps written by the executable sum
    to unconditioned.nii.gz within 1 %."""
    import nibabel as nib

    from napari_xai.core.lrp import LrpConfig, Segment, preset_params, save_configs

    cfg = save_configs(tmp_path / "rules.json", [LrpConfig(name="mine", segments=[
        Segment("features.0", "features.0", preset_params("lrp-gamma-rule", gamma1p=0.25), "low"),
        Segment("features.3", "classifier", preset_params("lrp-epsilon", epsilon=0.01), "rest")])])
    out = tmp_path / "all"
    r = _run("concepts", demo_files / "s1.nii.gz", "--model", "demo", "--method", "lrp", "--config", cfg,
             "--channels", "all", "--atlas", "none", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((out / "concepts.csv").open()))
    assert len(rows) == 16
    total = sum(np.asarray(nib.load(out / x["map"]).dataobj, np.float64) for x in rows)
    plain = np.asarray(nib.load(out / "unconditioned.nii.gz").dataobj, np.float64)
    assert np.abs(total - plain).sum() <= 0.01 * np.abs(plain).sum()
    side = json.loads((out / "concepts.csv.xai.json").read_text())
    assert side["params"]["configuration"]["name"] == "mine"
    assert sum(float(x["share"]) for x in rows) == pytest.approx(1.0, abs=1e-5)
