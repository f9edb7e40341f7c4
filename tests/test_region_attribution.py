"""Region ablation, LIME and KernelSHAP over cubes and atlas regions, against hand-computed cases and axioms.

* Linear model ``y = W x`` (bias-free, zero baseline): removing cube m lowers
  the score by ``sum_{i in m} W_i x_i`` exactly, LIME's linear surrogate and the
  Shapley values are those same numbers.
* Product model ``y = s_A * s_B`` (s = sum of the input over cube A, B) with
  x = 1 on cubes of 8 voxels: f(coalition) = 64 z_A z_B, so the Shapley values
  are 32 for A and B and 0 for the other cubes (symmetry, dummy), while
  ablating A alone removes all 64.
* Efficiency: Shapley values sum to f(x) - f(baseline), also when sampled.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xai.core.errors import UserError
from napari_xai.core.explain import explain
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume

SHAPE = (4, 4, 4)


def loaded(net):
    return LoadedModel(module=net.eval(), spec=ModelSpec(channels=1, class_names=["other", "target"]), source="test",
                       kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


def cube_sums(values: np.ndarray, size: int = 2) -> np.ndarray:
    """Sum of a (4, 4, 4) array over each 2-voxel cube, in the cube order i-major (as the method numbers them)."""
    v = values.reshape(2, size, 2, size, 2, size)
    return v.sum(axis=(1, 3, 5)).ravel()


@pytest.fixture
def linear():
    rng = np.random.default_rng(17)
    w = rng.normal(size=(2, 64)).astype(np.float32)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(w))
    x = (rng.random((1, *SHAPE)) + 0.5).astype(np.float32)
    return loaded(net), Volume(data=x, affine=np.eye(4), name="v"), w, x


@pytest.mark.parametrize("method", ["region-ablation", "lime", "kernel-shap"])
def test_linear_model_gives_each_cube_its_own_contribution(linear, method):
    model, vol, w, x = linear
    rel = explain(vol, model, method, params={"size": 2, **({"samples": 300} if method != "region-ablation" else {})},
                  target="target")
    expected = cube_sums(w[1].reshape(SHAPE) * x[0])
    got = cube_sums(rel.data[0])
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    # piecewise constant: every voxel of a cube carries an eighth of the cube's value
    assert np.allclose(rel.data[0][:2, :2, :2], expected[0] / 8, rtol=1e-3, atol=1e-5)
    feats = rel.provenance["params"]["features"]
    assert rel.provenance["params"]["n_features"] == 8 and len(feats) == 8 and feats[0]["voxels"] == 8
    assert abs(feats[0]["value"]) == pytest.approx(np.abs(expected).max(), rel=1e-3)


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        a = torch.zeros(1, 1, *SHAPE)
        b = torch.zeros(1, 1, *SHAPE)
        a[..., :2, :2, :2] = 1  # cube 0
        b[..., 2:, 2:, 2:] = 1  # cube 7
        self.register_buffer("a", a)
        self.register_buffer("b", b)

    def forward(self, x):
        y = (x * self.a).flatten(1).sum(1) * (x * self.b).flatten(1).sum(1)
        return torch.stack([torch.zeros_like(y), y], dim=1)


def test_exact_shapley_values_of_a_product_and_ablation_differs():
    model = loaded(Product())
    vol = Volume(data=np.ones((1, *SHAPE), np.float32), affine=np.eye(4), name="ones")
    shap = explain(vol, model, "kernel-shap", params={"size": 2, "samples": 254}, target="target")
    assert shap.provenance["params"]["exact"] is True
    values = cube_sums(shap.data[0])
    np.testing.assert_allclose(values, [32, 0, 0, 0, 0, 0, 0, 32], atol=1e-3)
    assert shap.data.sum() == pytest.approx(64.0, rel=1e-4)  # efficiency: f(x) - f(0)
    abl = explain(vol, model, "region-ablation", params={"size": 2}, target="target")
    np.testing.assert_allclose(cube_sums(abl.data[0]), [64, 0, 0, 0, 0, 0, 0, 64], atol=1e-3)


def test_sampled_kernel_shap_keeps_efficiency(linear):
    model, vol, w, x = linear
    rel = explain(vol, model, "kernel-shap", params={"size": 1, "samples": 150}, target="target")  # 64 features
    p = rel.provenance["params"]
    assert p["exact"] is False
    assert rel.data.sum() == pytest.approx(p["score_input"] - p["score_baseline"], rel=1e-4)
    assert p["score_input"] == pytest.approx(float(w[1] @ x.ravel()), rel=1e-5)


def test_atlas_regions_on_the_demo_brain():
    from napari_xai.core.atlas import atlas_on_grid, load_atlas
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.geometry import model_grid_affine
    from napari_xai.core.models import load_model

    model = load_model("demo", device="cpu")
    vol, _ = demo_volume(seed=0, condition=True)
    rel = explain(vol, model, "region-ablation", params={"regions": "harvard-oxford"}, target="atrophy")
    p = rel.provenance["params"]
    names = [f["feature"] for f in p["features"]]
    assert "outside atlas" in names and any("Hippocampus" in n for n in names)
    # on the model grid the map is constant inside every atlas region
    grid = atlas_on_grid(load_atlas("harvard-oxford"), model.spec.input_shape,
                         model_grid_affine(vol.affine, vol.shape, model.spec.input_shape))
    from napari_xai.core.explain import prepare_input
    from napari_xai.core.methods.catalogue import get_method

    x, *_ = prepare_input(vol, model)
    from napari_xai.core.methods.registry import RunContext

    ctx = RunContext(grid_affine=grid.affine)
    out = get_method("region-ablation").run(model.module, x, 1, {"regions": "harvard-oxford", "baseline": "zero"}, ctx).relevance[0, 0]
    lab = np.asarray(grid.labels)
    for v in np.unique(lab)[:20]:
        vals = out.numpy()[lab == v]
        assert np.ptp(vals) == 0.0


def test_bad_region_settings_are_one_line_errors(linear):
    model, vol, w, x = linear
    far = Volume(data=vol.data, affine=np.diag([1.0, 1.0, 1.0, 1.0]) + np.array([[0, 0, 0, 900.0]] * 3 + [[0, 0, 0, 0]]),
                 name="far")
    with pytest.raises(UserError, match=r"atlas Harvard-Oxford \(.*\) does not overlap the volume"):
        explain(far, model, "region-ablation", params={"regions": "harvard-oxford"})
    corner = np.eye(4)
    corner[:3, 3] = (-70.0, -110.0, -70.0)  # inside the atlas's box, outside the brain
    with pytest.raises(UserError, match="the Harvard-Oxford atlas has no region on this input"):
        explain(Volume(data=vol.data, affine=corner, name="corner"), model, "region-ablation",
                params={"regions": "harvard-oxford"})
    big = Volume(data=np.ones((1, 20, 20, 20), np.float32), affine=np.eye(4), name="big")
    with pytest.raises(UserError, match="8000 features are too many"):
        explain(big, loaded(nn.Sequential(nn.Flatten(), nn.Linear(8000, 2))), "region-ablation", params={"size": 1})
