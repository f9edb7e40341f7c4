"""The explorer dock widget, driven by its controls, checked through the layers it updates.

Run under Xvfb (offscreen Qt has no OpenGL):
``xvfb-run -a .venv/bin/pytest tests/test_explorer_widget.py``
"""

from __future__ import annotations

import threading

from qtpy.QtCore import Qt

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_xai.core import postprocess as pp
from napari_xai.core.explorer import run

import napari  # noqa: E402,F401  - a missing GUI stack fails these tests, never skips them
import pytestqt  # noqa: E402,F401

from napari_xai._qt.explorer import CLUSTERS_NAME, FILTERED_NAME, ExplorerWidget  # noqa: E402


def affine_2mm():
    a = np.diag([2.0, 2.0, 2.0, 1.0])
    a[:3, 3] = [-20.0, -22.0, -18.0]
    return a


@pytest.fixture
def relevance():
    rng = np.random.default_rng(11)
    return ndimage.gaussian_filter(rng.standard_normal((20, 22, 18)), 1.3).astype(np.float32)


# the explorer offers only layers with a relevance record (issue 12); these test maps carry a minimal one
RECORD = {"kind": "relevance", "method": "test-map"}


def add_relevance(viewer, data, name="relevance", **metadata):
    aff = affine_2mm()
    return viewer.add_image(data, name=name, affine=aff, metadata={"affine": aff, "provenance": RECORD, **metadata})


def expected(data, params):
    return run(data, affine_2mm(), params)


def make(viewer, data, **metadata):
    layer = add_relevance(viewer, data, **metadata)
    w = ExplorerWidget(viewer)
    w.wait()
    return w, layer


def full(layer, shape=(20, 22, 18)):
    """The layer's data on the relevance grid. The explorer shows its layers cropped to the clusters' box
    (fast 3D rendering) and places the crop by the layer's affine: read back through napari's data_to_world."""
    aff = affine_2mm()
    origin = np.asarray(layer.data_to_world(np.zeros(3)), dtype=float)
    assert np.allclose(layer.affine.affine_matrix[:3, :3], aff[:3, :3])
    off = np.linalg.solve(aff[:3, :3], origin - aff[:3, 3])
    assert np.allclose(off, np.round(off)) and (off >= 0).all()
    off = np.round(off).astype(int)
    out = np.zeros(shape, dtype=layer.data.dtype)
    out[tuple(slice(o, o + n) for o, n in zip(off, layer.data.shape))] = layer.data
    return out


def masked(res):
    return np.where(res.labels > 0, res.filtered, 0)


def test_widget_creates_two_layers_and_updates_them_in_place(make_napari_viewer, relevance):
    viewer = make_napari_viewer()
    w, _ = make(viewer, relevance)
    clusters = viewer.layers[CLUSTERS_NAME]
    filtered = viewer.layers[FILTERED_NAME]
    assert clusters.data.dtype == np.uint16
    res = expected(relevance, w.params())
    assert np.array_equal(full(clusters), res.labels)
    assert np.array_equal(full(filtered), masked(res))
    n_layers = len(viewer.layers)
    for t in (0.2, 0.35, 0.6, 0.45):
        w.threshold_slider.setValue(t)
        w.wait()
    assert len(viewer.layers) == n_layers  # no pile-up
    assert viewer.layers[CLUSTERS_NAME] is clusters and viewer.layers[FILTERED_NAME] is filtered
    res = expected(relevance, pp.PostParams(threshold=0.45))
    assert w.result.params.threshold == pytest.approx(0.45)
    assert np.array_equal(full(clusters), res.labels)
    assert res.n_clusters > 1
    # un-masked view shows the whole filtered map
    w.mask_check.setChecked(False)
    assert np.array_equal(filtered.data, res.filtered)

    # throttling: a fast drag (40 events without the event loop running) computes at most twice
    before = w._explorer.counts["label"]
    for t in np.linspace(0.1, 0.6, 40):
        w.threshold_slider.setValue(float(t))
    w.wait()
    assert w._explorer.counts["label"] - before <= 2
    assert w.result.params.threshold == pytest.approx(0.6)

    # the per-slice plots hold the filtered map's sums and follow the dims
    res = w.result
    pos0, neg0 = res.profiles[0]
    assert np.allclose(pos0, np.clip(res.filtered, 0, None).sum(axis=(1, 2)))
    assert np.allclose(neg0, np.clip(res.filtered, None, 0).sum(axis=(1, 2)))
    viewer.dims.set_point(0, -20.0 + 2.0 * 7)  # world x of voxel i = 7
    w.wait()  # the guides follow the dims through their coalescing timer
    xs = [line.get_xdata()[0] for line in w.guides.slice_lines]
    assert xs[0] == pytest.approx(7.0)


