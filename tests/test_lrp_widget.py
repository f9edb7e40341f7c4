"""The LRP designer dock widget in a real napari viewer (pytest-qt; run under Xvfb).

``xvfb-run -a .venv/bin/pytest tests/test_lrp_widget.py``

Facts checked: layers in execution order from a model file, the configuration
manager and segment editor produce JSON that the CLI method reads back to the
same relevance, runs add relevance / intermediate / segmentation layers whose
sums match the conservation readout, per-channel layers and shares, and a
comparison grid with one colour limit and labelled cells saved as a PNG.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

import napari  # noqa: E402,F401  - a missing GUI stack fails these tests, never skips them
import pytestqt  # noqa: E402,F401

from napari_xai._layers import COMPARE_STRIDE, POS_COLORMAP  # noqa: E402
from napari_xai._qt._forms import checked_texts  # noqa: E402
from napari_xai._qt.lrp.designer import LrpDesignerWidget  # noqa: E402
from napari_xai.core.errors import UserError  # noqa: E402

TIMEOUT_MS = 60_000
AFF = np.diag([2.0, 2.0, 2.0, 1.0])

NETS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Reordered(nn.Module):
        '''Registration order differs from execution order.'''

        def __init__(self, in_channels=1, seed=0):
            super().__init__()
            torch.manual_seed(seed)
            self.fc = nn.Linear(6, 2)
            self.gap = nn.AdaptiveAvgPool3d(1)
            self.act2 = nn.ReLU()
            self.conv2 = nn.Conv3d(4, 6, 3, padding=1)
            self.pool = nn.MaxPool3d(2)
            self.act1 = nn.ReLU()
            self.conv1 = nn.Conv3d(in_channels, 4, 3, padding=1)
            with torch.no_grad():
                for m in (self.fc, self.conv1, self.conv2):
                    m.bias.zero_()
                self.fc.weight.abs_()  # positive logits for a positive input

        def forward(self, x):
            x = self.pool(self.act1(self.conv1(x)))
            return self.fc(self.gap(self.act2(self.conv2(x))).flatten(1))


    class SegNet(nn.Module):
        '''Two classes: class 1 where the input is bright (> 0.5); bias-free, so LRP-0 conserves.'''

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 1, bias=False)
            self.act = nn.ReLU()
            self.out = nn.Conv3d(2, 2, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1, 1))
                self.out.weight.copy_(torch.tensor([[0.0, 1.0], [2.0, 0.0]]).view(2, 2, 1, 1, 1))

        def forward(self, x):
            # class 0 logit = relu(-x), class 1 logit = 2 relu(x): class 1 wins where x > 0
            return self.out(self.act(self.conv(x - 0.5)))


    class DeepSup(nn.Module):
        '''Deep supervision: returns (main, aux); aux = 3 x main, so its class-1 logit is 6 relu(x - 0.5).'''

        def __init__(self):
            super().__init__()
            self.body = SegNet()
            self.aux = nn.Conv3d(2, 2, 1, bias=False)
            with torch.no_grad():
                self.aux.weight.copy_(3 * torch.eye(2).view(2, 2, 1, 1, 1))

        def forward(self, x):
            y = self.body(x)
            return y, self.aux(y)
    """
)


