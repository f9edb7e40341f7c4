"""``napari-xai lrp-layers`` and the explain options of ``cli/lrp.py`` (with their own parser)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from model_factory import nifti, python_source
from napari_xai.cli.lrp import add_explain_options, add_subcommand, explain_options, write_extras
from napari_xai.core.errors import UserError


def parser():
    p = argparse.ArgumentParser(prog="napari-xai")
    sub = p.add_subparsers(dest="command", required=True)
    add_subcommand(sub)
    ex = sub.add_parser("explain")
    ex.add_argument("--method", default="lrp")
    ex.add_argument("--overwrite", action="store_true")
    add_explain_options(ex)
    return p


def test_lrp_layers_lists_execution_order_and_writes_a_config(tmp_path, capsys):
    from napari_xai.core.lrp import load_config

    source, weights, kwargs = python_source(tmp_path / "m")
    vol = nifti(tmp_path / "v.nii.gz", shape=(8, 8, 8))
    out = tmp_path / "c.json"
    args = parser().parse_args(["lrp-layers", str(vol), "--model", source, "--weights", str(weights),
                                "--model-kwargs", kwargs, "--write-config", str(out)])
    assert args.func(args) == 0
    text = capsys.readouterr().out
    rows = [line.split()[1] for line in text.splitlines()[1:] if line.strip() and not line.startswith("wrote")]
    assert rows == ["conv1", "act1", "conv2", "act2", "pool", "fc"]
    cfg = load_config(out)
    assert [(s.start, s.end, s.preset) for s in cfg.segments] == [
        ("conv1", "conv1", "lrp-gamma-rule"), ("conv2", "conv2", "lrp-epsilon"), ("fc", "fc", "lrp-0")]
    with pytest.raises(UserError, match="exists"):
        args.func(args)


def test_explain_options_and_segmentation_output(tmp_path):
    from napari_xai.core.explain import explain
    from napari_xai.core.models import LoadedModel, ModelSpec
    from napari_xai.core.volumes import Volume, load_nifti

    mask = nifti(tmp_path / "mask.nii.gz", shape=(4, 4, 4))
    args = parser().parse_args(["explain", "--config", "c.json", "--mask", str(mask), "--output-index", "1",
                                "--out-segmentation", str(tmp_path / "seg.nii.gz")])
    params, kwargs = explain_options(args, None)
    assert params == {"config": "c.json"} and kwargs["segmentation"] and kwargs["output_index"] == 1
    assert kwargs["mask"].shape == (4, 4, 4)
    bad = parser().parse_args(["explain", "--method", "saliency", "--config", "c.json"])
    with pytest.raises(UserError, match="--config is for --method lrp"):
        explain_options(bad, None)
    with pytest.raises(SystemExit):
        parser().parse_args(["explain", "--point", "1,2"])

    seg_net = torch.nn.Conv3d(1, 2, 1).eval()
    with torch.no_grad():
        seg_net.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1, 1))
        seg_net.bias.zero_()
    model = LoadedModel(module=seg_net, spec=ModelSpec(), source="t", kind="python", sha256="0" * 64,
                        device=torch.device("cpu"), is_scripted=False)
    data = np.zeros((1, 4, 4, 4), np.float32)
    data[0, :2] = 1.0
    vol = Volume(data=data, affine=np.eye(4), name="v")
    args = parser().parse_args(["explain", "--method", "saliency", "--segmentation",
                                "--out-segmentation", str(tmp_path / "seg.nii.gz")])
    params, kwargs = explain_options(args, vol)
    rel = explain(vol, model, "saliency", params=params, **kwargs)
    paths = write_extras(args, rel)
    seg = load_nifti(paths[0]).data[0]
    np.testing.assert_array_equal(seg, (data[0] > 0).astype(np.float32))
    assert json.loads(paths[1].read_text())["kind"] == "segmentation"