def test_cluster_size_slider_runs_on_the_gui_thread_and_reuses_the_labelling(make_napari_viewer, relevance):
    viewer = make_napari_viewer()
    w, _ = make(viewer, relevance)
    w.threshold_slider.setValue(0.25)
    w.wait()
    labelled = w._explorer.counts["label"]
    w.size_slider.setValue(500)  # logarithmic slider -> some voxels
    w.wait()
    ms = w.min_size_spin.value()
    assert ms > 1
    assert w._explorer.last_ran == ("size",)
    assert w._explorer.counts["label"] == labelled
    res = expected(relevance, pp.PostParams(threshold=0.25, min_size=ms))
    assert np.array_equal(full(viewer.layers[CLUSTERS_NAME]), res.labels)
    assert res.n_clusters < res.n_clusters_before_size
    assert f"{ms:.1f} voxels" in w.size_readout.text() and "mm³" in w.size_readout.text()
    # the histogram marks the current minimum size
    line = w.hist_ax.get_lines()[-1]
    assert line.get_xdata()[0] == pytest.approx(max(ms, 1.0))
    # mm³ unit: the value converts (8 mm³ voxels) and the result is unchanged
    w.size_unit_combo.setCurrentText("mm3")
    w.wait()
    assert w.min_size_spin.value() == pytest.approx(round(ms * 8.0, 1))
    assert np.array_equal(full(viewer.layers[CLUSTERS_NAME]), res.labels)

    # slow stages run in a worker thread, the size stage on the GUI thread
    threads = []
    original = w._explorer.update

    def spy(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return original(*args, **kwargs)

    w._explorer.update = spy
    w.size_unit_combo.setCurrentText("voxels")
    w.wait()
    threads.clear()
    w.sign_combo.setCurrentText("negative")
    w.wait()
    w.min_size_spin.setValue(3)
    w.wait()
    assert threads == [False, True]
    res = expected(relevance, pp.PostParams(threshold=0.25, sign="negative", min_size=3))
    assert np.array_equal(full(viewer.layers[CLUSTERS_NAME]), res.labels)
    assert set(res.table.sign) == {-1}


def test_layers_are_only_touched_on_the_main_thread(make_napari_viewer_proxy, relevance):
    viewer = make_napari_viewer_proxy()
    w, _ = make(viewer, relevance)
    # the proxy refuses attribute writes from other threads (the check below would fail otherwise)
    errors = []

    def touch():
        try:
            viewer.layers[CLUSTERS_NAME].opacity = 0.3
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=touch)
    t.start()
    t.join()
    assert errors and "main Qt thread" in str(errors[0])
    # slow updates (smoothing, filter, threshold) go through the worker and still succeed
    w.sigma_spin.setValue(2.0)
    w.wait()
    w.filter_combo.setCurrentText("clamp")
    w.alpha_slider.setValue((0.0, 0.6))
    w.wait()
    w.threshold_slider.setValue(0.3)
    w.wait()
    assert w.message_label.text() == "" or "internal" not in w.message_label.text()
    p = pp.PostParams(sigma_mm=2.0, filter="clamp", alpha=(0.0, 0.6), threshold=0.3)
    assert w.result.params == p.validated()
    assert np.array_equal(full(viewer.layers[CLUSTERS_NAME]), expected(relevance, p).labels)