@pytest.fixture
def nets(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(NETS)
    return path


def blobs(shape=(12, 12, 12)):
    vol = np.zeros(shape, np.float32)
    vol[1:5, 1:5, 1:5] = 1.0
    vol[7:11, 7:11, 7:11] = 1.0
    return vol + 0.05 * np.random.default_rng(0).random(shape).astype(np.float32)


def make(viewer, nets, cls="Reordered", kwargs="{}"):
    w = LrpDesignerWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.picker.source.value = "Python file + weights"
    w.picker.path.value = str(nets)
    w.picker.class_name.value = cls
    w.picker.kwargs.value = kwargs
    return w


def wait(qtbot, w):
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert not w.status.text().startswith("error"), w.status.text()


def test_layers_configuration_manager_and_segment_editor(make_napari_viewer, nets, tmp_path):
    from napari_xai.core.lrp import load_config

    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="t1", affine=AFF)
    w = make(viewer, nets)
    layers = w.design.list_layers()
    names = [l.name for l in layers]
    assert names == ["conv1", "act1", "pool", "conv2", "act2", "gap", "fc"]  # execution order
    assert [w.design.layer_table.item(r, 1).text() for r in range(w.design.layer_table.rowCount())] == names
    assert w.design.layer_table.item(3, 3).text() == "6×6×6×6" and w.design.layer_table.item(3, 2).text() == "Conv3d"
    assert w.run_tab.target.itemText(1) == "class 0"

    # configuration manager: new (gamma | epsilon | 0 over the listed layers), duplicate, rename, activate, delete
    cfg = w.manager.new_config("composite")
    assert [s.preset for s in cfg.segments] == ["lrp-gamma-rule", "lrp-epsilon", "lrp-0"]
    assert [w.design.layer_table.item(r, 4).text() for r in (0, 3, 6)] == ["→ lower", "→ middle", "→ upper"]
    assert w.design.ruler.spans == [(0, 0, "lower"), (3, 3, "middle"), (6, 6, "upper")]
    dup = w.manager.duplicate_config()
    assert dup.name == "composite copy" and w.manager.config is dup
    w.manager.rename_config("flat bottom")
    w.manager.activate()
    assert w.manager.active == "flat bottom" and w.manager.active_label.text() == "active: flat bottom"
    with pytest.raises(UserError, match="exists already"):
        w.manager.rename_config("composite")

    # segment editor: edit the first segment's rule through the preset box and the parameter spin boxes
    dup.segments = []
    w.segments.fill_table()
    seg = w.segments.add_segment("conv1", "conv2", "lrp-epsilon", name="convs")
    w.segments.segment_table.selectRow(0)
    w.segments.preset.setCurrentText("lrp-flat")
    assert seg.rule.gamma0 == 1.0 and seg.rule.theta0 == 1.0 and seg.preset == "lrp-flat"
    w.segments.preset.setCurrentText("lrp-gamma-rule")
    w.segments.spins["gamma1p"].setValue(0.25)
    assert seg.preset == "lrp-gamma-rule" and seg.rule.gamma1p == 0.25
    assert w.segments.segment_table.item(0, 3).text() == "LRP-γ" and "0.25w⁺" in w.segments.segment_table.item(0, 4).text()
    w.segments.segment_table.selectRow(1)  # the '(rest)' row edits the default rule
    w.segments.preset.setCurrentText("lrp-epsilon")
    w.segments.spins["epsilon"].setValue(0.5)
    assert dup.default.epsilon == 0.5
    w.design.set_intermediate(["act1"])
    assert w.design.layer_table.item(1, 5).checkState() == w.design.layer_table.item(1, 5).checkState().Checked

    path = w.manager.save_configs(tmp_path / "lib.json")
    data = json.loads(path.read_text())
    assert data["active"] == "flat bottom" and len(data["configurations"]) == 3
    back = load_config(path)
    assert back.segments[0].rule.gamma1p == 0.25 and back.default.epsilon == 0.5 and back.intermediate == ["act1"]
    w.manager.delete_config()
    assert [c.name for c in w.manager.configs] == ["configuration 1", "composite"] and w.manager.active == "configuration 1"
    loaded = w.manager.load_configs(path)
    assert [c.name for c in loaded] == ["configuration 1 (2)", "composite (2)", "flat bottom"]


