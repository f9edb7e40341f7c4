"""3D crop of the relevance layers (napari_xai._qt.lod): in 3D each (+)/(−) layer holds only the box of its
voxels above the lower contrast limit; in 2D the full arrays come back (needs Xvfb: see scripts/test.sh).

Independent facts: nibabel's affines of scans stored RAS, LAS and PIR with anisotropic voxels (a voxel's world
position in the cropped layer equals the file's), hand-built boxes, a 3D screenshot of the same scene with the
layers whole, and the file the writer saves (the signed map on the file's grid).
"""

from __future__ import annotations

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

import napari  # noqa: F401  - a missing GUI stack fails these tests, never skips them
from napari_xai.core import geometry

PLUGIN = "napari-xai"
SHAPE = (22, 18, 14)  # RAS voxel counts
ZOOMS = (1.0, 2.0, 3.0)


def test_above_box_is_the_bounding_box_of_the_voxels_above_a_level_widened_and_clipped():
    a = np.zeros((10, 8, 6), np.float32)
    a[2, 3, 1] = 5.0
    a[6, 4, 4] = 2.0
    a[9, 0, 0] = 1.0  # not above 1.0
    assert geometry.above_box(a, 1.0, pad=0) == (slice(2, 7), slice(3, 5), slice(1, 5))
    assert geometry.above_box(a, 1.0, pad=1) == (slice(1, 8), slice(2, 6), slice(0, 6))  # clipped at 0 and 6
    assert geometry.above_box(a, 0.5, pad=1) == (slice(1, 10), slice(0, 6), slice(0, 6))
    assert geometry.above_box(a, 5.0) == (slice(0, 1),) * 3  # nothing above: one voxel at the origin


def _relevance_scan(tmp_path, codes: str, shift: int = 0):
    """A signed map (weak dense noise, a positive and a negative blob) stored in ``codes`` order with
    anisotropic voxels; (nibabel image of the map, image of an anatomy on the same grid)."""
    rng = np.random.default_rng(0)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    rel = 0.01 * rng.standard_normal(SHAPE)
    rel += np.exp(-((i - 5 - shift) ** 2 + (j - 12) ** 2 + (k - 9) ** 2) / 3.0)
    rel -= np.exp(-((i - 15) ** 2 + (j - 5) ** 2 + (k - 4) ** 2) / 3.0)
    anat = 10 + j + 50 * np.exp(-((i - 11) ** 2 + (j - 9) ** 2 + (k - 7) ** 2) / 30.0)
    ras = np.diag([*ZOOMS, 1.0])
    ras[:3, 3] = [-7.5, 12.0, -20.0]
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))
    out = []
    for vol, name in ((rel, "rel"), (anat, "anat")):
        img = nib.Nifti1Image(vol.astype(np.float32), ras).as_reoriented(ornt)
        assert nib.aff2axcodes(img.affine) == tuple(codes)
        path = tmp_path / f"{name}_{codes}.nii.gz"
        nib.save(img, str(path))
        out.append(nib.load(str(path)))
    return out


def _relevance_tuples(img, label="rel"):
    from napari_xai._layers import relevance_layer_data

    rel = SimpleNamespace(data=np.asarray(img.dataobj, dtype=np.float32)[None], affine=img.affine, label=label,
                          header=None, provenance={"method": "test"}, warnings=[])
    return relevance_layer_data(rel)


def _scene(make_napari_viewer, tmp_path, codes, monkeypatch):
    from napari_xai._layers import upsert
    from napari_xai._qt import lod

    monkeypatch.setattr(lod, "MIN_VOXELS", 0)  # test volumes are tiny; the crop is the same at any size
    rel_img, anat_img = _relevance_scan(tmp_path, codes)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(700, 560)
    viewer.open(str(tmp_path / f"anat_{codes}.nii.gz"), plugin=PLUGIN)
    pos, neg = upsert(viewer, _relevance_tuples(rel_img))
    viewer.window.add_plugin_dock_widget(PLUGIN, "Explain")  # the docks install the 3D crop
    return viewer, rel_img, pos, neg, lod.install(viewer)