def test_table_click_centres_the_view_and_highlights(make_napari_viewer, relevance, qtbot):
    viewer = make_napari_viewer()
    w, _ = make(viewer, relevance)
    w.threshold_slider.setValue(0.3)
    w.wait()
    res = w.result
    assert w.table_model.rowCount() == res.n_clusters
    # sort by voxels ascending: the first row is the smallest cluster
    w.table_view.sortByColumn(2, Qt.SortOrder.AscendingOrder)
    first = w.table_proxy.index(0, 0)
    cid = int(w.table_proxy.data(first))
    assert cid == res.n_clusters or res.table.voxels[cid - 1] == res.table.voxels.min()
    w.table_view.clicked.emit(first)
    row = res.table.row(cid)
    assert np.allclose(np.asarray(viewer.dims.point)[-3:], row["peak_mm"], atol=1.01)  # one 2 mm step
    labels = viewer.layers[CLUSTERS_NAME]
    assert labels.selected_label == cid and labels.show_selected_label
    # the cluster under the cursor
    viewer.cursor.position = tuple(row["peak_mm"])
    assert f"cluster {cid} " in w.cursor_label.text() and f"{row['voxels']} voxels" in w.cursor_label.text()
    w.highlight_check.setChecked(False)
    assert not labels.show_selected_label


def test_bad_input_gives_messages_not_crashes(make_napari_viewer, relevance):
    viewer = make_napari_viewer()
    d = relevance.copy()
    d[2, 3, 4] = np.nan
    w, _ = make(viewer, d)
    assert "NaN" in w.message_label.text()
    # threshold above the maximum: empty layers, a message
    w.set_params(w.params().replace(scale="none", threshold=50.0))
    w.wait()
    assert not viewer.layers[CLUSTERS_NAME].data.any()
    assert "Lower the threshold" in w.message_label.text()
    # min size above every cluster
    w.set_params(pp.PostParams(threshold=0.3, min_size=1e6))
    w.wait()
    assert not viewer.layers[CLUSTERS_NAME].data.any()
    assert "no cluster has at least" in w.message_label.text()
    # an all-zero layer
    viewer.layers.clear()
    add_relevance(viewer, np.zeros((6, 6, 6), np.float32), name="zeros")
    w.wait()
    assert w.layer_combo.currentText() == "zeros"
    assert "all zeros" in w.message_label.text()
    # more clusters than uint16 labels: refused with a message, nothing wrapped
    viewer.layers.clear()
    grid = np.zeros((1, 516, 516), np.float32)
    grid[:, ::2, ::2] = 1.0  # 258² = 66,564 one-voxel clusters
    add_relevance(viewer, grid, name="grid")
    w.set_params(pp.PostParams(scale="none", threshold=0.5, min_size=2))
    w.wait()
    assert w.layer_combo.currentText() == "grid"
    assert not viewer.layers[CLUSTERS_NAME].data.any()
    w.min_size_spin.setValue(0)
    w.wait()
    assert "65,535" in w.message_label.text()
    assert not viewer.layers[CLUSTERS_NAME].data.any()  # the previous (valid) labels stay


def test_uses_the_signed_map_of_split_relevance_layers(make_napari_viewer, relevance):
    viewer = make_napari_viewer()
    # napari-xai's explain widget shows |negative| in a separate layer and keeps the signed map in metadata
    w, _ = make(viewer, np.clip(relevance, 0, None), name="map (+)", xai_relevance=relevance,
                provenance={"kind": "relevance", "method": "saliency"})
    res = expected(relevance, w.params())
    assert -1 in set(res.table.sign)
    assert np.array_equal(full(viewer.layers[CLUSTERS_NAME]), res.labels)
    assert viewer.layers[CLUSTERS_NAME].metadata["provenance"]["provenance"]["method"] == "saliency"