def test_overlapping_segment_is_refused(make_napari_viewer, nets):
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="t1", affine=AFF)
    w = make(viewer, nets)
    w.design.list_layers()
    w.manager.config.segments = []
    w.segments.add_segment("conv1", "conv2", name="a")
    with pytest.raises(UserError, match=r"segments 'a' \(#0-#3\) and 'b' \(#1-#6\) overlap at layer 'act1'"):
        w.segments.add_segment("act1", "fc", name="b")
    w.design.layer_table.selectRow(5)  # 'gap' alone has no Conv/Linear layer
    w.segments._add_segment_clicked()
    assert "contains no Conv/Linear layer" in w.status.text()
    assert len(w.manager.config.segments) == 1


def test_run_adds_relevance_intermediate_layers_and_readouts(make_napari_viewer, nets, qtbot, tmp_path):
    from napari_xai.core.explain import explain
    from napari_xai.core.models import load_model
    from napari_xai.core.volumes import Volume

    viewer = make_napari_viewer()
    data = blobs()
    viewer.add_image(data, name="t1", affine=AFF)
    truth = np.zeros(data.shape, np.uint8)
    truth[7:11, 7:11, 7:11] = 1
    viewer.add_labels(truth, name="blob (ground truth)", affine=AFF)
    w = make(viewer, nets)
    w.design.list_layers()
    cfg = w.manager.config
    cfg.segments = []
    w.segments.add_segment("conv1", "fc", "lrp-zplus", name="all")
    cfg.zero_bias = True
    w.design.set_intermediate(["act2"])
    w.run_tab.run()
    wait(qtbot, w)
    rel = w.run_tab.last_result
    base = "Reordered · configuration 1"
    pos, neg = viewer.layers[f"{base} (+)"], viewer.layers[f"{base} (−)"]
    signed = pos.data - neg.data
    # the widget shows what the core computes with the saved configuration (the CLI's path)
    path = w.manager.save_configs(tmp_path / "c.json")
    ref = explain(Volume(data=data[None], affine=AFF, name="t1"), load_model(f"{nets}:Reordered"), "lrp",
                  params={"config": str(path)})
    np.testing.assert_allclose(signed, ref.data[0], rtol=1e-5, atol=1e-7)
    # conservation readout: z+ without biases conserves, and the input map sums to the logit
    cons = w.run_tab.readouts["conservation"]
    assert cons["expected"] and cons["ratio"] == pytest.approx(1.0, abs=1e-4)
    assert float(signed.sum()) == pytest.approx(cons["output"], rel=1e-4)
    # intermediate layers: the boundary below the segment (= the input) and act2, hidden at first
    at_act2 = viewer.layers[f"{base} · at act2 (+)"]
    assert not at_act2.visible and at_act2.data.shape == data.shape
    neg_name = f"{base} · at act2 (−)"  # no (−) layer when the map has no negative voxel
    inter = at_act2.data - (viewer.layers[neg_name].data if neg_name in viewer.layers else 0.0)
    assert float(inter.sum()) == pytest.approx(cons["output"], rel=1e-3)  # conserved down to act2
    assert f"{base} · at after all (+)" in viewer.layers
    # ground-truth readouts (the Labels layer whose name says 'ground truth' is picked by itself)
    assert w.run_tab.truth_layer.currentText() == "blob (ground truth)"
    from napari_xai.core.evaluation.metrics import rank_accuracy

    assert w.run_tab.readouts["mask"]["rank_accuracy"] == pytest.approx(rank_accuracy(rel.data, truth))
    texts = [w.run_tab.readout_table.item(r, 0).text() for r in range(w.run_tab.readout_table.rowCount())]
    assert "relevance rank accuracy" in texts and "ratio in / out" in texts
    # same settings again: layers are updated, not piled up
    n = len(viewer.layers)
    w.run_tab.run()
    wait(qtbot, w)
    assert len(viewer.layers) == n


