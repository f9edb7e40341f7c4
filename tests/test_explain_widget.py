"""The Explain dock widget, driven like a user would (needs Xvfb: see scripts/test.sh)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xai._qt.explain_widget import ExplainWidget
from napari_xai._sample_data import demo_brain

TIMEOUT_MS = 120_000


def add_demo(viewer):
    for data, kwargs, kind in demo_brain():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return viewer.layers["demo brain"]


def run_and_wait(qtbot, widget):
    widget.run_btn.native.click()  # same path as a click
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def test_demo_explanation_through_the_widget(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    brain = add_demo(viewer)
    widget = ExplainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.inputs.value == ["demo brain"]
    assert "atrophy" in widget.target.choices, "demo class names are offered as targets"
    widget.method.value = "input-x-gradient"
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("predicted atrophy"), widget.status.value
    pos = viewer.layers["demo · input-x-gradient · atrophy (+)"]
    neg = viewer.layers["demo · input-x-gradient · atrophy (−)"]
    for layer in (pos, neg):
        assert layer.data.shape == brain.data.shape
        np.testing.assert_allclose(layer.affine.affine_matrix, brain.affine.affine_matrix)
        assert layer.metadata["provenance"]["method"] == "input-x-gradient"
    signed = pos.metadata["xai_relevance"]
    assert (signed > 0).any() and (signed < 0).any(), "input x gradient is signed"
    np.testing.assert_allclose(pos.data, np.clip(signed, 0, None))
    np.testing.assert_allclose(neg.data, np.clip(-signed, 0, None))
    assert pos.data.max() > 0 and neg.data.max() > 0

    # the same settings again update the layers instead of piling up new ones
    n = len(viewer.layers)
    run_and_wait(qtbot, widget)
    assert len(viewer.layers) == n


def test_method_parameters_come_from_the_registry(make_napari_viewer):
    from napari_xai.core.methods.catalogue import get_method

    viewer = make_napari_viewer()
    widget = ExplainWidget(viewer)
    for name in ("integrated-gradients", "occlusion", "grad-cam", "lrp-gamma"):
        widget.method.value = name
        assert [w.name for w in widget.params] == [p.name for p in get_method(name).params]


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    add_demo(viewer)
    widget = ExplainWidget(viewer)
    widget.method.value = "occlusion"
    for w in widget.params:
        if w.name in ("window", "stride"):
            w.value = "2,2,2"
    n = len(viewer.layers)
    widget.run_btn.native.click()
    qtbot.waitUntil(lambda: widget._progress[0] > 0.02, timeout=TIMEOUT_MS)
    widget.cancel_btn.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert len(viewer.layers) == n
    assert "cancelled" in widget.status.value


def test_2d_layer_is_not_offered_and_run_says_what_to_do(make_napari_viewer):
    # issue 12: only volumes are offered as inputs (a 2D image used to be offered, then refused)
    viewer = make_napari_viewer()
    viewer.add_image(np.ones((16, 16), np.float32), name="slice")
    widget = ExplainWidget(viewer)
    assert widget.inputs.choices == ()
    widget.run_btn.native.click()
    assert not widget.busy
    assert widget.status.value.startswith("error: select at least one input image layer")
    assert len(viewer.layers) == 1


def test_layers_are_touched_only_on_the_main_thread(make_napari_viewer_proxy, qtbot):
    # the proxy raises if a worker thread touches a layer
    viewer = make_napari_viewer_proxy()
    add_demo(viewer)
    widget = ExplainWidget(viewer)
    widget.method.value = "saliency"
    run_and_wait(qtbot, widget)
    assert "demo · saliency · atrophy (+)" in viewer.layers, widget.status.value


SEG_NET = '''
import torch
from torch import nn


class SegNet(nn.Module):
    """Two-class logit map: class 1 wherever the input is bright."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1)
            self.conv.bias[:] = torch.tensor([0.5, -0.5])

    def forward(self, x):
        return self.conv(x)
