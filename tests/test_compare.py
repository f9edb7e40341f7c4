"""Comparisons across methods, LRP configurations, targets and models (core.compare).

Independent facts: on a bias-free linear model ``y_c = sum_i W[c, i] x_i`` both
input x gradient and LRP-0 give exactly ``R_i = W[c, i] x_i`` (hand-computed
from the weights), so every cell of a (what x target x model) product is known
in advance; labels and the common colour limit are checked on hand-made cases.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xai.core.compare import Item, cell_limits, common_limit, label_items, plan, run_comparison
from napari_xai.core.errors import Cancelled, UserError
from napari_xai.core.lrp import LrpConfig, Segment
from napari_xai.core.lrp import preset_params
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume

SHAPE = (4, 5, 3)


class LinearNet(nn.Module):
    def __init__(self, weight: np.ndarray, layer: str = "fc"):
        super().__init__()
        self.flat = nn.Flatten()
        lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(weight))
        setattr(self, layer, lin)
        self._layer = layer

    def forward(self, x):
        return getattr(self, self._layer)(self.flat(x))


def loaded(weight, layer="fc", name="m", classes=("healthy", "sick")):
    return LoadedModel(module=LinearNet(weight, layer).eval(),
                       spec=ModelSpec(channels=1, class_names=list(classes or ())),
                       source=name, kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


@pytest.fixture
def setup():
    rng = np.random.default_rng(3)
    n = int(np.prod(SHAPE))
    wa = rng.normal(size=(2, n)).astype(np.float32)
    wb = rng.normal(size=(2, n)).astype(np.float32)
    x = (rng.random((1, *SHAPE)) + 0.5).astype(np.float32)
    vol = Volume(data=x, affine=np.diag([2.0, 2.0, 2.0, 1.0]), name="t1")
    return vol, {"A": loaded(wa, name="A"), "B": loaded(wb, "dense", name="B")}, {"A": wa, "B": wb}


def test_plan_is_the_product_of_the_axes_and_labels_name_what_varies():
    items = plan([("config", "z"), ("method", "saliency")], targets=[0, "sick"], models=["A"])
    assert [(i.name, i.target, i.model) for i in items] == [
        ("z", 0, "A"), ("saliency", 0, "A"), ("z", "sick", "A"), ("saliency", "sick", "A")]
    assert label_items(items) == ["z · 0", "saliency · 0", "z · sick", "saliency · sick"]
    one_what = plan([("method", "saliency")], targets=[None, 1], models=["A", "B"])
    assert label_items(one_what) == ["predicted · A", "1 · A", "predicted · B", "1 · B"]
    assert label_items(plan([("method", "saliency")])) == ["saliency"]
    # duplicates collapse; 'predicted' and '' mean the predicted class
    assert len(plan([("method", "a"), ("method", "a")], targets=["predicted", None, ""])) == 1
    with pytest.raises(UserError, match="at least one configuration or method"):
        plan([])
    with pytest.raises(UserError, match=r"5 methods/configurations x 5 targets x 1 models = 25 cells; at most 24"):
        plan([("method", str(i)) for i in range(5)], targets=list(range(5)))


def test_common_limit_is_the_largest_percentile_over_all_maps():
    a = np.array([0.0, 1.0, -2.0, 3.0])
    b = np.array([[0.0, -10.0], [4.0, 0.0]])
    assert common_limit([a, b], percentile=100) == 10.0
    assert common_limit([a], percentile=50) == 2.0  # median of |r| over the non-zero voxels 1, 2, 3
    assert common_limit([np.zeros(3)]) == 1.0
    assert common_limit([np.zeros(3), a], percentile=100) == 3.0  # an all-zero map does not pull the limit to 1
    assert cell_limits([a, b, np.zeros(2)], percentile=100) == [3.0, 10.0, 1.0]


def test_cells_across_methods_configurations_targets_and_models_are_hand_computed(setup):
    vol, models, weights = setup
    lrp0 = LrpConfig(name="lrp-0 everywhere", default=preset_params("lrp-0"))
    items = plan([("config", "lrp-0 everywhere"), ("method", "input-x-gradient")], targets=["healthy", 1],
                 models=["A", "B"])
    seen = []
    cells = run_comparison(vol, items, models, {"lrp-0 everywhere": lrp0},
                           progress=lambda f, m: seen.append(f))
    assert len(cells) == 8
    assert seen == sorted(seen) and seen[-1] == 1.0  # progress covers the whole comparison, monotonically
    for cell in cells:
        t = 0 if cell.item.target == "healthy" else 1
        expected = (weights[cell.item.model][t] * vol.data.ravel()).reshape(vol.data.shape)
        np.testing.assert_allclose(cell.relevance.data, expected, rtol=1e-4, atol=1e-6, err_msg=cell.label)
        assert cell.relevance.target == t
        assert cell.relevance.provenance["model"]["source"] == cell.item.model
    # labels name the explained class, whether it was asked by name or by index
    assert cells[0].label == "lrp-0 everywhere · healthy · A" and cells[-1].label == "input-x-gradient · sick · B"
    # the configuration is recorded in full, not as the temporary library path
    params = cells[0].relevance.provenance["params"]
    assert params["config"] is None and params["configuration"]["name"] == "lrp-0 everywhere"


def test_a_class_name_means_each_models_own_class(setup):
    """Model C orders its classes the other way round, model D names none: 'sick' is C's output 0, D's output 1."""
    vol, models, weights = setup
    wc, wd = weights["A"][::-1].copy(), weights["B"]
    models = {"A": models["A"], "C": loaded(wc, name="C", classes=("sick", "healthy")),
              "D": loaded(wd, name="D", classes=None)}
    cells = run_comparison(vol, plan([("method", "input-x-gradient")], ["sick"], ["A", "C", "D"]), models)
    rows = {c.item.model: c for c in cells}
    assert (rows["A"].relevance.target, rows["C"].relevance.target, rows["D"].relevance.target) == (1, 0, 1)
    for key, w, t in (("A", weights["A"], 1), ("C", wc, 0), ("D", wd, 1)):
        expected = (w[t] * vol.data.ravel()).reshape(vol.data.shape)
        np.testing.assert_allclose(rows[key].relevance.data, expected, rtol=1e-4, atol=1e-6, err_msg=key)
    # A and C explain the same class: their maps are equal; D's position fallback is said in its cell only
    np.testing.assert_allclose(rows["A"].relevance.data, rows["C"].relevance.data, rtol=1e-5)
    # (these test models declare no orientation: that warning is the only one, issue 9)
    others = [w for k in ("A", "C") for w in rows[k].relevance.warnings if not w.startswith("model orientation unknown")]
    assert not others
    assert any("names no class 'sick'" in w for w in rows["D"].relevance.provenance["warnings"])
    # an explicit reference list wins over the first model's names
    cells = run_comparison(vol, plan([("method", "input-x-gradient")], ["sick"], ["D"]), models,
                           classes=["sick", "healthy"])
    assert cells[0].relevance.target == 0


def test_a_failing_cell_is_named_and_cancel_stops(setup):
    vol, models, _ = setup
    only_fc = LrpConfig(name="fc only", segments=[Segment("fc", "fc", preset_params("lrp-epsilon"), "top")])
    items = plan([("config", "fc only")], models=["A", "B"])
    with pytest.raises(UserError, match=r"^comparison cell 'B': .*'fc'"):
        run_comparison(vol, items, models, {"fc only": only_fc})
    with pytest.raises(UserError, match="model 'C' is not loaded"):
        run_comparison(vol, [Item("method", "saliency", None, "C")], models)
    with pytest.raises(UserError, match="no LRP configuration named 'nope'"):
        run_comparison(vol, [Item("config", "nope", None, "A")], models, {"fc only": only_fc})
    with pytest.raises(Cancelled):
        run_comparison(vol, plan([("method", "saliency")], models=["A"]), models, should_stop=lambda: True)
