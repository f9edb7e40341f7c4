"""The Concepts dock (issue 15, "In napari"), opened as the Plugins menu opens it (needs Xvfb: see scripts/test.sh).

Independent facts: the core's ``top_concepts`` on the same model and file (what the table and layers must show),
nibabel's affines (a concept voxel sits at the same world position as the scan's voxel it was computed for, for a
scan stored RAS and PIR), and the demo's ground truth (the atrophied hippocampi and amygdalae).
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

import napari  # noqa: F401  - a missing GUI stack fails these tests, never skips them
from qtpy.QtCore import Qt

from model_factory import python_source
from napari_xai._layers import POS_COLORMAP

PLUGIN = "napari-xai"
NAME = "Concepts"
TIMEOUT_MS = 180_000
SHAPE = (16, 14, 12)


def _scan(tmp_path, codes: str):
    """A smooth volume with an off-centre bright blob at 2 x 1.5 x 1 mm, stored in ``codes`` voxel order."""
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    vol = 10 + 5 * np.sin(i / 3.0) + j + 200 * np.exp(-((i - 4) ** 2 + (j - 9) ** 2 + (k - 7) ** 2) / 6.0)
    ras = np.diag([2.0, 1.5, 1.0, 1.0])
    ras[:3, 3] = [-15.0, 10.0, -6.0]
    img = nib.Nifti1Image(vol.astype(np.float32), ras)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), nib.orientations.axcodes2ornt(codes))
    out = img.as_reoriented(ornt)
    assert nib.aff2axcodes(out.affine) == tuple(codes)
    path = tmp_path / f"scan_{codes}.nii.gz"
    nib.save(out, str(path))
    return path, nib.load(str(path))


def _dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, NAME)
    return widget


def _tiny_model(widget, tmp_path):
    source, weights, kwargs = python_source(tmp_path / "model")
    py, cls = source.rsplit(":", 1)
    widget.settings.picker.source.value = "Python file + weights"
    widget.settings.picker.path.value = py
    widget.settings.picker.class_name.value = cls
    widget.settings.picker.weights.value = str(weights)
    widget.settings.picker.kwargs.value = kwargs
    return source, weights, kwargs


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def _core(source, weights, kwargs, path, **kw):
    from napari_xai.core.concepts import top_concepts
    from napari_xai.core.models import load_model
    from napari_xai.core.volumes import load_nifti

    return top_concepts(load_model(source, weights=weights, model_kwargs=kwargs), load_nifti(str(path)), **kw)


@pytest.mark.parametrize("codes", ["RAS", "PIR"])
def test_run_table_and_concept_layer_on_the_scans_world_voxels(make_napari_viewer, qtbot, tmp_path, codes):
    viewer = make_napari_viewer()
    path, img = _scan(tmp_path, codes)
    [image] = viewer.open(str(path), plugin=PLUGIN)
    widget = _dock(viewer)
    assert widget.settings.image.value == image.name
    source, weights, kwargs = _tiny_model(widget, tmp_path)
    widget.settings.atlas.value = "none"
    widget.settings.k.value = 3

    # the layer list comes from the model: its conv layers, the core's default (the last one) selected
    widget.settings.list_btn.native.click()
    _wait(qtbot, widget)
    assert widget.settings.layer.choices[1:] == ("conv1", "conv2"), widget.message
    assert widget.settings.layer.value == "conv2"

    n_layers = len(viewer.layers)
    widget.run_btn.native.click()
    _wait(qtbot, widget)
    assert widget.result is not None, widget.message
    assert len(viewer.layers) == n_layers, "a run fills the table; layers come with a click"
    table = widget.table
    shares = table.shares()
    assert table.rowCount() == 3
    assert shares == sorted(shares, reverse=True)
    # all channels' shares make the layer's relevance; the top k at most its positive part (a random tiny net
    # has channels of negative relevance, so the top k alone can exceed 1; on the demo they stay below)
    everything = widget.result.shares
    assert everything.size == 4 and everything.sum() == pytest.approx(1.0, abs=1e-6)
    assert sum(shares) <= np.clip(everything, 0, None).sum() + 1e-6

    ref = _core(source, weights, kwargs, path, layer="conv2", k=3)  # the core on the file, on its own
    assert table.channels() == [c.channel for c in ref.concepts]
    np.testing.assert_allclose(shares, [c.share for c in ref.concepts], rtol=1e-5)

    # click the second row: its concept as ± layers, on the scan's world voxels
    rect = table.visualItemRect(table.item(1, 0))
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    channel = table.channel_at(1)
    pos = [ly for ly in viewer.layers if ly.name == f"concept {channel} · conv2 · {ref.target_name} (+)"]
    neg = [ly for ly in viewer.layers if ly.name == f"concept {channel} · conv2 · {ref.target_name} (−)"]
    assert pos and neg, [ly.name for ly in viewer.layers]
    pos, neg = pos[0], neg[0]
    want = ref.concept(channel).map  # stored voxel order, the file's affine
    np.testing.assert_allclose(ref.affine, img.affine)
    assert pos.data.shape == image.data.shape
    np.testing.assert_allclose(pos.affine.affine_matrix, image.affine.affine_matrix)
    assert pos.colormap.name == POS_COLORMAP and neg.colormap.name == "cyan" and pos.blending == "additive"
    # a voxel's world position: the same in the layer as in the file (nibabel), with the core's value there
    shown = np.asarray(pos.data) - np.asarray(neg.data)
    assert np.abs(shown).max() > 0
    stored = np.asarray(img.dataobj)
    for s in [np.unravel_index(int(np.argmax(want)), want.shape), (0, 0, 0), tuple(n - 1 for n in want.shape),
              (3, 5, 2)]:
        xyz = nib.affines.apply_affine(img.affine, s)
        v = np.round(pos.world_to_data(xyz)).astype(int)
        assert np.allclose(pos.data_to_world(v), xyz, atol=1e-4)
        assert shown[tuple(v)] == pytest.approx(float(want[tuple(s)]), rel=1e-4, abs=1e-7)
        assert image.data[tuple(np.round(image.world_to_data(xyz)).astype(int))] == pytest.approx(stored[tuple(s)])
    assert pos.metadata["provenance"]["concept"]["channel"] == channel

    # another click replaces the concept layers instead of piling them up
    table.cellClicked.emit(0, 0)
    assert sum(ly.name.startswith("concept ") for ly in viewer.layers) == 2


def test_compare_in_the_grid_with_one_colour_scale_2d_and_3d(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    path, _ = _scan(tmp_path, "RAS")
    [image] = viewer.open(str(path), plugin=PLUGIN)
    widget = _dock(viewer)
    _tiny_model(widget, tmp_path)
    widget.settings.atlas.value = "none"
    widget.settings.k.value = 3
    widget.run_btn.native.click()
    _wait(qtbot, widget)
    chans = widget.table.channels()

    widget.table.select_channels(chans[:1])
    assert widget.compare() == [] and widget.message.startswith("error: select two or more")

    for ndisplay in (2, 3):
        viewer.dims.ndisplay = ndisplay
        widget.table.select_channels(chans)
        assert widget.table.selected_channels() == chans
        widget.compare_btn.native.click()
        assert viewer.grid.enabled and viewer.dims.ndisplay == ndisplay
        cells = [ly for ly in viewer.layers if ly.metadata.get("xai_concepts", {}).get("kind") == "compare"]
        assert len(cells) == 3 * len(chans)  # anatomy, (+), (−) per concept
        rel = [ly for ly in cells if ly.colormap.name in (POS_COLORMAP, "cyan")]
        limits = {tuple(ly.contrast_limits) for ly in rel}
        assert len(limits) == 1, limits
        lim = limits.pop()[1]
        assert lim >= max(np.abs(widget.result.concept(c).map).max() for c in chans) * 0.5
        assert all(not ly.visible for ly in viewer.layers if ly not in cells)
        widget.exit_btn.native.click()
        assert not viewer.grid.enabled
        assert not any("xai_concepts" in ly.metadata for ly in viewer.layers)
        assert image.visible


def test_cancel_stops_a_run(make_napari_viewer, qtbot):
    from napari_xai._sample_data import demo_brain

    viewer = make_napari_viewer()
    for data, kwargs, kind in demo_brain():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = _dock(viewer)
    widget.settings.atlas.value = "none"
    n = len(viewer.layers)
    widget.run_btn.native.click()
    qtbot.waitUntil(lambda: widget._progress[0] > 0.01, timeout=TIMEOUT_MS)
    widget.cancel_btn.native.click()
    _wait(qtbot, widget)
    assert "cancelled" in widget.message
    assert widget.result is None and widget.table.rowCount() == 0 and len(viewer.layers) == n
    assert widget.run_btn.enabled and not widget.cancel_btn.enabled


def test_a_bad_model_gives_one_clear_line(make_napari_viewer, qtbot, tmp_path, caplog):
    viewer = make_napari_viewer()
    path, _ = _scan(tmp_path, "RAS")
    viewer.open(str(path), plugin=PLUGIN)
    widget = _dock(viewer)
    _tiny_model(widget, tmp_path)
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint at all")
    widget.settings.picker.weights.value = str(bad)
    with caplog.at_level(logging.ERROR, logger="napari_xai"):
        widget.run_btn.native.click()
        _wait(qtbot, widget)
    text = widget.message
    assert text.startswith("error: ") and "\n" not in text and "internal error" not in text, text
    assert "broken.pt" in text or "weights" in text, text
    assert not [r for r in caplog.records if r.exc_info], "no traceback for a user's mistake"
    assert widget.result is None and widget.table.rowCount() == 0
    # TorchScript hides the layers: refused before any work, with what to do instead
    widget.settings.picker.source.value = "TorchScript file"
    widget.settings.picker.path.value = str(bad)
    widget.run_btn.native.click()
    assert not widget.busy and "Python file + weights" in widget.message


def test_demo_top_concept_lies_on_the_atrophied_hippocampi_and_amygdalae(make_napari_viewer, qtbot):
    """The demo model's top concepts at its last conv layer, for 'atrophy', concentrate on the ground truth."""
    from scipy.ndimage import binary_dilation

    from napari_xai._sample_data import demo_brain
    from napari_xai.core.concepts import mask_share

    viewer = make_napari_viewer()
    for data, kwargs, kind in demo_brain():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    brain = viewer.layers["demo brain"]
    truth = np.asarray(viewer.layers["demo atrophy (ground truth)"].data) > 0
    widget = _dock(viewer)
    assert widget.settings.image.value == "demo brain"
    assert widget.settings.atlas.value == "aal", "the Atlas dock's default atlas names the concepts"
    widget.settings.k.value = 3
    widget.run_btn.native.click()
    _wait(qtbot, widget)
    res = widget.result
    assert res is not None, widget.message
    shares = widget.table.shares()
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1
    assert res.layer == "features.6" and res.target_name == "atrophy"
    widget.table.cellClicked.emit(0, 0)
    top = res.concept(widget.table.channel_at(0))
    [pos] = [ly for ly in viewer.layers if ly.name.endswith("(+)")]
    np.testing.assert_allclose(pos.data, np.clip(top.map, 0, None))
    np.testing.assert_allclose(pos.affine.affine_matrix, brain.affine.affine_matrix)
    # the demo scans differ only in and within 8 mm (4 voxels) of the region: most positive relevance is there,
    # and the region itself (0.6 % of the brain) holds far more than its volume's share
    head = np.asarray(brain.data) > 0.05 * float(np.max(brain.data))
    fraction = truth.sum() / head.sum()
    in_region = mask_share(pos.data, truth)
    near = mask_share(pos.data, binary_dilation(truth, iterations=4))
    assert in_region > 20 * fraction, (in_region, fraction)
    assert near > 0.5, near
    region = widget.table.item(0, 2).text()
    assert region.split("_")[0] in ("Hippocampus", "ParaHippocampal", "Amygdala"), region


