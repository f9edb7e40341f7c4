"""How relevance, filtered relevance, clusters and outlines look together (issue 12, items 4 and 5).

Facts: percentiles of hand-made maps, napari's layer properties, and pixels of
tiny 3D scenes rendered under Xvfb (outline colour present or not).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

import napari  # noqa: F401  - a missing GUI stack fails these tests, never skips them

from napari_xai._layers import (
    ANATOMY_STYLE,
    FAINT_FRACTION,
    comparison_layer_data,
    faint_cells,
    relevance_layer_data,
)


def _rel(data, label="map"):
    data = np.asarray(data, np.float32)
    return SimpleNamespace(data=data[None], label=label, affine=np.eye(4), header=None, provenance={}, warnings=[])


def test_nonnegative_map_gets_percentile_limits_not_a_placeholder():
    # a Grad-CAM-like map: non-negative, tiny values, covering everything; values 1..1000 × 1e-7
    vals = (np.arange(1, 1001, dtype=np.float64) * 1e-7).reshape(10, 10, 10)
    (pos, kp, _), (neg, kn, _) = relevance_layer_data(_rel(vals))
    assert not neg.any()
    lo, hi = kp["contrast_limits"]
    # hand-computed: 99.9th percentile of 1..1000 is 999.001, the 90th 900.1 (linear interpolation)
    assert hi == pytest.approx(999.001e-7, rel=1e-4)
    assert lo == pytest.approx(900.1e-7, rel=1e-4)
    assert kn["contrast_limits"] == kp["contrast_limits"]
    # so only the top tenth is coloured (the whole brain is not tinted)
    assert (pos > lo).mean() == pytest.approx(0.1, abs=0.002)


def test_sparse_signed_map_lower_limit_is_a_quarter_of_the_upper():
    r = np.zeros((20, 20, 20), np.float32)
    r[:10, :10, :10] = np.linspace(0.01, 4.0, 1000).reshape(10, 10, 10)  # all values distinct
    r[10:, 10:, 10:] = -np.linspace(0.01, 4.0, 1000).reshape(10, 10, 10)
    (_, kp, _), _ = relevance_layer_data(_rel(r))
    lo, hi = kp["contrast_limits"]
    assert 3.9 < hi <= 4.0  # 99.9th percentile of |r| over both signs
    assert lo == pytest.approx(max(np.percentile(np.abs(r[r != 0]), 90), hi / 4), rel=1e-6)


def test_all_zero_map_keeps_a_valid_scale():
    (_, kp, _), _ = relevance_layer_data(_rel(np.zeros((4, 4, 4))))
    assert kp["contrast_limits"] == (0.0, 1.0)


def test_sample_brain_renders_as_attenuated_mip_for_3d():
    from napari_xai._sample_data import demo_layer_data

    (data, kwargs, kind), _ = demo_layer_data()
    assert kind == "image" and kwargs["rendering"] == "attenuated_mip" and kwargs["opacity"] < 1
    assert ANATOMY_STYLE["rendering"] == "attenuated_mip"


def test_shared_scale_cell_too_faint_to_read_says_why():
    rng = np.random.default_rng(0)
    big = rng.standard_normal((8, 8, 8)).astype(np.float32)
    small = np.abs(big) * 1e-4  # a Grad-CAM next to LRP: 10^4 times smaller
    cells = [("lrp", _rel(big)), ("grad-cam", _rel(small))]
    shared = float(np.percentile(np.abs(big), 99.99))
    tuples = comparison_layer_data(np.zeros((8, 8, 8)), cells, shared)
    titles = [kw["name"] for _, kw, _ in tuples if kw.get("colormap") == "gray"]
    assert titles[0] == "1. lrp"
    assert titles[1].startswith("2. grad-cam · faint:") and "of the shared scale" in titles[1]
    assert faint_cells(tuples) == ["grad-cam"]
    # each cell on its own scale: nothing is faint, titles unchanged
    per_cell = comparison_layer_data(np.zeros((8, 8, 8)), cells, [shared, shared * 1e-4])
    assert faint_cells(per_cell) == [] and [kw["name"] for _, kw, _ in per_cell][3] == "2. grad-cam"
    assert FAINT_FRACTION < 1


# -------------------------------------------------------------------------------------- 3D pixels (Xvfb)


def _outline_pixels(img: np.ndarray) -> int:
    """Pixels where green clearly dominates (the outline colour; relevance is red-yellow / blue-cyan)."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    return int(((g - np.maximum(r, b)) > 25).sum())


