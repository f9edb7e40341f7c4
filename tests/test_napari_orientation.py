"""The napari reader and writer on scans stored in any orientation, results re-opened as results, and the one
layer -> volume path of the widgets (needs Xvfb: see scripts/test.sh).

Independent facts: nibabel's affines and arrays of the files (a voxel's world position in the layer equals the
file's), a non-black rendered 2D/3D canvas, and bit-for-bit equality of a file saved back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest

import napari  # noqa: F401  - a missing GUI stack fails these tests, never skips them
from napari_xai.core import geometry

ZOOMS = (1.0, 2.0, 3.0)  # non-isotropic voxels
RAS_SHAPE = (16, 14, 12)


def _scan(tmp_path, codes: str, dtype=np.float32, zooms=ZOOMS, name=None, tilt_deg=0.0):
    """A smooth positive volume with an off-centre bright blob, stored in ``codes`` order (tilted about z by
    ``tilt_deg``: an oblique acquisition); (path, nibabel image)."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in RAS_SHAPE], indexing="ij")
    vol = 10 + 5 * np.sin(i / 3.0) + j + 200 * np.exp(-((i - 4) ** 2 + (j - 9) ** 2 + (k - 7) ** 2) / 6.0)
    ras = np.diag([*zooms, 1.0])
    ras[:3, 3] = [-7.5, 12.0, -20.0]
    img = nib.Nifti1Image(vol.astype(dtype), ras)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))
    out = img.as_reoriented(ornt)
    out.set_data_dtype(dtype)
    if tilt_deg:
        t = np.deg2rad(tilt_deg)
        rot = np.eye(4)
        rot[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        out = nib.Nifti1Image(np.asarray(out.dataobj), rot @ out.affine)
    assert nib.aff2axcodes(out.affine) == tuple(codes)
    path = tmp_path / (name or f"scan_{codes}.nii.gz")
    nib.save(out, str(path))
    return path, nib.load(str(path))


def _voxels(shape, n=12, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(n)]


def _assert_world_matches_file(layer, img, data=None):
    """Each of some file voxels sits at the same world position (mm) in the layer, with the same value."""
    stored = np.asarray(img.dataobj) if data is None else data
    shown = np.asarray(layer.data)
    for s in _voxels(stored.shape):
        xyz = nib.affines.apply_affine(img.affine, s)
        t = np.asarray(layer.world_to_data(xyz), dtype=float)
        np.testing.assert_allclose(t, np.round(t), atol=1e-6)
        assert shown[tuple(int(round(v)) for v in t)] == stored[s]


def _not_black(rgba) -> bool:
    arr = np.asarray(rgba)[..., :3].astype(float)
    return float(arr.std()) > 5.0 and float(arr.max()) > 100.0


@pytest.mark.parametrize("codes,tilt", [("RAS", 0.0), ("LAS", 0.0), ("PIR", 0.0), ("PIR", 12.0), ("RAS", 12.0)])
def test_reader_opens_every_orientation_in_world_space_and_slices(make_napari_viewer, tmp_path, codes, tilt):
    path, img = _scan(tmp_path, codes, tilt_deg=tilt)
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(path), plugin="napari-xai")
    assert [layer.name for layer in viewer.layers] == [f"scan_{codes}"]
    layer = layers[0]
    _assert_world_matches_file(layer, img)
    assert (geometry.STORAGE_KEY in layer.metadata) == (codes == "PIR")  # LAS/RAS are shown as stored
    np.testing.assert_array_equal(geometry.layer_stored(layer)[1], img.affine)
    # 2D slicing through the blob's centre (world mm), then 3D: rendered, not black
    stored = np.asarray(img.dataobj)
    s = np.unravel_index(int(np.argmax(stored)), stored.shape)  # the blob's centre, in the file's voxels
    blob = nib.affines.apply_affine(img.affine, s)  # ... and in world mm
    viewer.dims.ndisplay = 2
    for axis in range(3):
        viewer.dims.set_point(axis, blob[axis])
    # napari 0.9 slices a tilted (oblique) volume only approximately in 2D ("non-orthogonal slicing ... not fully
    # supported": no value read, some slices blank) whether it is stored RAS or PIR; 3D is exact
    if not tilt:
        assert layer.get_value(blob, world=True) == stored[s]
        assert _not_black(viewer.screenshot(canvas_only=True, flash=False))
    viewer.dims.ndisplay = 3
    assert _not_black(viewer.screenshot(canvas_only=True, flash=False))


