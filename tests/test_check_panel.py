"""The LRP designer's Check tab in a real napari viewer: painted flips, flipping curves, channel ablation.

``xvfb-run -a .venv/bin/pytest tests/test_check_panel.py``

Hand-computed facts: for the bias-free linear model ``y = W x`` flipping a
set S of voxels to 0 lowers logit c by ``sum_{i in S} W[c, i] x_i``, and LRP-0
gives ``R = W[c] * x``, so the most-relevant-first curve is the logit minus the
running sum of the sorted relevance. For the three-channel net (1x1 conv with
weights 1, 2, 3, ReLU, mean, sum) channel c carries ``w_c mean(x)`` of the
logit ``6 mean(x)``. Randomization sanity check: the same linear model's logit
after its only layer is randomized is ``W' x`` with ``W'`` drawn by hand as
docs/sanity.md documents (``default_rng([seed, execution index])``, the
original tensor's mean and std); a net registered in another order than it
runs is randomized from its real top; the verdict line follows from the
table's numbers; *Show maps* adds one grid cell per step as new layers; the
user's weights and layers stay unchanged.
"""

from __future__ import annotations

import re
import textwrap

import numpy as np
import pytest

import napari  # noqa: E402,F401  - a missing GUI stack fails these tests, never skips them
import pytestqt  # noqa: E402,F401

from napari_xai._qt.lrp.check_tab import ACTIVE_CONFIG, META_KEY  # noqa: E402
from napari_xai._qt.lrp.designer import LrpDesignerWidget  # noqa: E402
from napari_xai.core.evaluation.similarity import VERDICT_THRESHOLD  # noqa: E402

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


    from model_factory import Shuffled, ThreeChannels  # noqa: F401  (tests/ is on sys.path under pytest)
    """
)


def _designer(viewer, tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    x = (np.random.default_rng(4).random(SHAPE) + 0.5).astype(np.float32)
    viewer.add_image(x, name="t1", affine=np.diag([2.0, 2.0, 2.0, 1.0]))

    def make(cls):
        w = LrpDesignerWidget(viewer)
        viewer.window.add_dock_widget(w)
        w.picker.source.value = "Python file + weights"
        w.picker.path.value = str(path)
        w.picker.class_name.value = cls
        w.design.list_layers()
        return w

    return viewer, x, make


@pytest.fixture
def setup(make_napari_viewer, tmp_path):
    return _designer(make_napari_viewer(), tmp_path)


@pytest.fixture
def proxy_setup(make_napari_viewer_proxy, tmp_path):
    """The same with napari's thread-checking viewer proxy (layers touched off the main thread raise)."""
    return _designer(make_napari_viewer_proxy(), tmp_path)


def weights():
    return np.random.default_rng(3).normal(size=(2, 120)).astype(np.float32)


def wait(qtbot, panel):
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert not panel.status.text().startswith("error"), panel.status.text()


def test_painted_flips_predict_live_with_hand_computed_logits(setup, qtbot):
    viewer, x, make = setup
    w = make("Lin")
    panel = w.check
    w.run_tab.target.setCurrentText("class 1")
    layer = panel.flip.new_flip_mask()
    assert layer.name == "flip mask" and layer.data.shape == SHAPE and panel.flip.flip_layer.currentText() == "flip mask"
    panel.flip.predict()
    assert panel.status.text() == "error: the flip mask 'flip mask' is empty; paint the voxels to flip."
    layer.paint((2, 2, 2), 1)  # a paint stroke (brush 6 in data units covers a ball around the voxel)
    qtbot.waitUntil(lambda: panel.flip.last_prediction is not None, timeout=TIMEOUT_MS)  # live: no button pressed
    wait(qtbot, panel)
    mask = np.asarray(layer.data) != 0
    W = weights()
    before, after = W @ x.ravel(), W @ (x * ~mask).ravel()
    res = panel.flip.last_prediction
    assert res["voxels"] == int(mask.sum()) > 1
    np.testing.assert_allclose(res["before"]["logits"], before, rtol=1e-5)
    np.testing.assert_allclose(res["after"]["logits"], after, rtol=1e-4, atol=1e-5)
    assert panel.flip.predict_table.rowCount() == 2 and "◀ target" in panel.flip.predict_table.item(1, 0).text()
    assert "voxels flipped to 'zero'" in panel.status.text()
    assert np.array_equal(viewer.layers["t1"].data, x)  # the input layer is never changed