'''


def test_segmentation_model_with_labels_mask(make_napari_viewer, qtbot, tmp_path):
    import torch

    py = tmp_path / "seg_net.py"
    py.write_text(SEG_NET)
    ns: dict = {}
    exec(compile(SEG_NET, str(py), "exec"), ns)
    weights = tmp_path / "seg.pt"
    torch.save(ns["SegNet"]().state_dict(), weights)

    viewer = make_napari_viewer()
    vol = np.zeros((12, 12, 12), np.float32)
    vol[2:5, 2:5, 2:5] = 1.0  # bright block: predicted class 1
    vol[8:11, 8:11, 8:11] = 1.0  # a second bright block, outside the user's mask
    viewer.add_image(vol, name="scan")
    mask = np.zeros((12, 12, 12), np.uint8)
    mask[1:6, 1:6, 1:6] = 1
    viewer.add_labels(mask, name="roi")
    widget = ExplainWidget(viewer)
    widget.source.value = "Python file + weights"
    widget.path.value = str(py)
    widget.class_name.value = "SegNet"
    widget.weights.value = str(weights)
    widget.method.value = "input-x-gradient"
    widget.segmentation.value = True
    assert not widget.mask.native.isHidden() and "roi" in widget.mask.choices
    widget.mask.value = "roi"
    widget.target.value = "predicted"
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("predicted"), widget.status.value
    seg_layer = viewer.layers["SegNet · predicted segmentation"]
    assert seg_layer.data[3, 3, 3] == 1 and seg_layer.data[0, 0, 0] == 0
    pos = [ly for ly in viewer.layers if ly.name.endswith("(+)")][0]
    signed = pos.metadata["xai_relevance"]
    # hand-computed: score = sum over the mask of (x - 0.5) for class 1, so input x gradient = x inside the mask
    assert signed[3, 3, 3] == pytest.approx(1.0, abs=1e-5)
    assert signed[9, 9, 9] == 0.0, "the bright block outside the mask does not contribute"


def test_attention_gates_appear_as_hidden_layers(make_napari_viewer, qtbot, tmp_path):
    """Each gate of a hand-set AttentionUnet is one hidden layer holding its coefficient sigmoid(b) (test_attention)."""
    from test_attention import INNER, OUTER, attention_bundle, coefficient

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((16, 16, 16)).astype(np.float32), name="scan")
    mask = np.zeros((16, 16, 16), np.uint8)
    mask[4:12, 4:12, 4:12] = 1
    viewer.add_labels(mask, name="roi")
    widget = ExplainWidget(viewer)
    widget.source.value = "MONAI bundle folder"
    widget.path.value = str(attention_bundle(tmp_path, (1.0, -0.5)))
    widget.method.value = "attention-gates"
    widget.segmentation.value = True
    widget.mask.value = "roi"
    run_and_wait(qtbot, widget)
    # the model predicts only background; the error offers the bundle's classes as targets right away
    assert "choose a target class" in widget.status.value and "organ" in widget.target.choices
    widget.target.value = "organ"
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("predicted"), widget.status.value
    for point, b in ((OUTER, 1.0), (INNER, -0.5)):
        gate = [ly for ly in viewer.layers if f"· at {point}" in ly.name]
        assert len(gate) == 1 and gate[0].name.endswith("(+)"), [ly.name for ly in gate]  # no empty (−) layer
        assert not gate[0].visible and gate[0].metadata["xai_explain"] == {"kind": "intermediate", "point": point}
        np.testing.assert_allclose(gate[0].data, coefficient(b), atol=1e-6)


def test_settings_of_a_result_layer_make_it_again(make_napari_viewer, qtbot):
    """Load a result's recorded settings into the widget (after changing them) and get the same map again."""
    viewer = make_napari_viewer()
    add_demo(viewer)
    widget = ExplainWidget(viewer)
    widget.method.value = "grad-cam"
    widget.target.value = "healthy"
    relu = [w for w in widget.params if w.name == "relu_attributions"][0]
    relu.value = False
    run_and_wait(qtbot, widget)
    name = "demo · grad-cam · healthy (+)"
    first = viewer.layers[name].metadata["xai_relevance"].copy()
    assert name in widget.settings_from.choices
    assert "demo · grad-cam · healthy (−)" not in widget.settings_from.choices  # one entry per result
    # the user moves on to other settings ...
    widget.method.value = "saliency"
    widget.target.value = "atrophy"
    widget.settings_from.value = name
    widget.settings_btn.native.click()
    assert "settings of" in widget.status.value and "press Run" in widget.status.value
    params = {w.name: w.value for w in widget.params}
    assert widget.method.value == "grad-cam" and widget.target.value == "healthy"
    assert params["relu_attributions"] is False and params["layer"] == "features.6"  # the resolved default, pinned
    viewer.layers.remove(name)
    run_and_wait(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers[name].metadata["xai_relevance"], first)
    # a layer without a record: one line, nothing changed
    viewer.add_image(np.zeros((4, 4, 4), np.float32), name="plain", metadata={"provenance": {"kind": "clusters"}})
    widget.use_settings("plain")
    assert widget.status.value.startswith("error:") and "'clusters' result" in widget.status.value
    assert widget.method.value == "grad-cam"


def test_grad_cam_layer_choice_shows_the_layer_explain_uses(make_napari_viewer, qtbot):
    """The layer dropdown comes from the registry's 'layer' kind: once a model ran, 'auto' names the layer Grad-CAM
    uses when none is given, which is what explain() itself picks; the default is checked against hooks on the
    demo model (the last Conv3d whose output still has a 3D grid), not against the code under test."""
    import torch

    from napari_xai.core.explain import explain, prepare
    from napari_xai.core.models import load_model
    from napari_xai._layers import volume_from_layers

    viewer = make_napari_viewer()
    brain = add_demo(viewer)
    _, widget = viewer.window.add_plugin_dock_widget("napari-xai", "Explain")
    widget.method.value = "grad-cam"
    layer_w = next(w for w in widget.params if w.name == "layer")
    assert layer_w.native.currentText() == "auto", "no model ran yet: nothing to name"
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("predicted"), widget.status.value
    shown = layer_w.native.currentText()

    model = load_model("demo")
    volume = volume_from_layers([brain])
    used = explain(volume, model, "grad-cam").provenance["params"]["layer"]
    assert shown == f"auto ({used})"

    # independent: forward hooks on every Conv3d of the demo net, in execution order
    x = prepare(volume, model).x
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: seen.append((n, tuple(o.shape))))
             for n, m in model.module.named_modules() if isinstance(m, torch.nn.Conv3d)]
    with torch.no_grad():
        model.module(x)
    for h in hooks:
        h.remove()
    spatial = [n for n, s in seen if len(s) == 5 and np.prod(s[2:]) > 1]
    assert used == spatial[-1]
    offered = [c for c in layer_w.choices if c != "auto"]
    assert set(spatial) <= set(offered), "every Conv3d with a 3D output is offered"
    # the auto entry survives a method switch to another CAM method
    widget.method.value = "grad-cam-plus-plus"
    assert next(w for w in widget.params if w.name == "layer").native.currentText() == f"auto ({used})"
