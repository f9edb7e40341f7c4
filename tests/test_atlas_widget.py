"""Atlas dock widget in a real napari viewer (pytest-qt, run under Xvfb).

Facts: anatomy at known MNI coordinates, labels read back from the atlas on
the grid, first labelled voxel along a grid row for 3D picking, outline
properties, and region-table sums.
"""

from __future__ import annotations

import numpy as np
import pytest

import napari  # noqa: E402,F401  - a missing GUI stack fails these tests, never skips them
import pytestqt  # noqa: E402,F401

from napari_xai._qt.atlas_widget import CUSTOM, AtlasWidget, atlas_grid_for_viewer, layer_affine  # noqa: E402
from qtpy.QtCore import Qt  # noqa: E402
from napari_xai.core import atlas as at  # noqa: E402

# 4 mm MNI grid, LAS like FSL's templates (small: software rendering is slow)
AFF = np.array([[-4.0, 0, 0, 90], [0, 4.0, 0, -126], [0, 0, 4.0, -72], [0, 0, 0, 1]])
SHAPE = (46, 55, 46)


@pytest.fixture
def viewer_and_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.random(SHAPE).astype(np.float32), affine=AFF, name="volume")
    widget = AtlasWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def _load(widget, qtbot, name="aal"):
    widget.set_atlas(name)
    widget.grid = None
    widget.load()  # the real path: a worker thread
    qtbot.waitUntil(lambda: widget.grid is not None and not widget._busy, timeout=60000)
    return widget.grid


def test_aal_lookup_outlines_3d_pick_and_table(viewer_and_widget, qtbot, tmp_path):
    """One viewer for the whole AAL story (viewers are slow to make under software rendering)."""
    viewer, widget = viewer_and_widget
    assert np.allclose(layer_affine(viewer.layers["volume"]), AFF)
    grid = _load(widget, qtbot)
    _check_cursor_lookup_2d(viewer, widget, grid, qtbot)
    _check_region_table(viewer, widget, grid, tmp_path)
    _check_outline_layers(viewer, widget, grid)
    _check_3d_pick(viewer, widget, grid)


def _check_cursor_lookup_2d(viewer, widget, grid, qtbot):
    assert grid.shape == SHAPE and np.allclose(grid.affine, AFF)
    viewer.cursor.position = (-25.0, -20.0, -15.0)
    assert widget.region_label.text() == "Hippocampus_L"
    assert "MNI (" in widget.coord_label.text()
    viewer.status = "volume [1 2 3]: 0.5"  # napari recomputes its status on every mouse move
    assert "Hippocampus_L" in str(viewer.status) and str(viewer.status).startswith("volume [1 2 3]: 0.5")
    viewer.cursor.position = (12.0, -18.0, 8.0)
    assert widget.region_label.text() == "Thalamus_R"
    assert "Thalamus_R" in str(viewer.status) and "Hippocampus_L" not in str(viewer.status)
    # the live outline shows exactly the region under the cursor
    cursor_layer = next(lay for lay in viewer.layers if lay.name.endswith("(cursor)"))
    thal = next(v for v, r in grid.atlas.regions.items() if r.name == "Thalamus_R")
    # the outline follows, throttled (the name above is immediate)
    qtbot.waitUntil(lambda: cursor_layer.metadata.get("region_value") == thal, timeout=5000)
    assert set(np.unique(cursor_layer.data)) == {0, thal}
    # registered: every outline voxel of the (cropped) layer maps, through its affine, into the region
    crop_aff = cursor_layer.affine.affine_matrix
    pts = np.argwhere(cursor_layer.data)
    world = pts @ crop_aff[:3, :3].T + crop_aff[:3, 3]
    assert all(grid.labels[grid.voxel_of(w)] == thal for w in world)
    assert len(pts) == int(np.count_nonzero(grid.outline_of([thal], axes=widget._displayed_data_axes())))
    # the status bar widget of the napari window shows it
    bar = viewer.window._qt_window.statusBar()
    assert "Thalamus_R" in bar._status.text()
    # outside the brain
    viewer.cursor.position = (85.0, 80.0, 100.0)
    assert "no region" in widget.region_label.text()
    assert atlas_grid_for_viewer(viewer) is grid


def _check_outline_layers(viewer, widget, grid):
    widget.all_check.setChecked(True)
    all_layer = next(lay for lay in viewer.layers if lay.name.endswith("outlines"))
    assert all_layer.data.dtype == np.uint16
    # 2D: in-plane boundaries of the displayed axes (default display: the last two axes)
    axes = widget._displayed_data_axes()
    assert len(axes) == 2
    assert np.array_equal(all_layer.data, at.outline_volume(grid.labels, axes=axes))
    viewer.dims.ndisplay = 3
    out3 = all_layer.data
    assert np.array_equal(out3, at.outline_volume(grid.labels))
    pts = np.argwhere(out3)
    assert np.array_equal(out3[tuple(pts.T)], grid.labels[tuple(pts.T)])  # inside their region
    lab = np.pad(grid.labels, 1)
    p = pts + 1
    touches = np.zeros(len(p), dtype=bool)
    for d in np.vstack([np.eye(3, dtype=int), -np.eye(3, dtype=int)]):
        q = p + d
        touches |= lab[tuple(q.T)] != lab[tuple(p.T)]
    assert touches.all()  # and touch another label
    widget.select_regions([4101])
    sel = next(lay for lay in viewer.layers if lay.name.endswith("(selected)"))
    assert set(np.unique(sel.data)) == {0, 4101}
    widget.all_check.setChecked(False)
    assert not any(lay.name.endswith("outlines") for lay in viewer.layers)