def test_flipping_curve_from_a_relevance_layer(setup, qtbot):
    viewer, x, make = setup
    w = make("Lin")
    w.manager.config.segments = []
    w.segments.add_segment("fc", "fc", "lrp-0", name="all")
    w.run_tab.target.setCurrentText("class 1")
    w.run_tab.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    panel = w.check
    rel_name = "Lin · configuration 1 (+)"
    assert panel.curves.relevance_layer.findText(rel_name) >= 0
    panel.curves.relevance_layer.setCurrentText(rel_name)
    panel.curves.region.setValue(1)
    panel.curves.steps.setValue(6)
    panel.curves.max_fraction.setValue(0.3)
    for key, cb in panel.curves.order_boxes.items():
        cb.setChecked(True)
    panel.curves.run_curve()
    wait(qtbot, panel)
    morf, lerf, rand = panel.curves.last_curves
    assert (morf.order, lerf.order, rand.order) == ("morf", "lerf", "random")
    rel = (weights()[1] * x.ravel())
    logit = float(weights()[1] @ x.ravel())
    counts = [round(f * rel.size) for f in morf.fractions]
    top = np.sort(rel)[::-1]
    np.testing.assert_allclose(morf.scores, [logit - top[:c].sum() for c in counts], rtol=1e-4, atol=1e-4)
    assert morf.aopc > rand.aopc > lerf.aopc
    flipped = [l for l in viewer.layers if l.metadata.get("xai_check", {}).get("kind") == "flipped"]
    assert len(flipped) == 1 and int(np.count_nonzero(flipped[0].data)) == counts[-1]
    assert "AOPC" in panel.status.text() and panel.curves.plot.curves == panel.curves.last_curves


def test_channel_ranking_show_and_ablation(setup, qtbot):
    viewer, x, make = setup
    w = make("ThreeChannels")
    w.manager.config.segments = []
    w.segments.add_segment("conv", "fc", "lrp-0", name="all")
    w.run_tab.target.setCurrentText("class 1")
    panel = w.check
    assert panel.channels.ablate_layer.findText("conv") >= 0
    panel.channels.ablate_layer.setCurrentText("conv")
    panel.channels.channel_atlas.setCurrentText("harvard-oxford")  # the 2 mm grid from (0, 0, 0) mm lies inside MNI's brain
    panel.channels.rank_channels()
    wait(qtbot, panel)
    m = float(x.mean())
    order = [int(panel.channels.channel_table.item(r, 1).text()) for r in range(3)]
    assert order == [2, 1, 0]  # sorted by positive relevance 3m, 2m, m
    # channels c = w_c x with w_c > 0 share one top-voxel mask, hence one region and one IoU
    fires = {panel.channels.channel_table.item(r, 5).text() for r in range(3)}
    assert len(fires) == 1
    iou, region = fires.pop().split(" ", 1)
    assert 0 <= float(iou) <= 1 and region, panel.status.text()
    assert float(panel.channels.channel_table.item(0, 2).text()) == pytest.approx(3 * m, rel=1e-3)
    panel.channels.tick_channels([2])
    panel.channels.show_channels()
    assert "conv · channel 2 (+)" in viewer.layers
    np.testing.assert_allclose(viewer.layers["conv · channel 2 activation"].data, 3 * x, rtol=1e-5)  # 3 x, by hand
    panel.channels.ablate()
    wait(qtbot, panel)
    res = panel.channels.last_ablation
    assert res["channels"] == [2]
    assert res["after"]["logits"][1] == pytest.approx(3 * m, rel=1e-5)
    assert res["delta"] == pytest.approx(-3 * m, rel=1e-5)
    assert "logit" in panel.channels.ablation_label.text()
    panel.channels.tick_channels([])
    panel.channels.ablate()
    assert panel.status.text() == "error: rank the channels of a layer and tick the ones to ablate."