def _check_crop_in_world(layer, img, sign):
    """Every file voxel above the layer's lower limit sits in the cropped layer at the file's world position
    (nibabel), with its value; the crop is smaller than the grid."""
    stored = sign * np.asarray(img.dataobj, dtype=np.float32)
    lo = float(layer.contrast_limits[0])
    shown = np.asarray(layer.data)
    assert shown.size < stored.size
    above = np.argwhere(stored > lo)
    assert len(above) > 5
    for s in map(tuple, above):
        t = np.asarray(layer.world_to_data(nib.affines.apply_affine(img.affine, s)), dtype=float)
        np.testing.assert_allclose(t, np.round(t), atol=1e-6)
        idx = tuple(int(round(v)) for v in t)
        assert all(0 <= v < n for v, n in zip(idx, shown.shape)), (s, idx, shown.shape)
        assert shown[idx] == stored[s]


@pytest.mark.parametrize("codes", ["RAS", "LAS", "PIR"])
def test_relevance_layers_are_cropped_in_3d_in_world_mm_and_whole_in_2d(make_napari_viewer, tmp_path, codes,
                                                                        monkeypatch, qtbot):
    viewer, img, pos, neg, crop = _scene(make_napari_viewer, tmp_path, codes, monkeypatch)
    whole = {ly.name: (np.array(ly.data), ly.affine.affine_matrix.copy()) for ly in (pos, neg)}
    assert not crop.is_cropped(pos) and pos.data.shape == whole[pos.name][0].shape  # 2D: whole

    viewer.dims.ndisplay = 3
    for layer, sign in ((pos, 1.0), (neg, -1.0)):
        assert crop.is_cropped(layer)
        _check_crop_in_world(layer, img, sign)
        rec = layer.metadata["xai_crop"]
        assert tuple(rec["shape"]) == whole[layer.name][0].shape
        np.testing.assert_allclose(rec["affine"], whole[layer.name][1])
        assert layer.metadata["xai_relevance"].shape == whole[layer.name][0].shape  # the signed map stays whole

    # a lower limit shows more voxels: cropped again around them; a colormap not black at its low end: whole
    box_before = pos.data.shape
    pos.contrast_limits = (0.5 * pos.contrast_limits[0], pos.contrast_limits[1])
    assert crop.is_cropped(pos) and np.prod(pos.data.shape) >= np.prod(box_before)
    _check_crop_in_world(pos, img, 1.0)
    pos.colormap = "viridis"
    assert not crop.is_cropped(pos) and pos.data.shape == whole[pos.name][0].shape
    pos.colormap = "magma"  # nearly black at zero (0.0015, 0.0005, 0.014): not black, kept whole
    assert not crop.is_cropped(pos)
    neg.rendering = "attenuated_mip"
    assert not crop.is_cropped(neg)
    neg.rendering = "mip"
    assert crop.is_cropped(neg)

    viewer.dims.ndisplay = 2
    for layer in (pos, neg):
        assert not crop.is_cropped(layer) and "xai_crop" not in layer.metadata
        np.testing.assert_array_equal(layer.data, whole[layer.name][0])
        np.testing.assert_allclose(layer.affine.affine_matrix, whole[layer.name][1])


