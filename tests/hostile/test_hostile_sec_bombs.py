"""Issue 10 item 4: configs that never finish. ``@`` reference bombs, YAML alias bombs and JSON nested 100,000
deep each give one line (exit 2) instead of a hang or a RecursionError traceback.

The subprocess cases use a generous timeout (start-up alone takes seconds on a loaded machine): the point is that
they end. The in-process cases check the bounded loader and resolver themselves finish within a second of CPU
time (process time, so that other load on the machine does not count).
"""

from __future__ import annotations

import json
import time

import pytest
from _sec_helpers import assert_user_error, bundle, nifti, run, snapshot

DEEP = 100_000
NET = {"_target_": "DenseNet121", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}


def reference_bomb(levels: int = 12, width: int = 10) -> dict:
    """``l{k}`` is a list of ``width`` references to ``l{k-1}``: ``@l12`` names 10**12 values (only 12 references
    deep, so a limit on reference depth alone does not stop it)."""
    config = {"l0": [1]}
    for k in range(1, levels + 1):
        config[f"l{k}"] = [f"@l{k - 1}"] * width
    return config


def yaml_alias_bomb(levels: int = 12, width: int = 10) -> str:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for k in range(1, levels + 1):
        lines.append(f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * width)}]")
    lines.append(f"preprocessing: {{_target_: Compose, transforms: [*a{levels}]}}")
    lines.append("network_def: {_target_: DenseNet121, spatial_dims: 3, in_channels: 1, out_channels: 2}")
    return "\n".join(lines) + "\n"


def _explain(tmp_path, model, *needles, extra_args=()):
    vol = nifti(tmp_path / "t1.nii.gz")
    (tmp_path / "out").mkdir(exist_ok=True)
    before = snapshot(tmp_path, skip=("out",))
    res = run("explain", vol, "--model", model, "--method", "saliency", "--out", tmp_path / "out" / "r.nii.gz",
              *extra_args, cwd=tmp_path, timeout=120)
    assert_user_error(res, *needles)
    assert snapshot(tmp_path, skip=("out",)) == before
    assert not any((tmp_path / "out").iterdir())


def test_a_reference_bomb_in_network_def_ends_in_one_line(tmp_path):
    b = bundle(tmp_path / "bundle", {**NET, "block_config": "@l12"}, reference_bomb())
    _explain(tmp_path, b, "expands to more than")


def test_json_nested_100000_deep_in_the_bundle_config_ends_in_one_line(tmp_path):
    b = bundle(tmp_path / "bundle", NET)
    (b / "configs" / "inference.json").write_text('{"network_def": ' + json.dumps(NET)[:-1] + ', "x": '
                                                  + "[" * DEEP + "]" * DEEP + "}}")
    _explain(tmp_path, b, "nests deeper than")


def test_a_yaml_alias_bomb_in_preprocessing_ends_in_one_line(tmp_path):
    b = bundle(tmp_path / "bundle", None, yaml_text=yaml_alias_bomb())
    _explain(tmp_path, b, "expands to more than")


def test_deep_metadata_json_ends_in_one_line(tmp_path):
    b = bundle(tmp_path / "bundle", NET)
    (b / "configs" / "metadata.json").write_text('{"x": ' + "[" * DEEP + "]" * DEEP + "}")
    _explain(tmp_path, b, "metadata", "nests deeper than")


def test_deep_model_kwargs_end_in_one_line(tmp_path):
    py = tmp_path / "net.py"
    py.write_text("from torch import nn\n\nclass Net(nn.Module):\n    def __init__(self, **kw):\n        super().__init__()\n")
    kwargs = tmp_path / "kwargs.json"  # (too long for one command-line argument; a .json file is accepted too)
    kwargs.write_text('{"a": ' + "[" * DEEP + "]" * DEEP + "}")
    _explain(tmp_path, f"{py}:Net", "--model-kwargs", "nests deeper than", extra_args=("--model-kwargs", kwargs))


def test_a_deep_sidecar_for_reproduce_ends_in_one_line(tmp_path):
    side = tmp_path / "rel.json"
    side.write_text('{"method": "saliency", "params": ' + "[" * DEEP + "]" * DEEP + "}")
    before = snapshot(tmp_path)
    res = run("reproduce", side, cwd=tmp_path, timeout=120)
    assert_user_error(res, "sidecar")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- the bounded functions themselves


def test_the_resolver_stops_a_reference_bomb_within_a_second():
    from napari_xai.core.errors import UserError
    from napari_xai.core.models import resolve_config_value

    config = reference_bomb(levels=14)
    t0 = time.process_time()
    with pytest.raises(UserError, match="expands to more than"):
        resolve_config_value(config, "@l14", "preprocessing")
    assert time.process_time() - t0 < 1.0
    # a reference cycle, and one that only nests through a list, stop on depth
    for cyclic in ({"a": "@b", "b": "@a"}, {"a": ["@a"]}):
        with pytest.raises(UserError, match="nests deeper than"):
            resolve_config_value(cyclic, "@a", "network_def")
    # honest references still resolve, and nothing is built
    assert resolve_config_value({"n": 3, "net": {"_target_": "X", "k": "@n"}}, "@net", "x") == {"_target_": "X", "k": 3}


def test_the_loader_stops_a_yaml_alias_bomb_and_deep_json_within_a_second(tmp_path):
    from napari_xai.core.errors import UserError
    from napari_xai.core.models import read_config

    (tmp_path / "inference.yaml").write_text(yaml_alias_bomb(levels=20))
    (tmp_path / "inference.json").write_text("[" * DEEP + "]" * DEEP)
    for name, needle in (("inference.yaml", "expands to more than"), ("inference.json", "nests deeper than")):
        t0 = time.process_time()
        with pytest.raises(UserError, match=needle):
            read_config(tmp_path / name, "bundle config")
        assert time.process_time() - t0 < 1.0