def test_curves_for_every_comparison_cell(setup, qtbot):
    """Two maps of one linear model: input x gradient (R = w x) and signed saliency (R = w); MoRF curves by hand."""
    viewer, x, make = setup
    w = make("Lin")
    w.run_tab.target.setCurrentText("class 1")
    w.compare_tab.compare_3d.setChecked(False)
    w.compare_tab.compare(["method: input-x-gradient", "method: saliency"], targets=["class 1"])
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert not w.status.text().startswith("error"), w.status.text()
    panel = w.check
    panel.curves.region.setValue(1)
    panel.curves.steps.setValue(4)
    panel.curves.max_fraction.setValue(0.4)
    for key, cb in panel.curves.order_boxes.items():
        cb.setChecked(key == "morf")
    panel.curves.run_cell_curves()
    wait(qtbot, panel)
    W1 = weights()[1]
    contrib = W1 * x.ravel()
    logit = float(contrib.sum())
    (label_a, (ixg,)), (label_b, (sal,)) = panel.curves.last_cell_curves
    assert (label_a, label_b) == ("input-x-gradient", "saliency")
    for curve, ranking in ((ixg, np.argsort(-contrib, kind="stable")), (sal, np.argsort(-W1, kind="stable"))):
        expected = [logit - contrib[ranking[:v]].sum() for v in curve.voxels]
        np.testing.assert_allclose(curve.scores, expected, rtol=1e-4, atol=1e-4)
    # w x ranks the logit's own terms, so its top-k removes the most at every step: its AOPC is the largest possible
    assert all(a <= b + 1e-4 for a, b in zip(ixg.scores, sal.scores)) and ixg.aopc >= sal.aopc
    assert not panel.curves.aopc_table.isHidden() and panel.curves.aopc_table.rowCount() == 2
    assert panel.curves.aopc_table.horizontalHeaderItem(2).text() == "AOPC MoRF"
    assert float(panel.curves.aopc_table.item(0, 2).text()) == pytest.approx(ixg.aopc, rel=1e-3)


# --------------------------------------------------------------------------- randomization sanity check


def column(table, c):
    return [table.item(r, c).text() for r in range(table.rowCount())]


def state_bytes(module):
    return {k: v.detach().cpu().numpy().tobytes() for k, v in module.state_dict().items()}


def test_sanity_table_follows_execution_order_and_the_verdict_follows_the_table(setup, qtbot):
    viewer, x, make = setup
    w = make("Shuffled")
    assert [l.name for l in w.layers if l.parameters] == ["conv1", "conv2", "fc"]  # execution order
    model = w._model
    before = state_bytes(model.module)
    panel = w.check
    panel.sanity.sanity_method.setCurrentText("saliency")
    w.run_tab.target.setCurrentText("class 1")
    panel.sanity.run_sanity()
    assert not panel.cancel_btn.isHidden() and panel.cancel_btn.isEnabled()
    wait(qtbot, panel)
    t = panel.sanity.sanity_table
    # one row per parametrised layer, from the real top (not the registration order conv2, fc, conv1)
    assert column(t, 0) == ["0", "1", "2", "3"]
    assert column(t, 1) == ["original", "fc", "+ conv2", "+ conv1"]  # "+": the layers above stay random
    assert t.horizontalHeaderItem(1).toolTip().endswith("(cascading)")
    assert column(t, 2)[0] == "1.000" and column(t, 5)[0] == "1.000"
    # the verdict is the documented threshold applied to the table's two rank-correlation columns
    sims = [max(float(a), float(b)) for a, b in zip(column(t, 2)[1:], column(t, 3)[1:])]
    worst = max(sims)
    text = panel.sanity.sanity_verdict.text()
    if worst >= VERDICT_THRESHOLD:
        assert text.startswith("map barely changes: fails, rank correlation ")
    else:
        assert text.startswith("map changes with the weights: passes (rank correlation at most ")
    shown = float(re.search(r"rank correlation (?:at most )?(-?[0-9.]+)", text).group(1))
    assert shown == pytest.approx(worst, abs=0.006) and f"threshold {VERDICT_THRESHOLD:g}" in text
    assert panel.progress.value() == 100 and not panel.cancel_btn.isEnabled()
    # the user's model (the designer's loaded model) is the same object with the same bytes
    assert w._model is model and state_bytes(model.module) == before