def test_the_3d_picture_is_the_same_with_the_crop_and_without(make_napari_viewer, tmp_path, monkeypatch, qtbot):
    viewer, img, pos, neg, crop = _scene(make_napari_viewer, tmp_path, "PIR", monkeypatch)
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (-15.0, 35.0, 145.0)
    viewer.reset_view()
    assert crop.is_cropped(pos) and crop.is_cropped(neg)
    cropped = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    crop.enabled = False
    shown_shape = geometry.to_view(np.asarray(img.dataobj), geometry.view_axes(img.affine)).shape  # PIR: as RAS
    assert not crop.is_cropped(pos) and pos.data.shape == neg.data.shape == shown_shape
    whole = viewer.screenshot(canvas_only=True, flash=False)[..., :3].astype(int)
    red = (whole[..., 0] > 200) & (whole[..., 0] - whole[..., 2] > 80)
    cyan = (whole[..., 2] > 200) & (whole[..., 2] - whole[..., 0] > 80)
    assert red.sum() > 20 and cyan.sum() > 20, "both relevance halves show"
    diff = np.abs(cropped - whole).max(axis=-1)
    # the same picture up to the rays' sampling phase at sharp edges
    assert (diff > 8).mean() < 0.005, ((diff > 8).mean(), diff.max())


def test_saving_a_cropped_layer_writes_the_signed_map_on_the_file_grid(make_napari_viewer, tmp_path, monkeypatch,
                                                                      qtbot):
    viewer, img, pos, neg, crop = _scene(make_napari_viewer, tmp_path, "LAS", monkeypatch)
    viewer.dims.ndisplay = 3
    assert crop.is_cropped(pos)
    out = tmp_path / "saved_pos.nii.gz"
    napari.save_layers(str(out), [pos], plugin=PLUGIN)
    saved = nib.load(str(out))
    np.testing.assert_allclose(saved.affine, img.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), np.asarray(img.dataobj))


def test_new_data_into_a_cropped_layer_is_cropped_around_the_new_map(make_napari_viewer, tmp_path, monkeypatch,
                                                                    qtbot):
    from napari_xai._layers import upsert

    viewer, img, pos, neg, crop = _scene(make_napari_viewer, tmp_path, "RAS", monkeypatch)
    viewer.dims.ndisplay = 3
    before = dict(pos.metadata["xai_crop"])
    sub = tmp_path / "moved"
    sub.mkdir()
    moved, _ = _relevance_scan(sub, "RAS", shift=10)  # the positive blob 10 voxels further along i
    upsert(viewer, _relevance_tuples(moved))  # a new explanation into the same layers, as the Explain dock does
    qtbot.waitUntil(lambda: crop.is_cropped(pos) and "xai_crop" in pos.metadata, timeout=5000)
    assert pos.metadata["xai_crop"]["offset"] != before["offset"]
    np.testing.assert_array_equal(pos.metadata["xai_relevance"], np.asarray(moved.dataobj))
    _check_crop_in_world(pos, moved, 1.0)


@pytest.mark.parametrize("dock", ["Concepts", "LRP designer"])
def test_the_concepts_and_lrp_designer_docks_install_the_3d_crop_on_their_own(make_napari_viewer, tmp_path,
                                                                              monkeypatch, dock):
    """Opened from the Plugins menu without Explain or the explorer, these docks (which add signed maps of their
    own) crop relevance halves in 3D too; 2D gets the whole arrays back. Stored PIR, anisotropic voxels."""
    from napari_xai._layers import upsert
    from napari_xai._qt import lod

    monkeypatch.setattr(lod, "MIN_VOXELS", 0)
    rel_img, _ = _relevance_scan(tmp_path, "PIR")
    viewer = make_napari_viewer(show=True)
    viewer.window.add_plugin_dock_widget(PLUGIN, dock)
    pos, neg = upsert(viewer, _relevance_tuples(rel_img))
    full = np.asarray(pos.data).copy()
    viewer.dims.ndisplay = 3
    assert np.asarray(pos.data).size < full.size and np.asarray(neg.data).size < full.size  # cropped by the dock's
    _check_crop_in_world(pos, rel_img, +1)
    crop = lod.install(viewer)  # the instance the dock installed
    assert crop.is_cropped(pos) and crop.is_cropped(neg)
    viewer.dims.ndisplay = 2
    assert not crop.is_cropped(pos) and np.array_equal(np.asarray(pos.data), full)