def test_atlas_outlines_stay_visible_in_3d_with_the_filtered_relevance(make_napari_viewer, qtbot):
    from napari.utils.colormaps import DirectLabelColormap
    from qtpy.QtWidgets import QApplication

    from napari_xai._qt.explorer import CLUSTERS_NAME, FILTERED_NAME

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(700, 600)
    n = 28
    z, y, x = np.mgrid[:n, :n, :n]
    rad = np.sqrt((z - 14) ** 2 + (y - 14) ** 2 + (x - 14) ** 2)
    rel = np.zeros((n, n, n), np.float32)
    rel[10:18, 10:18, 3:11] = 1.0
    rel[10:18, 10:18, 17:25] = -1.0
    viewer.add_image(np.exp(-rad ** 2 / 80).astype(np.float32), name="brain", colormap="gray", **ANATOMY_STYLE)
    viewer.add_image(np.clip(rel, 0, None), name="relevance (+)", metadata={"xai_relevance": rel},
                     colormap="hot", blending="additive")
    _, widget = viewer.window.add_plugin_dock_widget("napari-xai", "Relevance explorer")
    widget.wait()
    filtered = viewer.layers[FILTERED_NAME]
    assert filtered.blending == "translucent_no_depth"  # no depth writes (see _layers.FILTERED_STYLE)
    assert filtered.data.any() and viewer.layers[CLUSTERS_NAME].data.dtype == np.uint16
    # an outline shell like the atlas widget's in 3D: translucent labels, on top of the list
    shell = ((rad > 11) & (rad < 12.5)).astype(np.uint8)
    outl = viewer.add_labels(shell, name="outlines", opacity=0.25, blending="translucent")
    outl.colormap = DirectLabelColormap(color_dict={None: "lime", 0: "transparent", 1: "lime"})
    viewer.layers[CLUSTERS_NAME].visible = False
    viewer.dims.ndisplay = 3
    outl.rendering = "translucent"
    viewer.camera.angles = (0.0, 30.0, 60.0)

    def shot():
        for _ in range(4):
            QApplication.processEvents()
        return viewer.screenshot(canvas_only=True, flash=False)

    with_filtered = _outline_pixels(shot())
    filtered.visible = False
    without = _outline_pixels(shot())
    assert without > 1000  # the shell shows at all
    assert with_filtered > 0.5 * without, (with_filtered, without)


def test_map_whose_top_tenth_is_flat_gets_increasing_limits():
    r = np.zeros((10, 10, 10), np.float32)
    r[:5] = 2.0  # every non-zero value equal: both percentiles are 2.0
    (_, kp, _), _ = relevance_layer_data(_rel(r))
    assert kp["contrast_limits"] == (0.5, 2.0)


def test_grad_cam_through_the_explain_widget_reads_in_2d_and_3d(make_napari_viewer, qtbot):
    """Grad-CAM is non-negative: its scale comes from its own values (it was (0, 1) for a map peaking at 1e-4,
    i.e. invisible), and the input layer, left at napari's plain MIP, becomes an attenuated MIP."""
    from napari_xai._qt.explain_widget import ExplainWidget
    from napari_xai._sample_data import demo_brain

    viewer = make_napari_viewer()
    for data, kwargs, kind in demo_brain():
        kwargs = {k: v for k, v in kwargs.items() if k not in ANATOMY_STYLE}  # as a user's own NIfTI opens
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    brain = viewer.layers["demo brain"]
    assert brain.rendering == "mip" and brain.opacity == 1.0
    widget = ExplainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.method.value = "grad-cam"
    widget.run_btn.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert widget.status.value.startswith("predicted"), widget.status.value
    pos = next(ly for ly in viewer.layers if ly.name.endswith("(+)"))
    lo, hi = pos.contrast_limits
    peak = float(pos.data.max())
    assert 0 < lo < hi <= peak  # a scale inside the map's own range
    assert (pos.data > lo).mean() <= 0.1 + 1e-3  # at most the top tenth of the non-zero voxels is coloured
    assert brain.rendering == "attenuated_mip" and brain.opacity == pytest.approx(ANATOMY_STYLE["opacity"])


def test_crop_box_and_its_affine_place_the_crop_where_it_was(oblique_affine):
    from napari_xai.core.geometry import crop_box, cropped_affine, vox_to_world

    box = crop_box((20, 30, 40), (slice(5, 9), slice(0, 3), slice(38, 40)), pad=1)
    assert box == (slice(4, 10), slice(0, 4), slice(37, 40))  # widened by one voxel, clipped to the grid
    aff = cropped_affine(oblique_affine, box)
    for ijk in ([0, 0, 0], [2, 3, 1]):  # a crop voxel and the same voxel of the full grid
        full = np.add(ijk, [4, 0, 37])
        assert np.allclose(vox_to_world(aff, ijk), vox_to_world(oblique_affine, full))
    assert crop_box((5, 5, 5), None) == (slice(0, 1),) * 3
    assert crop_box((5, 5, 5), (slice(2, 2), slice(0, 5), slice(0, 5))) == (slice(0, 1),) * 3