def test_segmentation_component_and_labels_mask(make_napari_viewer, nets, qtbot):
    viewer = make_napari_viewer()
    data = blobs()
    viewer.add_image(data, name="t1", affine=AFF)
    w = make(viewer, nets, "SegNet")
    layers = w.design.list_layers()
    assert [l.name for l in layers] == ["conv", "act", "out", "xai_masked_sum"]
    w.manager.config.segments = []
    w.segments.add_segment("conv", "out", "lrp-0", name="all")
    w.run_tab.set_point((8, 8, 8))
    assert w.run_tab.mask_source.currentText() == "component at point"
    w.run_tab.target.setCurrentText("class 1")
    w.run_tab.run()
    wait(qtbot, w)
    seg = viewer.layers["SegNet · predicted segmentation"]
    assert seg.data.dtype == np.uint16
    np.testing.assert_array_equal(seg.data, (data > 0.5).astype(np.uint16))
    rel = w.run_tab.last_result
    assert rel.provenance["segmentation"]["mask"] == "component" and rel.provenance["segmentation"]["mask_voxels"] == 64
    # class-1 logit = 2 relu(x - 0.5): LRP-0 on a bias-free net gives exactly that logit at each voxel of the component
    expected = np.zeros_like(data)
    expected[7:11, 7:11, 7:11] = 2 * (data[7:11, 7:11, 7:11] - 0.5)
    np.testing.assert_allclose(rel.data[0], expected, rtol=1e-4, atol=1e-6)
    assert w.run_tab.readouts["conservation"]["ratio"] == pytest.approx(1.0, abs=1e-4)
    # an empty Labels mask is refused with one line and no new layer
    viewer.add_labels(np.zeros(data.shape, np.uint8), name="empty", affine=AFF)
    w.run_tab.mask_source.setCurrentText("Labels layer")
    w.run_tab.mask_layer.setCurrentText("empty")
    n = len(viewer.layers)
    w.run_tab.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert w.status.text() == "error: the mask is empty (no voxel set); paint the region to explain, or use the predicted region."
    assert len(viewer.layers) == n


def test_deep_supervision_output_is_chosen_in_the_run_tab(make_napari_viewer, nets, qtbot):
    viewer = make_napari_viewer()
    data = blobs()
    viewer.add_image(data, name="t1", affine=AFF)
    w = make(viewer, nets, "DeepSup")
    w.design.list_layers()
    assert "The model returns 2 outputs" in w.status.text()
    w.manager.config.segments = []
    w.segments.add_segment("body.conv", "aux", "lrp-0", name="all")
    w.run_tab.target.setCurrentText("class 1")
    inside = data > 0.5
    for index, factor in ((0, 2.0), (1, 6.0)):  # hand-computed class-1 logits: 2 relu(x - .5) and 6 relu(x - .5)
        w.run_tab.output_index.setValue(index)
        w.run_tab.run()
        wait(qtbot, w)
        rel = w.run_tab.last_result
        expected = np.where(inside, factor * (data - 0.5), 0.0)
        np.testing.assert_allclose(rel.data[0], expected, rtol=1e-4, atol=1e-6)
        assert rel.provenance["output_index"] == index
        assert any("returns 2 outputs" in m for m in rel.warnings)
    w.run_tab.output_index.setValue(5)
    w.run_tab.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert w.status.text() == "error: output index 5 is out of range: the model returns 2 tensors."


def test_multichannel_layers_and_shares(make_napari_viewer, nets, qtbot):
    viewer = make_napari_viewer()
    a = blobs()
    viewer.add_image(a, name="ADC", affine=AFF)
    viewer.add_image(0.1 * a[::-1].copy(), name="Tmax", affine=AFF)
    w = make(viewer, nets, "Reordered", '{"in_channels": 2}')
    w.design.set_inputs(["ADC", "Tmax"])
    w.design.list_layers()
    w.run_tab.run()
    wait(qtbot, w)
    base = "Reordered · configuration 1"
    for name in ("[ADC]", "[Tmax]", "[Σ channels]"):
        assert f"{base} {name} (+)" in viewer.layers
    shares = w.run_tab.readouts["channel_shares"]
    assert [s["name"] for s in shares] == ["ADC", "Tmax"]
    assert sum(s["positive_share"] for s in shares) == pytest.approx(1.0)
    total = viewer.layers[f"{base} [Σ channels] (+)"].data - viewer.layers[f"{base} [Σ channels] (−)"].data
    np.testing.assert_allclose(total, w.run_tab.last_result.data.sum(axis=0), rtol=1e-6)