def test_sanity_last_layer_randomized_gives_the_hand_computed_logit(setup, qtbot):
    viewer, x, make = setup
    w = make("Lin")
    x = x.ravel().astype(np.float64)
    W = weights()
    panel = w.check
    assert panel.sanity.sanity_method.currentText() == ACTIVE_CONFIG  # the Design tab's active configuration
    w.run_tab.target.setCurrentText("class 1")
    panel.sanity.sanity_seed.setValue(11)
    panel.sanity.run_sanity()
    wait(qtbot, panel)
    t = panel.sanity.sanity_table
    assert column(t, 1) == ["original", "fc"]
    # step 0: the intact model's logit W[1] x
    assert float(column(t, 6)[0]) == pytest.approx(float(W[1].astype(np.float64) @ x), rel=5e-3)
    # step 1: fc drawn by hand as documented, from its execution index
    index = next(l.index for l in w.layers if l.name == "fc")
    W64 = W.astype(np.float64)
    drawn = (np.random.default_rng([11, index]).standard_normal(W.shape) * W64.std() + W64.mean()).astype(np.float32)
    logits = drawn.astype(np.float64) @ x
    res = panel.sanity.last_sanity[2]
    assert res.rows[1]["target_score"] == pytest.approx(float(logits[1]), rel=1e-4)
    assert float(column(t, 6)[1]) == pytest.approx(float(logits[1]), rel=5e-3)
    assert abs(logits[1] - W[1] @ x) > 1.0  # the randomization changed the target score
    p = np.exp(logits - logits.max())
    assert float(column(t, 7)[1]) == pytest.approx(float(p[1] / p.sum()), abs=1e-3)
    assert res.provenance["method"] == "lrp" and res.provenance["params"]["configuration"]["name"] == "configuration 1"
    assert res.provenance["seed"] == 11
    # the user's weights are untouched
    np.testing.assert_array_equal(w._model.module.fc.weight.detach().numpy(), W)


def test_sanity_show_maps_adds_one_grid_cell_per_step_and_leaves_user_layers(setup, qtbot):
    viewer, x, make = setup
    w = make("Shuffled")
    panel = w.check
    panel.sanity.show_sanity_maps()
    assert panel.status.text() == "error: run the sanity check first ('Run sanity check'), then show its maps."
    panel.sanity.sanity_method.setCurrentText("input-x-gradient")
    panel.sanity.sanity_mode.setCurrentText("independent")
    panel.sanity.sanity_layers.setValue(2)
    panel.sanity.run_sanity()
    wait(qtbot, panel)
    assert column(panel.sanity.sanity_table, 1) == ["original", "fc", "conv2"]
    assert panel.sanity.sanity_table.horizontalHeaderItem(1).toolTip().startswith("independent")
    user = {l.name: np.asarray(l.data).copy() for l in viewer.layers}
    assert list(user) == ["t1"]
    panel.sanity.show_sanity_maps()
    ours = [l for l in viewer.layers if l.metadata.get(META_KEY, {}).get("kind") == "sanity"]
    anatomy = [l for l in ours if l.colormap.name == "gray"]
    assert len(anatomy) == 3 and len(ours) == 9  # N + 1 cells: anatomy, positive and negative map each
    assert [l.name for l in anatomy] == ["1. sanity 0: original", "2. sanity 1: fc", "3. sanity 2: conv2"]
    assert viewer.canvas.grid.enabled and viewer.canvas.grid.stride == 3
    limits = {tuple(l.contrast_limits) for l in ours if l.colormap.name != "gray"}
    assert len(limits) == 1  # one colour scale
    res = panel.sanity.last_sanity[2]
    pos = viewer.layers["2. sanity 1: fc (+)"]
    np.testing.assert_allclose(pos.metadata["xai_relevance"], res.maps[1].sum(axis=0), rtol=1e-6)
    assert pos.metadata["provenance"]["sanity"]["randomized_layers"] == ["fc"]
    # the user's layer: same data, only hidden while the grid is on
    assert np.array_equal(viewer.layers["t1"].data, user["t1"]) and not viewer.layers["t1"].visible
    # showing again replaces our layers (no pile-up); Exit grid shows the user's layer again
    panel.sanity.sanity_common.setChecked(False)  # each map on its own scale
    panel.sanity.show_sanity_maps()
    ours = [l for l in viewer.layers if l.metadata.get(META_KEY, {}).get("kind") == "sanity"]
    assert len(ours) == 9
    for k, m in enumerate(res.maps):
        v = np.abs(m.sum(axis=0))
        assert viewer.layers[f"{k + 1}. sanity {k}: {['original', 'fc', 'conv2'][k]} (+)"].contrast_limits[1] == \
            pytest.approx(float(np.percentile(v[v > 0], 99.99)), rel=1e-5)
    panel.sanity.sanity_exit_btn.click()
    assert not viewer.canvas.grid.enabled and viewer.layers["t1"].visible
    # the grid's anatomy layers are not offered as inputs of the designer
    assert [w.design.inputs.item(i).text() for i in range(w.design.inputs.count())] == ["t1"]


