"""The Cohort dock widget, opened as the Plugins menu opens it, on a tiny cohort (pytest-qt, under Xvfb).

Facts: for a bias-free linear model ``y = W x``, input x gradient gives
``R = W[c] * x``, so the mean map the widget shows is computed here with numpy.
"""

from __future__ import annotations

import csv

import napari  # noqa: F401  - a missing GUI stack fails these tests, never skips them
import nibabel as nib
import numpy as np
import pytest
import pytestqt  # noqa: F401

from model_factory import lin_source

SHAPE = (5, 4, 6)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])


@pytest.fixture
def cohort(tmp_path):
    rng = np.random.default_rng(4)
    w = rng.normal(size=(2, int(np.prod(SHAPE)))).astype(np.float32)
    source, weights = lin_source(tmp_path, w)
    xs = []
    lines = ["id,path,age"]
    for k in range(4):
        x = (rng.random(SHAPE) + 0.5).astype(np.float32)
        xs.append(x)
        nib.save(nib.Nifti1Image(x, AFF), str(tmp_path / f"s{k}.nii.gz"))
        lines.append(f"s{k},s{k}.nii.gz,{60 + k}")
    atlas = np.zeros(SHAPE, np.int16)
    atlas[:2], atlas[3:] = 1, 2
    nib.save(nib.Nifti1Image(atlas, AFF), str(tmp_path / "atlas.nii.gz"))
    (tmp_path / "bad.nii.gz").write_bytes(b"not a NIfTI file")
    lines.append("bad,bad.nii.gz,70")
    (tmp_path / "cohort.csv").write_text("\n".join(lines) + "\n")
    return tmp_path, source, weights, w, xs


def test_cohort_widget_runs_shows_mean_layers_and_keeps_going_past_a_bad_subject(make_napari_viewer, qtbot, cohort):
    tmp, source, weights, w, xs = cohort
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-xai", "Cohort")
    assert widget.native.minimumSizeHint().height() < 700  # fits a 1280 x 800 screen beside other docks
    widget.csv.value = tmp / "cohort.csv"
    widget.out.value = tmp / "out"
    widget.source.value = "Python file + weights"
    widget.path.value = source.rsplit(":", 1)[0]
    widget.class_name.value = "Lin"
    widget.weights.value = weights
    widget.method.value = "input-x-gradient"
    widget.target.value = "1"
    widget.atlas.value = str(tmp / "atlas.nii.gz")
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    res = widget.last_result
    assert res is not None, widget.status.value
    assert res["ok"] == 4 and [f["id"] for f in res["failures"]] == ["bad"]
    assert "4 of 5 subjects explained" in widget.status.value and "1 failed" in widget.status.value
    pos = viewer.layers["cohort mean · input-x-gradient (+)"]
    neg = viewer.layers["cohort mean · input-x-gradient (−)"]
    expected = np.mean([w[1].reshape(SHAPE) * x for x in xs], axis=0)
    np.testing.assert_allclose(np.asarray(pos.data), np.clip(expected, 0, None), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(neg.data), np.clip(-expected, 0, None), rtol=1e-4, atol=1e-6)
    assert "cohort template" in viewer.layers
    # the region table of the mean map: positive relevance summed in i < 2 and in i >= 3, largest first
    sums = sorted((float(np.clip(expected[sl], 0, None).sum()) for sl in (np.s_[:2], np.s_[3:])), reverse=True)
    assert widget.table.rowCount() == 2 and widget.table.isVisibleTo(widget.native)
    assert [float(widget.table.item(i, 1).text()) for i in range(2)] == pytest.approx(sums, rel=1e-3)
    fails = list(csv.DictReader((tmp / "out" / "failures.csv").open()))
    assert [f["id"] for f in fails] == ["bad"]
    # Run again: every finished subject is reused (resume), the bad one is tried again
    widget.run()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert widget.last_result["reused"] == 4


def test_cohort_widget_checks_its_inputs_in_one_line(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-xai", "Cohort")
    widget.run()
    assert widget.status.value.startswith("error: choose the cohort CSV") and not widget.busy