def test_comparison_grid_with_one_colour_limit_and_png(make_napari_viewer, nets, qtbot, tmp_path):
    from PIL import Image as PILImage

    viewer = make_napari_viewer(show=True)
    viewer.add_image(blobs(), name="t1", affine=AFF)
    w = make(viewer, nets)
    w.design.list_layers()
    names = []
    for preset in ("lrp-0", "lrp-zplus", "lrp-flat", "lrp-alphabeta"):
        cfg = w.manager.new_config(preset, from_layers=False)
        w.segments.add_segment("conv1", "fc", preset, name="all")
        names.append(f"config: {cfg.name}")
    w.compare_tab.compare_3d.setChecked(False)  # software rendering of 12 volumes in 3D is slow; docs/lrp-designer.md shows 3D
    w.compare_tab.compare(names)
    wait(qtbot, w)
    grid = viewer.canvas.grid
    assert grid.enabled and grid.stride == COMPARE_STRIDE and viewer.dims.ndisplay == 2
    assert grid.actual_shape(viewer.layers) == (2, 2)
    cells = [l for l in viewer.layers if l.metadata.get("xai_lrp", {}).get("kind") == "compare"]
    assert len(cells) == 4 * COMPARE_STRIDE and viewer.layers.index(cells[-1]) == len(cells) - 1
    rel_layers = [l for l in cells if l.colormap.name in (POS_COLORMAP, "cyan")]
    assert len({tuple(l.contrast_limits) for l in rel_layers}) == 1  # identical colour scaling
    titles = [l.name for l in cells if l.name_overlay.visible]
    assert [t.split(" · faint: ")[0] for t in titles] == ["1. lrp-0", "2. lrp-zplus", "3. lrp-flat", "4. lrp-alphabeta"]
    # a cell that is blank at the shared limit says so (issue 12): its own 99.99th percentile of |r| < 5 % of it
    limit = rel_layers[0].contrast_limits[1]
    for title, item in zip(titles, ("lrp-0", "lrp-zplus", "lrp-flat", "lrp-alphabeta")):
        signed = next(l for l in rel_layers if l.name.startswith(title)).metadata["xai_relevance"]
        own = np.percentile(np.abs(signed[signed != 0]), 99.99)
        assert ("· faint: " in title) == (own < 0.05 * limit), (title, own, limit)
        named = w.status.text().split("too faint")[0] if "too faint" in w.status.text() else ""
        assert (item in named) == ("· faint: " in title), w.status.text()
    others = [l for l in viewer.layers if l not in cells]
    assert all(not l.visible for l in others)
    png = w.compare_tab.save_comparison(tmp_path / "compare.png")
    img = np.asarray(PILImage.open(png))
    assert img.ndim == 3 and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10
    w.compare_tab.exit_grid()
    assert not grid.enabled and viewer.dims.ndisplay == 2 and viewer.layers["t1"].visible


