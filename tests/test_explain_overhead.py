"""explain()'s fixed costs (issue 13): the prediction comes from the method's own forward pass when it can, and
nothing a user sees changes -- relevance, prediction, target, warnings are the same as with a separate pass."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xai.core import explain as explain_mod
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
    explain_mod._PREDICTIONS = None
    if classifiers:
        explain_mod._CLASSIFIERS = None


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