@pytest.mark.parametrize("codes,dtype", [("PIR", np.float32), ("PIR", np.int16), ("LAS", np.float32), ("RAS", np.int16)])
def test_read_then_save_restores_the_file_bit_for_bit(make_napari_viewer, tmp_path, codes, dtype):
    path, img = _scan(tmp_path, codes, dtype=dtype)
    viewer = make_napari_viewer()
    layer = viewer.open(str(path), plugin="napari-xai")[0]
    out = tmp_path / "saved.nii.gz"
    layer.save(str(out), plugin="napari-xai")
    back = nib.load(str(out))
    assert back.shape == img.shape and back.get_data_dtype() == img.get_data_dtype()
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(img.dataobj))
    np.testing.assert_array_equal(back.affine, img.affine)
    for key in ("sform_code", "qform_code", "pixdim", "srow_x", "srow_y", "srow_z", "quatern_b", "quatern_c",
                "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"):
        np.testing.assert_array_equal(back.header[key], img.header[key], err_msg=key)


def _cli(*args, cwd):
    exe = shutil.which("napari-xai", path=os.path.dirname(sys.executable)) or "napari-xai"
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_exported_relevance_and_clusters_reopen_as_results(make_napari_viewer, tmp_path):
    from napari_xai._layers import relevance_layer_data
    from napari_xai.core.explain import explain
    from napari_xai.core.models import load_model
    from napari_xai.core.volumes import load_nifti

    path, img = _scan(tmp_path, "PIR")
    _cli("explain", "--model", "demo", "--method", "saliency", str(path), "--out", "rel.nii.gz", "--quiet", cwd=tmp_path)
    _cli("clusters", "rel.nii.gz", "--threshold", "0.3", "--out-labels", "cl.nii.gz", "--quiet", cwd=tmp_path)
    record = json.loads((tmp_path / "rel.nii.gz.xai.json").read_text())
    rel_img = nib.load(str(tmp_path / "rel.nii.gz"))
    signed = np.asarray(rel_img.dataobj)
    assert (signed > 0).any() and (signed < 0).any()

    viewer = make_napari_viewer()
    layers = viewer.open(str(tmp_path / "rel.nii.gz"), plugin="napari-xai")
    base = f"demo · saliency · {record['target']['name']}"
    assert [layer.name for layer in layers] == [base + " (+)", base + " (−)"]
    pos, neg = layers
    # the same layers a live run makes (names, colormaps, contrast, blending), from the same file's input
    live = relevance_layer_data(explain(load_nifti(path), load_model("demo", device="cpu"), "saliency"))
    for layer, (data, kw, kind) in zip(layers, live):
        assert kind == "image" and layer.name == kw["name"]
        assert layer.colormap.name == kw["colormap"] and layer.blending == "additive" and layer.rendering == "mip"
        np.testing.assert_allclose(layer.contrast_limits, kw["contrast_limits"], rtol=1e-5)
        np.testing.assert_allclose(layer.data, data, rtol=1e-5, atol=1e-9)
        assert layer.metadata["provenance"]["method"] == "saliency"
    assert 0.0 <= pos.contrast_limits[0] < pos.contrast_limits[1]  # percentile limits (issue 12)
    _assert_world_matches_file(pos, rel_img, np.clip(signed, 0, None))
    _assert_world_matches_file(neg, rel_img, np.clip(-signed, 0, None))
    # the Explain widget offers it for 'Use its settings', not as an input
    from napari_xai._qt.explain_widget import ExplainWidget

    widget = ExplainWidget(viewer)
    assert pos.name not in widget.inputs.choices and pos.name in widget.settings_from.choices
    # saved again from napari: the whole signed map, in the file's PIR order and affine
    neg.save(str(tmp_path / "again.nii.gz"), plugin="napari-xai")
    again = nib.load(str(tmp_path / "again.nii.gz"))
    np.testing.assert_array_equal(np.asarray(again.dataobj), signed)
    np.testing.assert_array_equal(again.affine, rel_img.affine)
    assert json.loads((tmp_path / "again.nii.gz.xai.json").read_text())["method"] == "saliency"

    labels = viewer.open(str(tmp_path / "cl.nii.gz"), plugin="napari-xai")
    assert len(labels) == 1 and type(labels[0]).__name__ == "Labels"
    cl_img = nib.load(str(tmp_path / "cl.nii.gz"))
    assert np.asarray(cl_img.dataobj).max() > 0
    _assert_world_matches_file(labels[0], cl_img)