def test_open_references_of_a_cohort_run(make_napari_viewer, qtbot, tmp_path):
    """The output of ``napari-xai concepts SUBJECTS.csv --refs N`` (through the executable) opens as grid cells:
    each reference's scan cube and conditional map at the cube's world place, one colour scale."""
    import os
    import shutil
    import subprocess
    import sys

    from napari_xai.core.demo import demo_volume
    from napari_xai.core.volumes import save_nifti

    rows = ["id,path"]
    for seed in (1, 2):
        vol, _ = demo_volume(seed, True)
        save_nifti(tmp_path / f"s{seed}.nii.gz", vol.data[0], vol.affine)
        rows.append(f"s{seed},{tmp_path / f's{seed}.nii.gz'}")
    (tmp_path / "cohort.csv").write_text("\n".join(rows) + "\n")
    exe = os.path.join(os.path.dirname(sys.executable), "napari-xai")
    exe = exe if os.path.exists(exe) else shutil.which("napari-xai")
    out = tmp_path / "run"
    r = subprocess.run([exe, "concepts", str(tmp_path / "cohort.csv"), "--model", "demo", "--channels", "15",
                        "--refs", "2", "--crop-mm", "30", "--out-dir", str(out), "--quiet"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr

    viewer = make_napari_viewer()
    widget = _dock(viewer)
    viewer.dims.ndisplay = 3
    layers = widget.open_references(str(out))  # no concept selected: the run's only channel
    assert viewer.grid.enabled and viewer.dims.ndisplay == 3
    assert len(layers) == 6, widget.message  # two subjects: scan cube, (+), (−)
    assert "channel 15" in widget.message
    rel = [ly for ly in layers if ly.colormap.name in (POS_COLORMAP, "cyan")]
    assert len({tuple(ly.contrast_limits) for ly in rel}) == 1
    table = list(__import__("csv").DictReader((out / "references.csv").open()))
    for row, scan_layer in zip(table, [ly for ly in layers if ly.colormap.name == "gray"]):
        cube = nib.load(out / row["scan_cube"])
        assert row["id"] in scan_layer.name
        np.testing.assert_allclose(np.asarray(scan_layer.data), np.asarray(cube.dataobj), rtol=1e-6)
        np.testing.assert_allclose(scan_layer.affine.affine_matrix, cube.affine, atol=1e-6)
        # the cube's centre voxel is the recorded peak (world mm)
        centre = scan_layer.data_to_world([s // 2 for s in cube.shape])
        peak = [float(row[f"peak_{a}_mm"]) for a in "xyz"]
        assert np.all(np.abs(np.asarray(centre) - peak) <= 1.0 + 1e-6)
    widget.exit_btn.native.click()
    assert not viewer.grid.enabled and len(viewer.layers) == 0

    # a channel's refs folder alone (as core.concept_refs.relevance_maximisation writes it): the cubes' sidecars
    layers = widget.open_references(str(out / "channel_15" / "refs"))
    assert len(layers) == 6 and "channel 15" in widget.message
    assert [ly.name for ly in layers if ly.colormap.name == "gray"][0].split(" · ")[0].endswith(table[0]["id"])
    widget.exit_btn.native.click()

    # a folder that is not a run, and an index naming a file outside its folder: one line each, nothing opened
    assert widget.open_references(str(tmp_path)) == [] and "references.csv" in widget.message
    text = (out / "references.csv").read_text().replace("channel_15/refs/01_", "../../01_", 1)
    (out / "references.csv").write_text(text)
    assert widget.open_references(str(out)) == [] and "outside its folder" in widget.message
    assert len(viewer.layers) == 0