def test_save_then_cli_gives_exactly_the_widget_result(make_napari_viewer, relevance, tmp_path):
    import json

    from napari_xai._reader import read_nifti
    from napari_xai.cli import main

    path = tmp_path / "rel.nii.gz"
    nib.save(nib.Nifti1Image(relevance, affine_2mm()), str(path))
    (tmp_path / "rel.json").write_text(json.dumps({"kind": "relevance", "method": "integrated-gradients"}))
    viewer = make_napari_viewer()
    for data, kwargs, kind in read_nifti(str(path)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    w = ExplorerWidget(viewer)
    w.wait()
    params = pp.PostParams(sigma_mm=3.0, scale="percentile", percentile=99.5, clip=True, filter="pass",
                           alpha=(0.0, 0.8), sign="both", threshold=0.4, min_size=16.0, size_unit="mm3",
                           connectivity=6)
    w.set_params(params)
    w.wait()
    assert w.result.params == params.validated()
    written = w.save(tmp_path / "out")
    assert {p.name for p in written} >= {"out_clusters.nii.gz", "out_clusters.nii.gz.xai.json", "out_table.csv", "out_table.csv.xai.json",
                                         "out_filtered.nii.gz", "out_filtered.nii.gz.xai.json"}
    side = json.loads((tmp_path / "out_clusters.nii.gz.xai.json").read_text())
    assert side["provenance"]["method"] == "integrated-gradients"
    assert side["source_relevance"]["sha256"]
    rc = main(["clusters", str(path), "--sigma", "3", "--scale", "percentile", "--percentile", "99.5", "--clip",
               "--filter", "pass", "--alpha", "0,0.8", "--sign", "both", "--threshold", "0.4", "--min-size", "16",
               "--size-unit", "mm3", "--connectivity", "6", "--out-table", str(tmp_path / "cli_table.csv"),
               "--out-labels", str(tmp_path / "cli_labels.nii.gz")])
    assert rc == 0
    a = np.asarray(nib.load(tmp_path / "out_clusters.nii.gz").dataobj)
    b = np.asarray(nib.load(tmp_path / "cli_labels.nii.gz").dataobj)
    assert a.dtype == b.dtype == np.uint16
    assert np.array_equal(a, b) and a.any()
    assert (tmp_path / "out_table.csv").read_text() == (tmp_path / "cli_table.csv").read_text()
    # and from the widget's sidecar alone
    assert main(["clusters", str(path), "--params-from", str(tmp_path / "out_clusters.nii.gz.xai.json"),
                 "--out-labels", str(tmp_path / "cli2.nii.gz")]) == 0
    assert np.array_equal(np.asarray(nib.load(tmp_path / "cli2.nii.gz").dataobj), a)


# ---------------------------------------------------------------------------
# atlas columns (issue 4, point 4): anatomy at known MNI coordinates
# ---------------------------------------------------------------------------

# 4 mm MNI grid, LAS like FSL's templates (small: software rendering is slow)
MNI_4MM = np.array([[-4.0, 0, 0, 90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
MNI_SHAPE = (46, 55, 46)
HIPPO_L_MM = (-26.0, -18.0, -16.0)  # a voxel centre of this grid, 2.4 mm from MNI (-25, -20, -15): left hippocampus
THAL_R_MM = (10.0, -18.0, 8.0)  # a voxel centre in the right thalamus (2 mm from MNI (12, -18, 8))


def _voxel(world):
    """Voxel of a world point on MNI_4MM, by hand: i = (90 - x) / 4, j = (y + 126) / 4, k = (z + 72) / 4."""
    x, y, z = world
    ijk = ((90 - x) / 4, (y + 126) / 4, (z + 72) / 4)
    assert all(float(v).is_integer() for v in ijk)
    return tuple(int(v) for v in ijk)


def _two_blobs():
    """+1 peak in the left hippocampus, −0.8 peak in the right thalamus (Gaussians, σ = 1 voxel)."""
    idx = np.indices(MNI_SHAPE).astype(np.float32)
    out = np.zeros(MNI_SHAPE, np.float32)
    for world, amp in ((HIPPO_L_MM, 1.0), (THAL_R_MM, -0.8)):
        c = np.array(_voxel(world), np.float32).reshape(3, 1, 1, 1)
        out += amp * np.exp(-((idx - c) ** 2).sum(0) / 2.0)
    return out


def _hover(viewer, world):
    """The mouse over ``world`` on the 2D slice through it (napari reports the slice's coordinate too)."""
    viewer.dims.set_point(range(3), world)
    viewer.cursor.position = world


def _cells(w, column):
    """The table's cells of a column, in view (sorted) order."""
    return [w.table_proxy.data(w.table_proxy.index(r, column)) for r in range(w.table_proxy.rowCount())]


def test_atlas_columns_cursor_region_and_save(make_napari_viewer, qtbot, tmp_path):
    import json

    from napari_xai._qt.atlas_widget import AtlasWidget
    from napari_xai._qt.explorer import COLUMNS
    from napari_xai.cli import main

    viewer = make_napari_viewer()
    rel = _two_blobs()
    viewer.add_image(rel, name="relevance", affine=MNI_4MM, metadata={"affine": MNI_4MM, "provenance": RECORD})
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_params(pp.PostParams(scale="max", threshold=0.3, min_size=1))
    w.wait()
    res = w.result
    assert res.n_clusters == 2 and list(res.table.sign) == [1, -1]
    assert np.allclose(res.table.peak_mm[0], HIPPO_L_MM) and np.allclose(res.table.peak_mm[1], THAL_R_MM)
    peak_col, regions_col = len(COLUMNS), len(COLUMNS) + 1
    header = w.table_model.headerData
    assert header(peak_col, Qt.Orientation.Horizontal) == "peak region"
    assert header(regions_col, Qt.Orientation.Horizontal) == "regions"
    # no atlas yet: empty cells, no region in the readout
    assert _cells(w, peak_col) == ["", ""] and _cells(w, regions_col) == ["", ""]
    _hover(viewer, HIPPO_L_MM)
    assert "cluster 1 " in w.cursor_label.text() and "region" not in w.cursor_label.text()

    # the atlas widget is docked after the explorer: the explorer finds it by itself
    aw = AtlasWidget(viewer)
    viewer.window.add_dock_widget(aw)
    aw.volume_combo.setCurrentText("relevance")
    aw.set_atlas("aal")
    aw.load(sync=True)
    w.wait()
    assert w.atlas_grid is not None and w.atlas_grid.atlas.name == aw.grid.atlas.name
    by_id = dict(zip((int(c) for c in _cells(w, 0)), zip(_cells(w, peak_col), _cells(w, regions_col))))
    assert by_id[1][0] == "Hippocampus_L" and by_id[2][0] == "Thalamus_R"
    # the overlap shares, counted by hand from the atlas on this grid
    lab = w.atlas_grid.labels
    for cid, name in ((1, "Hippocampus_L"), (2, "Thalamus_R")):
        inside = res.labels == cid
        value = next(v for v, r in w.atlas_grid.atlas.regions.items() if r.name == name)
        share = 100.0 * np.count_nonzero(lab[inside] == value) / np.count_nonzero(inside)
        assert share > 50
        assert f"{name} {share:.0f}%" in by_id[cid][1]
    # sortable like the other columns
    w.table_view.sortByColumn(peak_col, Qt.SortOrder.DescendingOrder)
    assert _cells(w, peak_col) == ["Thalamus_R", "Hippocampus_L"] and _cells(w, 0) == ["2", "1"]
    w.table_view.sortByColumn(peak_col, Qt.SortOrder.AscendingOrder)
    assert _cells(w, peak_col) == ["Hippocampus_L", "Thalamus_R"]

    # the cursor readout names the region, also outside every cluster
    _hover(viewer, HIPPO_L_MM)
    assert "cluster 1 " in w.cursor_label.text() and "Hippocampus_L" in w.cursor_label.text()
    _hover(viewer, THAL_R_MM)
    assert "cluster 2 " in w.cursor_label.text() and "Thalamus_R" in w.cursor_label.text()
    _hover(viewer, (0.0, 60.0, 80.0))  # outside the brain
    assert "cluster under cursor: –" in w.cursor_label.text() and "none" in w.cursor_label.text()
    # 3D: the region is the first labelled one along the view ray (here +x from outside the head, through the
    # left hippocampus' y and z), found by hand on the atlas grid: x = 90 - 4 i, so +x walks i downwards
    viewer.dims.ndisplay = 3
    viewer.scene.camera.set_view_direction((1.0, 0.0, 0.0), up_direction=(0.0, 0.0, 1.0))  # the picking ray (public API)
    viewer.cursor.position = (-120.0, HIPPO_L_MM[1], HIPPO_L_MM[2])
    j, k = int(round((HIPPO_L_MM[1] + 126) / 4)), int(round((HIPPO_L_MM[2] + 72) / 4))
    row = lab[:, j, k]
    first = int(np.flatnonzero(row)[-1])
    expected = w.atlas_grid.atlas.name_of(int(row[first]))
    assert expected and expected != "Hippocampus_L"  # cortex comes first from outside
    assert f"region ({w.atlas_grid.atlas.name}): {expected}" in w.cursor_label.text()
    viewer.dims.ndisplay = 2

    # a size step keeps the columns in step with the rows (the negative cluster drops out)
    w.min_size_spin.setValue(float(res.table.voxels[0]))
    w.wait()
    assert w.result.n_clusters == 1 and _cells(w, peak_col) == ["Hippocampus_L"]
    w.min_size_spin.setValue(1)
    w.wait()

    # Save: the table CSV carries the columns, its sidecar names the atlas; the CLI with --atlas agrees
    w.save(tmp_path / "out")
    text = (tmp_path / "out_table.csv").read_text()
    head, first, second = text.splitlines()
    assert head.endswith(",peak_region,regions")
    assert first.startswith("1,positive,") and ",Hippocampus_L," in first
    assert second.startswith("2,negative,") and ",Thalamus_R," in second
    side = json.loads((tmp_path / "out_table.csv.xai.json").read_text())
    assert side["atlas"]["name"] == w.atlas_grid.atlas.name and side["columns"][-2:] == ["peak_region", "regions"]
    assert "atlas" not in json.loads((tmp_path / "out_clusters.nii.gz.xai.json").read_text())
    path = tmp_path / "rel.nii.gz"
    nib.save(nib.Nifti1Image(rel, MNI_4MM), str(path))
    assert main(["clusters", str(path), "--params-from", str(tmp_path / "out_clusters.nii.gz.xai.json"), "--atlas", "aal",
                 "--out-table", str(tmp_path / "cli.csv"), "--quiet"]) == 0
    assert (tmp_path / "cli.csv").read_text() == text

    # another atlas in the atlas widget: the columns and the readout follow (its atlas_changed signal)
    _hover(viewer, THAL_R_MM)
    assert "Thalamus_R" in w.cursor_label.text()
    aw.set_atlas("harvard-oxford")
    aw.load(sync=True)
    w.wait()
    assert w.atlas_grid.atlas.is_probabilistic
    w.table_view.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    assert _cells(w, peak_col) == ["Left_Hippocampus", "Right_Thalamus"]
    assert "Left_Hippocampus" in _cells(w, regions_col)[0]
    # the mouse did not move: the readout changed with the atlas, and shows the probability there
    assert "region (Harvard-Oxford): Right_Thalamus " in w.cursor_label.text() and "%" in w.cursor_label.text()


@pytest.mark.parametrize(
    "args,match",
    [
        (["--atlas", "aal", "--out-labels", "L.nii.gz"], "--out-table"),
        (["--atlas", "no-such-atlas", "--out-table", "T.csv"], "no-such-atlas"),
        # X.csv and X.nii.gz have their own sidecars now (X.csv.xai.json, X.nii.gz.xai.json); one file twice collides
        (["--atlas", "aal", "--out-table", "T.csv", "--out-labels", "X.nii.gz", "--out-filtered", "X.nii.gz"], "collide"),
    ],
)
def test_cli_atlas_user_errors_write_nothing(tmp_path, capsys, monkeypatch, args, match):
    from napari_xai.cli import main

    nib.save(nib.Nifti1Image(_two_blobs(), MNI_4MM), str(tmp_path / "rel.nii.gz"))
    monkeypatch.chdir(tmp_path)
    assert main(["clusters", "rel.nii.gz", "--threshold", "0.3", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "Traceback" not in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rel.nii.gz"]


def test_offers_only_relevance_layers_unless_any_image(make_napari_viewer, relevance):
    # issue 12: a T1 is never taken as relevance; a map without a record is offered when asked for
    viewer = make_napari_viewer()
    aff = affine_2mm()
    viewer.add_image(np.abs(relevance), name="T1", affine=aff, metadata={"affine": aff})
    w = ExplorerWidget(viewer)
    assert w.layer_combo.count() == 0 and w.hint_label.isVisibleTo(w) and w.result is None
    w.any_image_check.setChecked(True)
    assert [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())] == ["T1"]
    w.any_image_check.setChecked(False)
    add_relevance(viewer, relevance, name="map")
    w.wait()
    assert w.layer_combo.currentText() == "map" and not w.hint_label.isVisibleTo(w)
    # a newer relevance map is followed; deleting it goes back to the remaining one
    add_relevance(viewer, -relevance, name="newer")
    w.wait()
    assert w.layer_combo.currentText() == "newer"
    viewer.layers.remove("newer")
    w.wait()
    assert w.layer_combo.currentText() == "map" and w.result is not None


def test_cropped_explorer_layers_save_on_the_full_grid(make_napari_viewer, relevance, tmp_path):
    """The clusters layer holds only the clusters' box; napari's File › Save (our writer) writes the full grid."""
    viewer = make_napari_viewer()
    blobs = np.zeros((20, 22, 18), np.float32)
    blobs[3:7, 4:9, 2:6] = 1.0
    blobs[9:12, 5:8, 6:9] = -0.8
    w, _ = make(viewer, blobs)
    clusters = viewer.layers[CLUSTERS_NAME]
    res = expected(blobs, w.params())
    assert res.n_clusters == 2
    # the clusters' box [3, 12) × [4, 9) × [2, 9), one voxel around and CROP_MARGIN = 6 more, clipped to the grid
    assert clusters.data.shape == (19, 16, 16) and clusters.data.size < res.labels.size
    assert np.array_equal(full(clusters), res.labels)
    # what the atlas widget's region table and the writer read: the crop back on the full grid
    from napari_xai._layers import uncropped

    data, aff = uncropped(clusters.data, clusters.metadata)
    assert np.array_equal(data, res.labels) and np.allclose(aff, affine_2mm())
    out = tmp_path / "clusters.nii.gz"
    written = clusters.save(str(out), plugin="napari-xai")
    img = nib.load(written[0])
    assert img.shape == res.labels.shape
    assert np.allclose(img.affine, affine_2mm())
    assert np.array_equal(np.asarray(img.dataobj), res.labels)


def test_first_slider_step_starts_without_the_throttle_delay(make_napari_viewer, relevance):
    """Leading edge: a size step is applied inside the slider's own event (no timer, no event loop), a threshold
    step starts its worker at once; the user's slider position survives a result computed for an earlier one."""
    viewer = make_napari_viewer()
    w, _ = make(viewer, relevance)
    w.min_size_spin.setValue(12)  # no event loop runs between this line and the asserts
    res = expected(relevance, w.params())
    assert w.result.params.min_size == 12
    assert np.array_equal(full(viewer.layers[CLUSTERS_NAME]), res.labels)
    w.wait()  # the throttle window of that step ends
    w.threshold_slider.setValue(0.3)
    assert w.busy  # the worker runs already
    w.threshold_slider.setValue(0.5)  # dragged on while it runs
    w.wait()
    assert w.threshold_slider.value() == pytest.approx(0.5) and w.result.params.threshold == pytest.approx(0.5)


def scipy_clusters(filtered, threshold, min_voxels, connectivity=18):
    """Independent reference: each sign labelled by scipy.ndimage; (mask of the kept clusters, all, kept)."""
    st = ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])
    keep = np.zeros(filtered.shape, bool)
    n_all = n_kept = 0
    for part in (filtered > threshold, filtered < -threshold):
        lab, n = ndimage.label(part, structure=st)
        sizes = np.bincount(lab.ravel())
        big = sizes >= min_voxels
        big[0] = False
        keep |= big[lab]
        n_all += n
        n_kept += int(big.sum())
    return keep, n_all, n_kept


def test_slider_updates_layers_at_once_and_guides_after_the_coalescer(make_napari_viewer, relevance):
    """Issue 13: the layers follow a slider step at once (a cluster-size step rewrites the shown arrays in place);
    the guides follow through a coalescing timer and show the last of several rapid changes."""
    viewer = make_napari_viewer()
    add_relevance(viewer, relevance)
    _, w = viewer.window.add_plugin_dock_widget("napari-xai", "Relevance explorer")
    w.threshold_slider.setValue(0.2)
    w.wait()
    clusters, filtered = viewer.layers[CLUSTERS_NAME], viewer.layers[FILTERED_NAME]
    shown_labels, shown_filtered = clusters.data, filtered.data
    line = w.hist_ax.get_lines()[-1]
    title = w.hist_ax.title.get_text()
    f = w.result.filtered

    w.min_size_spin.setValue(12)  # one step, no event loop yet
    keep, n_all, n_kept = scipy_clusters(f, 0.2, 12)
    assert np.array_equal(full(clusters) > 0, keep)  # the layers: at once
    assert np.array_equal(full(filtered), np.where(keep, f, 0))
    assert clusters.data is shown_labels and filtered.data is shown_filtered  # updated in place, not rebuilt
    assert w.guides.pending and w.hist_ax.title.get_text() == title  # the guides: not yet
    w.wait()
    assert not w.guides.pending
    assert line.get_xdata()[0] == pytest.approx(12.0)
    assert w.hist_ax.title.get_text().startswith(f"{n_kept} of {n_all} clusters")

    # several rapid changes of both sliders: only the latest state is drawn, and it is the right one
    drawn = []
    original = w.guides.draw_now
    w.guides.draw_now = lambda: (drawn.append(w.result.params), original())
    w.guides.timer.timeout.disconnect()
    w.guides.timer.timeout.connect(w.guides.draw_now)
    for t, m in ((0.25, 3), (0.3, 5), (0.22, 8), (0.27, 2)):
        w.threshold_slider.setValue(t)
        w.min_size_spin.setValue(m)
    w.wait()
    keep, n_all, n_kept = scipy_clusters(w.result.filtered, 0.27, 2)
    assert w.result.params.threshold == pytest.approx(0.27) and w.result.params.min_size == 2
    assert np.array_equal(full(viewer.layers[CLUSTERS_NAME]) > 0, keep)
    assert len(drawn) <= 3 and drawn[-1] == w.result.params  # coalesced; the last drawn state is the final one
    assert w.hist_ax.title.get_text().startswith(f"{n_kept} of {n_all} clusters")
    assert w.hist_ax.get_lines()[-1].get_xdata()[0] == pytest.approx(2.0)