def test_files_without_or_with_a_broken_sidecar_open_as_plain_images(make_napari_viewer, tmp_path):
    from napari_xai._reader import read_nifti

    path, img = _scan(tmp_path, "PIR", name="plain.nii.gz")
    broken, _ = _scan(tmp_path, "LAS", name="broken.nii.gz")
    (tmp_path / "broken.json").write_text("{not json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ((_, kw, kind),) = read_nifti(str(path))
    assert kind == "image" and "provenance" not in kw["metadata"] and "colormap" not in kw
    with pytest.warns(UserWarning, match="broken.json could not be read as a JSON sidecar"):
        ((_, kw, kind),) = read_nifti(str(broken))
    assert kind == "image" and any("broken.json" in w for w in kw["metadata"]["warnings"])
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning):
        layers = viewer.open(str(broken), plugin="napari-xai")
    assert [type(layer).__name__ for layer in layers] == ["Image"]


class _Recorder:
    """Wraps core.explain.explain: records the volume and keyword arguments the widget passes."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def __call__(self, volume, model, method, **kwargs):
        self.calls.append((volume, kwargs))
        kwargs = {k: v for k, v in kwargs.items() if k not in ("model_orientation", "model_spacing")}
        return self.real(volume, model, method, **kwargs)


def _run(widget, qtbot):
    widget.run_btn.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)


def test_pir_scan_explained_from_napari_is_explained_as_stored(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari_xai.core.explain as core_explain
    from napari_xai._qt.explain_widget import ExplainWidget

    rec = _Recorder(core_explain.explain)
    monkeypatch.setattr(core_explain, "explain", rec)
    path, img = _scan(tmp_path, "PIR")
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-xai")
    widget = ExplainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.method.value = "saliency"
    _run(widget, qtbot)
    assert widget.status.value.startswith("predicted"), widget.status.value
    ((volume, kwargs),) = rec.calls
    # the file's own voxel order and affine, as the CLI reads it; the demo model declares its own space
    np.testing.assert_array_equal(volume.affine, img.affine)
    np.testing.assert_array_equal(volume.data[0], np.asarray(img.dataobj))
    assert "model_orientation" not in kwargs and "model_spacing" not in kwargs
    rel = widget.last_result
    pos = viewer.layers[rel.label + " (+)"]
    _assert_world_matches_file(pos, nib.Nifti1Image(rel.data[0], img.affine), np.clip(rel.data[0], 0, None))
    pos.save(str(tmp_path / "map.nii.gz"), plugin="napari-xai")
    saved = nib.load(str(tmp_path / "map.nii.gz"))
    np.testing.assert_array_equal(saved.affine, img.affine)
    np.testing.assert_array_equal(np.asarray(saved.dataobj), rel.data[0])


def test_model_orientation_and_spacing_fields_reach_explain(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import napari_xai.core.explain as core_explain
    import napari_xai.core.models as core_models
    from napari_xai._qt.explain_widget import ExplainWidget

    rec = _Recorder(core_explain.explain)
    monkeypatch.setattr(core_explain, "explain", rec)
    demo = core_models.load_model("demo", device="cpu")
    loaded = []
    monkeypatch.setattr(core_models, "load_model", lambda source, **kw: loaded.append((source, kw)) or demo)
    path, _ = _scan(tmp_path, "PIR")
    (tmp_path / "net.py").write_text("class Net: pass\n")
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-xai")
    widget = ExplainWidget(viewer)
    widget.method.value = "saliency"
    assert widget.model_orientation.native.isHidden()  # the demo model declares its own space
    widget.source.value = "Python file + weights"
    assert not widget.model_orientation.native.isHidden() and not widget.model_spacing.native.isHidden()
    widget.path.value = str(tmp_path / "net.py")
    widget.class_name.value = "Net"

    _run(widget, qtbot)  # blank fields: nothing passed (the input is fed as stored)
    assert "model_orientation" not in rec.calls[-1][1] and "model_spacing" not in rec.calls[-1][1]
    widget.model_orientation.value, widget.model_spacing.value = "ras", "2"
    _run(widget, qtbot)
    assert rec.calls[-1][1]["model_orientation"] == "RAS" and rec.calls[-1][1]["model_spacing"] == 2.0
    widget.model_orientation.value, widget.model_spacing.value = "as stored", "1, 1 2.5"
    _run(widget, qtbot)
    assert "model_orientation" not in rec.calls[-1][1] and rec.calls[-1][1]["model_spacing"] == (1.0, 1.0, 2.5)
    assert loaded[-1][0].endswith("net.py:Net")  # the Python-file model was asked for

    n = len(rec.calls)
    for orientation, spacing, words in (("RAX", "", "not three axis codes"), ("RRS", "", "not three axis codes"),
                                        ("", "0", "positive number"), ("", "1,2", "positive number")):
        widget.model_orientation.value, widget.model_spacing.value = orientation, spacing
        widget.run()
        assert words in widget.status.value and "\n" not in widget.status.value.strip()
    assert len(rec.calls) == n  # refused before any work


def test_every_widget_uses_the_one_layer_affine():
    from pathlib import Path

    from napari_xai._qt import atlas_widget, explorer, lrp
    from napari_xai._qt.explorer import dock

    assert atlas_widget.layer_affine is geometry.layer_affine
    assert dock.layer_affine is geometry.layer_affine
    src = {m.__name__: open(m.__file__).read() for m in (atlas_widget,)}
    explorer_files = sorted(Path(explorer.__file__).parent.glob("*.py"))
    assert len(explorer_files) > 5  # the explorer's widget modules, each read
    src.update({f"explorer/{p.name}": p.read_text() for p in explorer_files})
    lrp_files = sorted(Path(lrp.__file__).parent.glob("*.py"))
    assert len(lrp_files) > 5  # the designer's tab modules, each read
    src.update({f"lrp/{p.name}": p.read_text() for p in lrp_files})
    atlas_files = sorted((Path(atlas_widget.__file__).parent / "atlas").glob("*.py"))
    assert len(atlas_files) > 5  # the Atlas dock's widget modules, each read
    src.update({f"atlas/{p.name}": p.read_text() for p in atlas_files})
    import napari_xai._qt.explain_widget as explain_widget

    src["explain"] = open(explain_widget.__file__).read()
    for name, text in src.items():
        assert "def layer_affine" not in text, name
        assert "layer.affine.affine_matrix, dtype=float)[-4:, -4:]" not in text, name


def test_masks_and_points_drawn_on_a_transposed_view_map_to_the_stored_grid(tmp_path):
    from types import SimpleNamespace

    from napari_xai._layers import array_on_grid, display_tuple, point_on_grid
    from napari_xai.core.segmentation import Ray
    from napari_xai.core.volumes import load_nifti

    path, img = _scan(tmp_path, "PIR")
    volume = load_nifti(path)
    shown, kw, _ = display_tuple((volume.data[0], {"affine": volume.affine, "metadata": {}}, "image"))
    view_affine = kw["affine"]
    # a Labels layer painted in napari on the shown grid (no storage record: napari made it)
    painted = np.zeros(shown.shape, np.uint8)
    t = (3, 5, 2)
    painted[t] = 1
    layer = SimpleNamespace(data=painted, metadata={}, ndim=3, name="mask",
                            data_to_world=lambda p: nib.affines.apply_affine(view_affine, p))
    on_grid = array_on_grid(layer, volume)
    assert on_grid.shape == volume.shape and on_grid.sum() == 1
    s = tuple(int(v) for v in np.argwhere(on_grid)[0])
    np.testing.assert_allclose(nib.affines.apply_affine(volume.affine, s), nib.affines.apply_affine(view_affine, t))
    assert point_on_grid(t, volume) == s
    ray = point_on_grid(Ray(origin=(3.0, 5.0, 2.0), direction=(0.0, 0.0, 1.0)), volume)
    np.testing.assert_allclose(nib.affines.apply_affine(volume.affine, ray.origin),
                               nib.affines.apply_affine(view_affine, (3.0, 5.0, 2.0)))
    # the direction is a vector: compare the linear parts
    np.testing.assert_allclose(volume.affine[:3, :3] @ ray.direction, view_affine[:3, :3] @ (0.0, 0.0, 1.0))
    # a volume shown as stored (LAS) leaves them alone
    las = load_nifti(_scan(tmp_path, "LAS")[0])
    assert point_on_grid(t, las) == t
