"""Defaults live in one place, the Param: every method called with Param defaults only
(``Method.run`` with no parameters) gives the same map as through ``explain()``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_xai.core.errors import UserError
from napari_xai.core.explain import explain
from napari_xai.core.methods.catalogue import all_methods
from napari_xai.core.methods.registry import RunContext
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.volumes import Volume

SHAPE = (16, 16, 16)  # two cubes of the region methods' default size 8 per axis


def _model() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(),
        nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(4, 2),
    ).eval()
    # the model grid is the volume grid (no resampling) and the intensities are fed as they are
    spec = ModelSpec(channels=1, class_names=["a", "b"], normalization="none")
    return LoadedModel(module=net, spec=spec, source="test", kind="python", sha256="0" * 64,
                       device=torch.device("cpu"), is_scripted=False)


def _volume() -> Volume:
    rng = np.random.default_rng(1)
    data = rng.random((1, *SHAPE)).astype(np.float32) + 0.5
    return Volume(data=data, affine=np.diag([2.0, 2.0, 2.0, 1.0]), name="v")


@pytest.mark.parametrize("name", [m.name for m in all_methods()])
def test_param_defaults_equal_explain(name):
    model, vol = _model(), _volume()
    method = next(m for m in all_methods() if m.name == name)
    x = torch.from_numpy(vol.data[None].copy())
    with torch.no_grad():
        target = int(model.module(x).argmax())
    try:
        via_explain = explain(vol, model, name, target=target, seed=0)
    except UserError as exc:
        # a method this model cannot serve (attention gates need gates) must refuse the same way directly
        with pytest.raises(UserError) as direct_exc:
            method.run(model.module, x, target, {}, RunContext(grid_affine=vol.affine))
        assert str(direct_exc.value).split(";")[0] == str(exc).split(";")[0]
        assert name == "attention-gates", f"{name} refused the test model: {exc}"
        return
    torch.manual_seed(0)
    direct = method.run(model.module, x, target, {}, RunContext(grid_affine=vol.affine)).relevance
    direct = direct.detach().float().numpy()[0]
    if direct.shape[0] != vol.channels:
        direct = np.repeat(direct[:1], vol.channels, axis=0)
    np.testing.assert_allclose(via_explain.data, direct, rtol=1e-5, atol=1e-6 * float(np.abs(direct).max() + 1e-12))



def test_method_functions_take_no_second_default():
    """A method reads its parameters as parsed (``params["steps"]``); a ``params.get("steps", 32)`` would be a
    second default that can disagree with the Param's."""
    import inspect
    import re

    for m in all_methods():
        src = inspect.getsource(inspect.getmodule(m.fn))
        assert not re.search(r"params\.get\(\s*\"[a-z_]+\"\s*,", src), f"{m.name}: its module has params.get(name, default)"
