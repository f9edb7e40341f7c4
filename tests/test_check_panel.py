"""The LRP designer's Check tab in a real napari viewer: painted flips, flipping curves, channel ablation.

``xvfb-run -a .venv/bin/pytest tests/test_check_panel.py``

Hand-computed facts: for the bias-free linear model ``y = W x`` flipping a
set S of voxels to 0 lowers logit c by ``sum_{i in S} W[c, i] x_i``, and LRP-0
gives ``R = W[c] * x``, so the most-relevant-first curve is the logit minus the
running sum of the sorted relevance. For the three-channel net (1x1 conv with
weights 1, 2, 3, ReLU, mean, sum) channel c carries ``w_c mean(x)`` of the
logit ``6 mean(x)``.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import napari  # noqa: E402,F401  - a missing GUI stack fails these tests, never skips them
import pytestqt  # noqa: E402,F401

from napari_xai._qt.lrp_widget import LrpDesignerWidget  # noqa: E402

TIMEOUT_MS = 60_000
SHAPE = (6, 5, 4)
NETS = textwrap.dedent(
    """
    import numpy as np
    import torch
    from torch import nn


    class Lin(nn.Module):
        def __init__(self):
            super().__init__()
            self.flat = nn.Flatten()
            self.fc = nn.Linear(120, 2, bias=False)
            with torch.no_grad():
                w = np.random.default_rng(3).normal(size=(2, 120)).astype(np.float32)
                self.fc.weight.copy_(torch.from_numpy(w))

        def forward(self, x):
            return self.fc(self.flat(x))


    from model_factory import ThreeChannels  # noqa: F401  (tests/ is on sys.path under pytest)
    """
)


@pytest.fixture
def setup(make_napari_viewer, tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    viewer = make_napari_viewer()
    x = (np.random.default_rng(4).random(SHAPE) + 0.5).astype(np.float32)
    viewer.add_image(x, name="t1", affine=np.diag([2.0, 2.0, 2.0, 1.0]))

    def make(cls):
        w = LrpDesignerWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.source.setCurrentText("Python file + weights")
        w.path.setText(str(path))
        w.class_name.setText(cls)
        w.list_layers()
        return w

    return viewer, x, make


def weights():
    return np.random.default_rng(3).normal(size=(2, 120)).astype(np.float32)


def wait(qtbot, panel):
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert not panel.status.text().startswith("error"), panel.status.text()


def test_painted_flips_predict_live_with_hand_computed_logits(setup, qtbot):
    viewer, x, make = setup
    w = make("Lin")
    panel = w.check
    w.target.setCurrentText("class 1")
    layer = panel.new_flip_mask()
    assert layer.name == "flip mask" and layer.data.shape == SHAPE and panel.flip_layer.currentText() == "flip mask"
    panel.predict()
    assert panel.status.text() == "error: the flip mask 'flip mask' is empty; paint the voxels to flip."
    layer.paint((2, 2, 2), 1)  # a paint stroke (brush 6 in data units covers a ball around the voxel)
    qtbot.waitUntil(lambda: panel.last_prediction is not None, timeout=TIMEOUT_MS)  # live: no button pressed
    wait(qtbot, panel)
    mask = np.asarray(layer.data) != 0
    W = weights()
    before, after = W @ x.ravel(), W @ (x * ~mask).ravel()
    res = panel.last_prediction
    assert res["voxels"] == int(mask.sum()) > 1
    np.testing.assert_allclose(res["before"]["logits"], before, rtol=1e-5)
    np.testing.assert_allclose(res["after"]["logits"], after, rtol=1e-4, atol=1e-5)
    assert panel.predict_table.rowCount() == 2 and "◀ target" in panel.predict_table.item(1, 0).text()
    assert "voxels flipped to 'zero'" in panel.status.text()
    assert np.array_equal(viewer.layers["t1"].data, x)  # the input layer is never changed


def test_flipping_curve_from_a_relevance_layer(setup, qtbot):
    viewer, x, make = setup
    w = make("Lin")
    w.config.segments = []
    w.add_segment("fc", "fc", "lrp-0", name="all")
    w.target.setCurrentText("class 1")
    w.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    panel = w.check
    rel_name = "Lin · configuration 1 (+)"
    assert panel.relevance_layer.findText(rel_name) >= 0
    panel.relevance_layer.setCurrentText(rel_name)
    panel.region.setValue(1)
    panel.steps.setValue(6)
    panel.max_fraction.setValue(0.3)
    for key, cb in panel.order_boxes.items():
        cb.setChecked(True)
    panel.run_curve()
    wait(qtbot, panel)
    morf, lerf, rand = panel.last_curves
    assert (morf.order, lerf.order, rand.order) == ("morf", "lerf", "random")
    rel = (weights()[1] * x.ravel())
    logit = float(weights()[1] @ x.ravel())
    counts = [round(f * rel.size) for f in morf.fractions]
    top = np.sort(rel)[::-1]
    np.testing.assert_allclose(morf.scores, [logit - top[:c].sum() for c in counts], rtol=1e-4, atol=1e-4)
    assert morf.aopc > rand.aopc > lerf.aopc
    flipped = [l for l in viewer.layers if l.metadata.get("xai_check", {}).get("kind") == "flipped"]
    assert len(flipped) == 1 and int(np.count_nonzero(flipped[0].data)) == counts[-1]
    assert "AOPC" in panel.status.text() and panel.plot.curves == panel.last_curves


def test_channel_ranking_show_and_ablation(setup, qtbot):
    viewer, x, make = setup
    w = make("ThreeChannels")
    w.config.segments = []
    w.add_segment("conv", "fc", "lrp-0", name="all")
    w.target.setCurrentText("class 1")
    panel = w.check
    assert panel.ablate_layer.findText("conv") >= 0
    panel.ablate_layer.setCurrentText("conv")
    panel.rank_channels()
    wait(qtbot, panel)
    m = float(x.mean())
    order = [int(panel.channel_table.item(r, 1).text()) for r in range(3)]
    assert order == [2, 1, 0]  # sorted by positive relevance 3m, 2m, m
    assert float(panel.channel_table.item(0, 2).text()) == pytest.approx(3 * m, rel=1e-3)
    panel.tick_channels([2])
    panel.show_channels()
    assert "conv · channel 2 (+)" in viewer.layers
    np.testing.assert_allclose(viewer.layers["conv · channel 2 activation"].data, 3 * x, rtol=1e-5)  # 3 x, by hand
    panel.ablate()
    wait(qtbot, panel)
    res = panel.last_ablation
    assert res["channels"] == [2]
    assert res["after"]["logits"][1] == pytest.approx(3 * m, rel=1e-5)
    assert res["delta"] == pytest.approx(-3 * m, rel=1e-5)
    assert "logit" in panel.ablation_label.text()
    panel.tick_channels([])
    panel.ablate()
    assert panel.status.text() == "error: rank the channels of a layer and tick the ones to ablate."


def test_curves_for_every_comparison_cell(setup, qtbot):
    """Two maps of one linear model: input x gradient (R = w x) and signed saliency (R = w); MoRF curves by hand."""
    viewer, x, make = setup
    w = make("Lin")
    w.target.setCurrentText("class 1")
    w.compare_3d.setChecked(False)
    w.compare(["method: input-x-gradient", "method: saliency"], targets=["class 1"])
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert not w.status.text().startswith("error"), w.status.text()
    panel = w.check
    panel.region.setValue(1)
    panel.steps.setValue(4)
    panel.max_fraction.setValue(0.4)
    for key, cb in panel.order_boxes.items():
        cb.setChecked(key == "morf")
    panel.run_cell_curves()
    wait(qtbot, panel)
    W1 = weights()[1]
    contrib = W1 * x.ravel()
    logit = float(contrib.sum())
    (label_a, (ixg,)), (label_b, (sal,)) = panel.last_cell_curves
    assert (label_a, label_b) == ("input-x-gradient", "saliency")
    for curve, ranking in ((ixg, np.argsort(-contrib, kind="stable")), (sal, np.argsort(-W1, kind="stable"))):
        expected = [logit - contrib[ranking[:v]].sum() for v in curve.voxels]
        np.testing.assert_allclose(curve.scores, expected, rtol=1e-4, atol=1e-4)
    # w x ranks the logit's own terms, so its top-k removes the most at every step: its AOPC is the largest possible
    assert all(a <= b + 1e-4 for a, b in zip(ixg.scores, sal.scores)) and ixg.aopc >= sal.aopc
    assert not panel.aopc_table.isHidden() and panel.aopc_table.rowCount() == 2
    assert panel.aopc_table.horizontalHeaderItem(2).text() == "AOPC MoRF"
    assert float(panel.aopc_table.item(0, 2).text()) == pytest.approx(ixg.aopc, rel=1e-3)