def test_sanity_user_errors_are_one_line(setup, qtbot):
    viewer, x, make = setup
    w = make("Lin")
    panel = w.check
    w.manager.active = None
    panel.sanity.run_sanity()
    assert panel.status.text() == ("error: no active LRP configuration; activate one in the Design tab, "
                                   "or choose a method.")
    panel.sanity.sanity_method.setCurrentText("saliency")
    w.picker.class_name.value = "NoSuchNet"
    w._model = None
    panel.sanity.run_sanity()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    text = panel.status.text()
    assert text.startswith("error: ") and "NoSuchNet" in text and "\n" not in text
    assert panel.sanity.sanity_table.rowCount() == 0 and panel.progress.value() == 0


def test_sanity_cancel_button_stops_the_run(setup, qtbot):
    viewer, x, make = setup
    w = make("Shuffled")
    panel = w.check
    panel.sanity.sanity_method.setCurrentText("saliency")
    panel.report = lambda f, m: panel.job.cancel_event.wait(10)  # the worker waits at its first progress report
    panel.sanity.run_sanity()
    assert panel.busy and panel.cancel_btn.isEnabled()
    panel.cancel_btn.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=TIMEOUT_MS)
    assert panel.status.text() == "cancelled; no layer was changed."
    assert panel.sanity.sanity_table.rowCount() == 0 and panel.sanity.last_sanity is None and panel.sanity.sanity_btn.isEnabled()


def test_sanity_touches_layers_only_on_the_main_thread(proxy_setup, qtbot):
    viewer, x, make = proxy_setup
    w = make("Shuffled")
    panel = w.check
    panel.sanity.sanity_method.setCurrentText("saliency")
    panel.sanity.run_sanity()
    wait(qtbot, panel)
    panel.sanity.show_sanity_maps()
    assert "1. sanity 0: original (+)" in viewer.layers and viewer.canvas.grid.enabled


def test_the_check_tab_and_the_designer_never_run_on_the_model_at_once(setup, qtbot):
    """LRP merges BatchNorm into the shared model while it runs: each side refuses to start while the other runs."""
    viewer, x, make = setup
    w = make("ThreeChannels")
    panel = w.check
    panel.channels.ablate_layer.setCurrentText("conv")
    w.job.worker = object()  # the designer is running
    panel.channels.rank_channels()
    assert panel.job.worker is None and "the designer is still running" in panel.status.text()
    w.job.worker = None
    panel.job.worker = object()  # the Check tab is running
    w.run_tab.run()
    assert w.job.worker is None and "Check tab is still running" in w.status.text()
    panel.job.worker = None