def test_comparison_across_targets_and_models(make_napari_viewer, nets, qtbot):
    """One configuration x two targets x two models: four cells, each conserving its own model's target logit."""
    import importlib.util

    import torch

    viewer = make_napari_viewer()
    data = blobs()
    viewer.add_image(data, name="t1", affine=AFF)
    w = make(viewer, nets)
    w.design.list_layers()
    cfg = w.manager.new_config("lrp-0", from_layers=False)
    w.segments.add_segment("conv1", "fc", "lrp-0", name="all")
    key_a = w.compare_tab.add_compare_model()
    w.picker.kwargs.value = '{"seed": 1}'
    key_b = w.compare_tab.add_compare_model()
    assert (key_a, key_b) == ("Reordered", "Reordered #2")
    assert w.compare_tab.add_compare_model() == key_b  # the same source is not added twice
    assert [w.compare_tab.compare_targets.item(i).text() for i in range(w.compare_tab.compare_targets.count())] == ["predicted", "class 0", "class 1"]
    w.compare_tab.compare_3d.setChecked(False)
    w.compare_tab.compare([f"config: {cfg.name}"], targets=["class 0", "class 1"], models=[key_a, key_b])
    wait(qtbot, w)
    labels = [label for label, _ in w.compare_tab.last_comparison]
    assert labels == [f"class 0 · {key_a}", f"class 1 · {key_a}", f"class 0 · {key_b}", f"class 1 · {key_b}"]
    # independent fact: LRP-0 on these bias-free ReLU nets conserves the target logit of *that* model
    spec = importlib.util.spec_from_file_location("nets_direct", nets)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.from_numpy(data)[None, None]
    with torch.no_grad():
        logits = {key_a: mod.Reordered(seed=0)(x)[0].tolist(), key_b: mod.Reordered(seed=1)(x)[0].tolist()}
    for label, rel in w.compare_tab.last_comparison:
        target, model = label.split(" · ")
        expected = float(logits[model][int(target[-1])])
        assert float(rel.data.sum()) == pytest.approx(expected, rel=1e-3, abs=1e-6), label
    assert logits[key_a][1] != pytest.approx(logits[key_b][1], rel=1e-2)  # the two models really differ
    titles = [l.name for l in viewer.layers if l.metadata.get("xai_lrp", {}).get("kind") == "compare"
              and l.name_overlay.visible]
    assert titles == [f"{i + 1}. {label}" for i, label in enumerate(labels)]
    # the ground truth of the Run tab gives every cell its mask readouts (positive mass by hand)
    gt = np.zeros(data.shape, np.uint8)
    gt[7:11, 7:11, 7:11] = 1
    viewer.add_labels(gt, name="ground truth", affine=AFF)
    assert w.run_tab.truth_layer.currentText() == "ground truth"
    w.compare_tab.compare([f"config: {cfg.name}"], targets=["class 1"], models=[key_a, key_b])
    wait(qtbot, w)
    assert w.compare_tab.cell_table.rowCount() == 2 and len(w.compare_tab.cell_readouts) == 2
    for (label, rel), row in zip(w.compare_tab.last_comparison, w.compare_tab.cell_readouts):
        pos = np.clip(rel.data.sum(axis=0), 0, None)
        assert row["cell"] == label and row["relevance_mass"] == pytest.approx(pos[gt > 0].sum() / pos.sum(), rel=1e-5)
    assert w.compare_tab.cell_table.item(0, 2).text() == f"{w.compare_tab.cell_readouts[0]['relevance_mass']:.3f}"
    # a model that is not in the list is refused with one line
    w.compare_tab.compare([f"config: {cfg.name}"], models=["nope"])
    assert w.status.text() == "error: model 'nope' is not in the models list; add it with 'Add model'."