def _check_3d_pick(viewer, widget, grid):
    viewer.dims.ndisplay = 3
    # look along +x (from the subject's left): the ray through y=-20, z=-15 mm
    viewer.scene.camera.set_view_direction((1.0, 0.0, 0.0), up_direction=(0.0, 0.0, 1.0))  # the picking ray (public API)
    viewer.cursor.position = (0.0, -20.0, -15.0)
    j = int(round((-20 + 126) / 4))
    k = int(round((-15 + 72) / 4))
    row = grid.labels[:, j, k]  # LAS: i grows towards the left (x decreases)
    first_from_left = int(np.flatnonzero(row)[-1])  # the smallest x is the largest i
    expected = grid.atlas.name_of(int(row[first_from_left]))
    assert expected and widget.region_label.text() == expected
    assert widget.last_lookup.xyz_mm[0] == pytest.approx(90 - 4 * first_from_left)
    assert expected in str(viewer.status)


def _check_region_table(viewer, widget, grid, tmp_path):
    rel = np.zeros(SHAPE, dtype=np.float32)
    rel[grid.labels == 4101] = 30.0  # left hippocampus
    rel[grid.labels == 2001] = 1.0  # precentral
    rel[grid.labels == 5001] = -2.0
    clusters = np.zeros(SHAPE, dtype=np.uint16)
    clusters[grid.labels == 4101] = 1
    viewer.add_image(rel, affine=AFF, name="relevance")
    viewer.add_labels(clusters, affine=AFF, name="clusters")
    widget.relevance_combo.setCurrentText("relevance")
    widget.clusters_combo.setCurrentText("clusters")
    widget.update_table()
    t = widget.table
    inside = grid.labels != 0
    assert sum(r["sum"] for r in t.rows) == pytest.approx(float(rel[inside].sum()))
    tw = widget.table_widget
    assert tw.rowCount() == len(t.rows)
    col = {tw.horizontalHeaderItem(c).text(): c for c in range(tw.columnCount())}
    # sort by Σ+ descending through the header, as a user would
    tw.sortItems(col["Σ+"], Qt.SortOrder.DescendingOrder)
    assert tw.item(0, 0).text() == "Hippocampus_L"
    assert tw.item(0, col["Clusters"]).text() == "1"  # cluster 1 overlaps it
    tw.sortItems(col["Σ−"], Qt.SortOrder.AscendingOrder)  # Σ− ascending
    assert tw.item(0, 0).text() == grid.atlas.regions[5001].name
    # click a row: its outline appears and the view centres on the region
    tw.sortItems(col["Σ+"], Qt.SortOrder.DescendingOrder)
    tw.selectRow(0)
    widget._on_row_clicked(0, 0)
    sel = next(lay for lay in viewer.layers if lay.name.endswith("(selected)"))
    assert set(np.unique(sel.data)) == {0, 4101}
    centre = grid.region_center_world(4101)
    assert grid.lookup(centre).name == "Hippocampus_L"
    for axis in range(3):
        if axis not in viewer.dims.displayed:
            assert viewer.dims.point[axis] == pytest.approx(centre[axis], abs=4.0)
    out = widget.save_table(str(tmp_path / "regions.csv"))
    assert out.exists() and (tmp_path / "regions.csv.xai.json").exists()


def test_probabilistic_atlas_threshold_and_probabilities(viewer_and_widget, qtbot):
    viewer, widget = viewer_and_widget
    grid = _load(widget, qtbot, "harvard-oxford")
    assert grid.threshold == pytest.approx(0.25)
    viewer.cursor.position = (-25.0, -20.0, -15.0)
    assert widget.region_label.text().startswith("Left_Hippocampus") and "%" in widget.region_label.text()
    widget.prob_button.setChecked(True)
    items = [widget.prob_list.item(i).text() for i in range(widget.prob_list.count())]
    assert items and "Left_Hippocampus" in items[0]
    n25 = int(np.count_nonzero(grid.labels))
    widget.threshold.setValue(60)  # reloads with the new max-prob threshold
    qtbot.waitUntil(lambda: widget.grid is not None and widget.grid.threshold == pytest.approx(0.6) and not widget._busy, timeout=60000)
    assert int(np.count_nonzero(widget.grid.labels)) < n25


def test_custom_atlas_and_bad_input_message(viewer_and_widget, qtbot, tmp_path):
    import nibabel as nib

    viewer, widget = viewer_and_widget
    lab = np.zeros((10, 10, 10), dtype=np.uint8)
    lab[:5] = 1
    lab[5:] = 2
    aff = np.array([[4.0, 0, 0, -20], [0, 4.0, 0, -20], [0, 0, 4.0, -20], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(lab, aff), str(tmp_path / "mine.nii.gz"))
    (tmp_path / "mine.csv").write_text("1,West\n2,East\n")
    widget.set_atlas(CUSTOM)
    widget.custom_image.setText(str(tmp_path / "mine.nii.gz"))
    widget.custom_labels.setText(str(tmp_path / "mine.csv"))
    widget.load()
    qtbot.waitUntil(lambda: widget.grid is not None and not widget._busy, timeout=30000)
    viewer.cursor.position = (-10.0, 0.0, 0.0)
    assert widget.region_label.text() == "West"
    viewer.cursor.position = (10.0, 0.0, 0.0)
    assert widget.region_label.text() == "East"
    # an atlas far away from the volume: a clear message, no crash, no layer
    far = aff.copy()
    far[:3, 3] += 1000
    nib.save(nib.Nifti1Image(lab, far), str(tmp_path / "far.nii.gz"))
    widget.custom_image.setText(str(tmp_path / "far.nii.gz"))
    widget.load()
    qtbot.waitUntil(lambda: not widget._busy, timeout=30000)
    assert "does not overlap" in widget.message.text()
