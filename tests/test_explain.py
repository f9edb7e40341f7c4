"""The explain pipeline against hand-computed facts on a linear model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_xai.core.errors import Cancelled, UserError
from napari_xai.core.explain import explain, normalize, resolve_target
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume


class Linear(torch.nn.Module):
    """logit_1 = sum(w * x), logit_0 = 0: input x gradient is exactly w * x."""

    def __init__(self, w: np.ndarray):
        super().__init__()
        self.w = torch.nn.Parameter(torch.from_numpy(w.astype(np.float32)))

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1, keepdim=True)
        return torch.cat([torch.zeros_like(s), s], dim=1)


def make(shape=(6, 5, 4), model_shape=None, channels=1, names=("healthy", "sick")):
    rng = np.random.default_rng(0)
    grid = model_shape or shape
    w = rng.normal(size=(1, channels, *grid))
    model = LoadedModel(
        module=Linear(w).eval(), spec=ModelSpec(input_shape=model_shape, channels=channels, class_names=list(names)),
        source="test", kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False,
    )
    aff = np.diag([2.0, 3.0, 1.5, 1.0])
    aff[:3, 3] = [10, -20, 5]
    vol = Volume(data=rng.normal(size=(channels, *shape)).astype(np.float32) + 1, affine=aff, name="v")
    return vol, model, w


def test_input_x_gradient_is_w_times_x_on_the_input_grid():
    vol, model, w = make()
    rel = explain(vol, model, "input-x-gradient", target="sick")
    np.testing.assert_allclose(rel.data, (w[0] * vol.data), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(rel.affine, vol.affine)
    assert rel.provenance["grid"]["resampled"] is False
    assert rel.target_name == "sick" and rel.provenance["target"]["index"] == 1


def test_resampled_relevance_returns_to_input_grid_and_keeps_total():
    vol, model, w = make(shape=(12, 10, 8), model_shape=(6, 5, 4))
    rel = explain(vol, model, "input-x-gradient", target=1)
    assert rel.data.shape == vol.data.shape
    np.testing.assert_array_equal(rel.affine, vol.affine)
    assert rel.provenance["grid"] == {"resampled": True, "model_shape": [6, 5, 4]}
    # linear model: total input x gradient on the model grid equals the logit f(x_model)
    logit = rel.provenance["relevance"]["sum"]
    from napari_xai.core.geometry import resize

    xm = resize(vol.data, (6, 5, 4))
    expected = float((w[0] * xm).sum())
    assert abs(logit - expected) / abs(expected) < 0.05


def test_predicted_target_is_default():
    vol, model, w = make()
    rel = explain(vol, model, "saliency")
    logit = float((w[0] * vol.data).sum())
    assert rel.predicted == (1 if logit > 0 else 0)
    assert rel.target == rel.predicted
    assert abs(sum(rel.probabilities.values()) - 1) < 1e-6


def test_resolve_target():
    names = ["healthy", "Atrophy"]
    assert resolve_target(None, names, 1) == 1
    assert resolve_target("predicted", names, 0) == 0
    assert resolve_target("atrophy", names, 0) == 1
    assert resolve_target("0", names, 1) == 0
    with pytest.raises(UserError, match="out of range"):
        resolve_target(2, names, 0)
    with pytest.raises(UserError, match="unknown target"):
        resolve_target("tumour", names, 0)


def test_normalize_hand_computed():
    x = np.array([[[[1.0, 3.0]]]], dtype=np.float32)  # (1,1,1,2)
    np.testing.assert_allclose(normalize(x, "zscore")[0, 0, 0], [-1, 1])
    np.testing.assert_allclose(normalize(x, "minmax")[0, 0, 0], [0, 1])
    with pytest.raises(UserError):
        normalize(x, "robust")


def test_cancel_raises_and_returns_nothing():
    vol, model, _ = make()
    with pytest.raises(Cancelled):
        explain(vol, model, "integrated-gradients", should_stop=lambda: True)


def test_nan_voxels_warned_and_relevance_finite():
    vol, model, _ = make()
    vol.data[0, 0, 0, 0] = np.nan
    vol.warnings.append("v has 1 NaN/Inf voxels; ...")
    rel = explain(vol, model, "input-x-gradient", target=1)
    assert np.isfinite(rel.data).all()
    assert any("NaN" in w for w in rel.warnings)
    assert np.isnan(vol.data[0, 0, 0, 0]), "the user's volume must stay unchanged"


def test_channel_mismatch_is_user_error():
    vol, model, _ = make(channels=1)
    vol2 = Volume(data=np.concatenate([vol.data, vol.data]), affine=vol.affine)
    with pytest.raises(UserError, match="expects 1 channel"):
        explain(vol2, model, "saliency")


def test_remembered_prediction_is_used_only_while_input_and_weights_are_unchanged():
    vol, model, w = make()
    calls = []
    model.module.register_forward_hook(lambda m, i, o: calls.append(1))

    def passes(fn):
        before = len(calls)
        out = fn()
        return out, len(calls) - before

    first, n = passes(lambda: explain(vol, model, "saliency", target="sick"))
    assert n == 2  # the prediction and saliency's own pass
    _, n = passes(lambda: explain(vol, model, "saliency", target="sick"))
    assert n == 1  # the same input and weights: the prediction is remembered
    with torch.no_grad():
        model.module.w.mul_(-2.0)  # in-place change of the weights: the remembered prediction is stale
    after, n = passes(lambda: explain(vol, model, "saliency", target="sick"))
    assert n == 2
    np.testing.assert_allclose(after.data, -2.0 * first.data, rtol=1e-5)
    logit = float((-2.0 * w[0] * vol.data).sum())
    assert after.probabilities["sick"] == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-4, abs=1e-6)
    other = Volume(data=vol.data + 1.0, affine=vol.affine, name="v2")
    _, n = passes(lambda: explain(other, model, "saliency", target="sick"))
    assert n == 2  # another input is predicted afresh


def test_explanations_from_several_threads_agree():
    """Widgets explain from worker threads; the remembered predictions are shared safely."""
    from concurrent.futures import ThreadPoolExecutor

    vol, model, w = make()
    others = [Volume(data=vol.data + k, affine=vol.affine, name=f"v{k}") for k in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda v: explain(v, model, "input-x-gradient", target="sick"), others * 3))
    for v, rel in zip(others * 3, results):
        np.testing.assert_allclose(rel.data, w[0] * v.data, rtol=1e-5, atol=1e-6)  # input x gradient = w x, by hand