def test_component_pick_in_3d_follows_the_view_ray(make_napari_viewer, nets, qtbot):
    from types import SimpleNamespace

    viewer = make_napari_viewer()
    data = blobs()
    viewer.add_image(data, name="t1", affine=AFF)
    w = make(viewer, nets, "SegNet")
    w.design.list_layers()
    w.manager.config.segments = []
    w.segments.add_segment("conv", "out", "lrp-0", name="all")
    w.run_tab.target.setCurrentText("class 1")
    viewer.dims.ndisplay = 3
    expected_voxels = {}
    # world (mm, 2 mm voxels): a ray along the diagonal from outside the near corner meets blob 1:5 first,
    # the opposite ray meets blob 7:11 first
    for start, direction, blob in (((-4.0, -4.0, -4.0), (1.0, 1.0, 1.0), slice(1, 5)),
                                   ((30.0, 30.0, 30.0), (-1.0, -1.0, -1.0), slice(7, 11))):
        w.run_tab.pick_btn.setChecked(True)
        w.run_tab.on_click(viewer, SimpleNamespace(position=start, view_direction=direction, dims_displayed=[0, 1, 2]))
        assert not w.run_tab.pick_btn.isChecked() and w.run_tab.point_label.text().startswith("ray through")
        w.run_tab.run()
        wait(qtbot, w)
        rel = w.run_tab.last_result
        seg = rel.provenance["segmentation"]
        assert seg["mask"] == "component" and seg["mask_voxels"] == 64
        assert all(blob.start <= v < blob.stop for v in seg["point"])
        expected = np.zeros_like(data)
        expected[blob, blob, blob] = 2 * (data[blob, blob, blob] - 0.5)
        np.testing.assert_allclose(rel.data[0], expected, rtol=1e-4, atol=1e-6)
        expected_voxels[blob.start] = seg["point"]
    assert expected_voxels[1] == [1, 1, 1] and expected_voxels[7] == [10, 10, 10]
    # a ray that misses the class-1 region: one line, no new layer
    n = len(viewer.layers)
    w.run_tab.on_click(viewer, SimpleNamespace(position=(-4.0, 12.0, 12.0), view_direction=(1.0, 0.0, 0.0),
                                        dims_displayed=[0, 1, 2]))
    w.run_tab.pick_btn.setChecked(True)
    w.run_tab.on_click(viewer, SimpleNamespace(position=(-4.0, 12.0, 12.0), view_direction=(1.0, 0.0, 0.0),
                                        dims_displayed=[0, 1, 2]))
    w.run_tab.run()
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT_MS)
    assert w.status.text().startswith("error: the viewing ray through the click meets no voxel predicted as 'class 1'")
    assert len(viewer.layers) == n


def test_worker_never_touches_layers(make_napari_viewer_proxy, nets, qtbot):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(blobs(), name="t1", affine=AFF)
    w = make(viewer, nets)
    w.design.list_layers()
    w.run_tab.run()
    wait(qtbot, w)
    assert "Reordered · configuration 1 (+)" in viewer.layers


def test_relevance_filter_inside_lrp_is_part_of_the_configuration(make_napari_viewer, nets, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="t1", affine=AFF)
    w = make(viewer, nets)
    w.design.list_layers()
    plain = w.manager.config
    filtered = w.manager.duplicate_config("filtered")
    w.manager.set_filter("pass", 0.0, 0.4)
    assert filtered.filter is not None and filtered.filter.to_dict() == {"kind": "pass", "alpha": [0.0, 0.4]}
    assert plain.filter is None
    w.manager.set_filter("pass", 0.6, 0.2)  # an empty range is refused, the previous filter stays
    assert w.status.text().startswith("error: filter range") and filtered.filter.alpha2 == 0.4
    w.manager.set_filter("pass", 0.0, 0.4)
    # switching configurations shows each one's filter
    w.manager.config_combo.setCurrentText(plain.name)
    assert w.manager.filter_kind.currentText() == "no filter"
    w.manager.config_combo.setCurrentText("filtered")
    assert w.manager.filter_kind.currentText() == "pass" and w.manager.filter_a2.value() == pytest.approx(0.4)
    # saved and loaded with the library; a run records it and no longer expects conservation
    path = w.manager.save_configs(tmp_path / "lib.json")
    assert json.loads(path.read_text())["configurations"][1]["filter"] == {"kind": "pass", "alpha": [0.0, 0.4]}
    w.manager.activate("filtered")
    w.run_tab.run()
    wait(qtbot, w)
    used = w.run_tab.last_result.provenance["params"]
    assert used["filter"] == {"kind": "pass", "alpha": [0.0, 0.4]} and used["filtered_layers"] >= 1
    assert used["conservation"]["expected"] is False


