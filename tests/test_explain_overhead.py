"""explain()'s fixed costs (issue 13): the prediction comes from the method's own forward pass when it can, and
nothing a user sees changes -- relevance, prediction, target, warnings are the same as with a separate pass."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xai.core import prediction
from napari_xai.core.explain import explain

METHODS = {  # method -> (params kept small, does its score function run a pass on exactly the input?)
    "saliency": ({}, True),
    "input-x-gradient": ({}, True),
    "guided-backprop": ({}, True),
    "grad-cam": ({}, True),
    "grad-cam-plus-plus": ({}, True),
    "guided-grad-cam": ({}, True),
    "occlusion": ({"window": "8,8,8"}, True),
    "integrated-gradients": ({"steps": 4, "internal_batch_size": 4}, False),
    "deeplift": ({}, False),
    "lrp-epsilon-plus": ({}, False),
}


@pytest.fixture(scope="module")
def demo():
    from napari_xai.core import geometry
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.models import load_model
    from napari_xai.core.volumes import Volume

    vol, _ = demo_volume(seed=3, condition=True)
    model = load_model("demo", device="cpu")
    small = (24, 28, 24)  # keep the test fast: a coarser input, resized to the model grid by explain
    return Volume(data=geometry.resize(vol.data, small), affine=geometry.model_grid_affine(vol.affine, vol.shape, small),
                  name="demo small"), model


def _forget(classifiers: bool) -> None:
    prediction.forget_predictions(classifiers)


def _counting(model):
    calls = []
    handle = model.module.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape)))
    return calls, handle


@pytest.mark.parametrize("method", sorted(METHODS))
def test_prediction_from_the_methods_own_pass(demo, method):
    volume, model = demo
    params, captures = METHODS[method]
    explain(volume, model, method, params=params, target=1)  # warm the per-model caches (layer traces, merges)
    _forget(classifiers=True)
    calls, handle = _counting(model)
    try:
        plain = explain(volume, model, method, params=params, target=1)  # a separate prediction pass first
        n_plain = len(calls)
        calls.clear()
        _forget(classifiers=False)  # a new input for the cache, a model known to return class scores
        reused = explain(volume, model, method, params=params, target=1)
        n_reused = len(calls)
    finally:
        handle.remove()
        _forget(classifiers=True)
    assert np.array_equal(plain.data, reused.data)
    for key in ("prediction", "target", "warnings", "params", "model", "relevance"):
        assert plain.provenance[key] == reused.provenance[key], key
    assert (plain.predicted, plain.target, plain.probabilities) == (reused.predicted, reused.target,
                                                                    reused.probabilities)
    assert n_reused == n_plain - (1 if captures else 0), (n_plain, n_reused)


def test_first_explanation_and_named_targets_still_predict_first(demo):
    """Without a known classifier, or with a class name or "predicted", the prediction pass runs first, as
    before (its errors come before any method work)."""
    volume, model = demo
    _forget(classifiers=True)
    calls, handle = _counting(model)
    try:
        explain(volume, model, "saliency", target=1)
        assert len(calls) == 2  # prediction + the method's pass
        for target in ("atrophy", None):
            calls.clear()
            _forget(classifiers=False)
            rel = explain(volume, model, "saliency", target=target)
            assert len(calls) == 2 and rel.target_name in ("atrophy", "healthy")
    finally:
        handle.remove()
        _forget(classifiers=True)


def test_out_of_range_index_is_the_usual_error(demo):
    from napari_xai.core.errors import UserError

    volume, model = demo
    explain(volume, model, "saliency", target=0)  # the model is now known to return 2 class scores
    _forget(classifiers=False)
    with pytest.raises(UserError, match="out of range: the model has 2 classes"):
        explain(volume, model, "saliency", target=5)
    _forget(classifiers=True)


def test_attention_gates_on_a_segmentation_net_take_the_prediction_from_their_own_pass():
    """The gates' coefficients do not depend on the target (``target_independent``): the first explanation of an
    input runs the model once, not twice, and the prediction, mask, target and map equal those of a run whose
    prediction pass came first (the predicted labels counted by hand from the net's own output)."""
    import torch
    from test_attention import attention_unet, loaded

    from napari_xai.core.volumes import Volume

    net = attention_unet(seed=1)
    model = loaded(net)
    vol = Volume(data=np.random.default_rng(4).normal(size=(1, 16, 16, 16)).astype(np.float32),
                 affine=np.diag([2.0, 2.0, 2.0, 1.0]), name="v")
    calls, handle = _counting(model)
    try:
        _forget(classifiers=True)
        first = explain(vol, model, "attention-gates", segmentation=True)
        n_first = len(calls)
        calls.clear()
        again = explain(vol, model, "attention-gates", segmentation=True)  # the remembered prediction
        n_again = len(calls)
        calls.clear()
        _forget(classifiers=True)
        ig = explain(vol, model, "saliency", segmentation=True)  # not target-independent: predicts first
        n_ig = len(calls)
    finally:
        handle.remove()
        _forget(classifiers=True)
    assert (n_first, n_again, n_ig) == (1, 1, 2)
    np.testing.assert_array_equal(first.data, again.data)
    assert first.provenance["prediction"] == again.provenance["prediction"] == ig.provenance["prediction"]
    assert first.provenance["segmentation"] == ig.provenance["segmentation"]
    assert first.target == ig.target and np.array_equal(first.mask, ig.mask)
    # the prediction by hand: arg-max over the classes of the net's output on the z-scored input
    x = torch.from_numpy((vol.data - vol.data.mean()) / vol.data.std())[None]
    with torch.no_grad():
        labels = net.eval()(x)[0].argmax(0).numpy()
    counts = np.bincount(labels.ravel(), minlength=2)
    assert first.provenance["prediction"]["probabilities"] == pytest.approx(
        dict(zip(first.provenance["model"]["class_names"], counts / counts.sum())), abs=1e-9)


def test_the_in_place_z_score_and_the_uncopied_relevance_change_no_value():
    """``prepare`` z-scores in place and ``to_volume`` may hand back the method's own array: the model input is the
    z-score computed by hand, the input volume is untouched, and two explanations share no memory."""
    import torch

    from napari_xai.core.explain import prepare
    from napari_xai.core.models import load_model
    from napari_xai.core.volumes import Volume

    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(1, 48, 56, 48)).astype(np.float32)  # the model grid: no step moves the map
    kept = data.copy()
    vol = Volume(data=data, affine=np.diag([-4.0, 4.0, 4.0, 1.0]), name="v")  # LAS, the demo model's order
    model = load_model("demo", device="cpu")
    mi = prepare(vol, model, model_spacing="stored")
    assert not mi.grid.resampled
    x = mi.x
    d = data[0].astype(np.float64)
    torch.testing.assert_close(x[0, 0].double(), torch.from_numpy((d - d.mean()) / d.std()), atol=1e-5, rtol=0)
    assert np.array_equal(data, kept)
    a = explain(vol, model, "saliency", target=1, model_spacing="stored")
    b = explain(vol, model, "saliency", target=1, model_spacing="stored")
    assert not np.shares_memory(a.data, b.data) and np.array_equal(a.data, b.data)
    assert np.array_equal(data, kept)
    _forget(classifiers=True)


def test_the_input_digest_is_the_sha256_of_the_bytes_also_when_remembered():
    """The digest of an input equal to the last one is reused; any change -- one voxel, or the last input changed in
    place -- gives the SHA-256 of the new bytes, computed here by hand."""
    import hashlib

    import torch

    def by_hand(t):
        return hashlib.sha256(t.numpy().tobytes()).hexdigest()

    a = torch.randn(1, 1, 8, 9, 10)
    assert prediction._input_digest(a) == by_hand(a)
    same = a.clone()
    assert prediction._input_digest(same) == by_hand(a)  # equal values: the remembered digest, the same hash
    moved = same.clone()
    moved[0, 0, 3, 4, 5] += 1e-3
    assert prediction._input_digest(moved) == by_hand(moved) != by_hand(a)
    before = by_hand(moved)  # ``moved`` is the input remembered now
    moved.mul_(2.0)  # it changes in place (its version moves on) ...
    again = moved.clone()  # ... and the next input equals it now: not the digest of the old values
    assert prediction._input_digest(again) == by_hand(again) != before
    assert prediction._input_digest(a.double()) == by_hand(a.double())  # another dtype, other bytes