def test_alpha_sweep_adds_filtered_copies_and_ticks_them(make_napari_viewer, nets, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="t1", affine=AFF)
    w = make(viewer, nets)
    w.design.list_layers()
    base = w.manager.active
    labels = w.compare_tab.sweep_filter("clamp", (0.2, 0.5))
    assert labels == [f"config: {base}", f"config: {base} · 0.2-clamp", f"config: {base} · 0.5-clamp"]
    assert w.manager.config_named(f"{base} · 0.5-clamp").filter.to_dict() == {"kind": "clamp", "alpha": [0.0, 0.5]}
    assert w.manager.config_named(base).filter is None
    assert checked_texts(w.compare_tab.compare_list) == labels
    w.compare_tab.compare_3d.setChecked(False)
    w.compare_tab.compare()
    wait(qtbot, w)
    sums = [row["sum"] for row in w.compare_tab.cell_readouts]
    assert len(sums) == 3 and len({round(v, 6) for v in sums}) == 3  # the filters change the relevance


def test_trust_checkbox_names_the_risk_and_reaches_load_model(make_napari_viewer, nets, monkeypatch):
    """The designer's model picker has the same trust opt-in as Explain and Cohort: off by default, passed on when ticked."""
    import napari_xai.core.models as models

    calls = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: calls.append(k) or real(*a, **k))
    viewer = make_napari_viewer()
    w = make(viewer, nets)
    text = " ".join(w.picker.trust.text.split())  # the designer shows it on three lines
    assert "RUN code" in text and "TorchScript" in text
    assert not w.picker.trust.value and w.picker.trust.enabled
    w.load_model()
    assert calls[-1].get("trust", False) is False
    w.picker.trust.value = True
    w.load_model()  # a new key: loads again, now trusted
    assert calls[-1]["trust"] is True and len(calls) == 2
    w.picker.source.value = "demo model"
    assert not w.picker.trust.enabled  # the demo model is built in: nothing to trust


def test_plugins_menu_designer_refuses_untrusted_files_until_the_trust_box_is_ticked(make_napari_viewer, nets, tmp_path):
    """Opened as the Plugins menu opens it, the designer has the shared model picker of Explain: a checkpoint that
    needs full unpickling is refused with the trust message until the box (whose text names the risk) is ticked; a
    TorchScript file is refused before anything loads it, ticked or not (LRP needs an eager module)."""
    import argparse

    import torch

    from napari_xai._qt.model_picker import TRUST_TEXT
    from napari_xai.core.models import load_model

    viewer = make_napari_viewer()
    viewer.add_image(blobs(), name="t1", affine=AFF)
    _, w = viewer.window.add_plugin_dock_widget("napari-xai", "LRP designer")
    assert isinstance(w, LrpDesignerWidget)
    net = load_model(f"{nets}:Reordered").module
    weights = tmp_path / "pickled.pt"
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, weights)
    p = w.picker
    assert " ".join(p.trust.text.split()) == TRUST_TEXT and "RUN code" in p.trust.text and p.trust.value is False
    p.source.value = "Python file + weights"
    p.path.value, p.class_name.value, p.weights.value = str(nets), "Reordered", str(weights)
    w.design.list_btn.click()
    assert w.status.text().startswith("error") and "full unpickling" in w.status.text()
    assert "tick 'trust model code'" in w.status.text() and w.layers == []
    p.trust.value = True
    w.design.list_btn.click()
    assert not w.status.text().startswith("error"), w.status.text()
    assert [l.name for l in w.layers] == ["conv1", "act1", "pool", "conv2", "act2", "gap", "fc"]

    scripted = tmp_path / "net.ts"
    torch.jit.script(net).save(str(scripted))
    p.source.value = "TorchScript file"
    p.path.value = str(scripted)
    for trusted in (False, True):
        p.trust.value = trusted
        w.design.list_btn.click()
        assert "needs an eager nn.Module" in w.status.text(), w.status.text()
