"""``napari-xai reproduce``: a relevance map made again from its sidecar.

Facts used: the pipeline is deterministic on the CPU for a fixed seed, so the
same input, model files and recorded settings give the same map voxel for
voxel; a changed file has a different SHA-256; different weights give a
different map.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from model_factory import nifti, python_source, run_cli

from napari_xai.core.errors import UserError
from napari_xai.core.reproduce import compare_maps, explain_arguments


@pytest.fixture
def made(tmp_path, capsys):
    """A relevance file made by 'explain' with a .py model, weights and constructor arguments."""
    src, weights, kwargs = python_source(tmp_path / "net", in_channels=1, classes=3, seed=1)
    vol = nifti(tmp_path / "t1.nii.gz", shape=(10, 12, 10), seed=4)
    out = tmp_path / "rel.nii.gz"
    code, _, err = run_cli(capsys, "explain", vol, "--model", src, "--weights", weights, "--model-kwargs", kwargs,
                           "--method", "smoothgrad", "--param", "samples=3", "--target", "2", "--out", out, "--quiet")
    assert code == 0, err
    return tmp_path, src, weights, vol, out


def test_a_recorded_map_is_made_again_voxel_for_voxel(made, capsys):
    tmp_path, *_ , out = made
    record = json.loads((tmp_path / "rel.nii.gz.xai.json").read_text())
    assert record["model"]["model_kwargs"] == {"in_channels": 1, "classes": 3}
    assert list(record["input"]["sha256"].values())[0] and record["model"]["weights"].endswith("tiny_net.pt")
    new = tmp_path / "again.nii.gz"
    # a sidecar naming a .py model runs its code: that needs --trust-model even though every hash matches
    code, _, err = run_cli(capsys, "reproduce", tmp_path / "rel.nii.gz.xai.json", "--out", new)
    assert code == 2 and "--trust-model" in err and err.count("\n") == 1 and not new.exists()
    code, stdout, err = run_cli(capsys, "reproduce", tmp_path / "rel.nii.gz.xai.json", "--out", new, "--trust-model")
    assert code == 0, err
    assert "checked input" in stdout and "SHA-256 matches" in stdout and "reproduced:" in stdout
    # stochastic SmoothGrad too: the recorded seed makes the same noise
    np.testing.assert_array_equal(np.asarray(nib.load(str(new)).dataobj), np.asarray(nib.load(str(out)).dataobj))
    again = json.loads((tmp_path / "again.nii.gz.xai.json").read_text())
    assert again["comparison"]["max_abs_diff"] == 0.0 and again["target"]["index"] == 2
    # the .nii.gz may be named instead of its sidecar, and from another folder (paths beside the sidecar)
    code, stdout, _ = run_cli(capsys, "reproduce", out, "--trust-model")
    assert code == 0 and "reproduced:" in stdout


def test_changed_model_or_input_is_refused_and_a_changed_map_is_reported(made, capsys):
    tmp_path, src, weights, vol, out = made
    saved = weights.read_bytes()
    net = torch.load(weights, weights_only=True)
    torch.save({k: v + 0.5 for k, v in net.items()}, weights)
    code, _, err = run_cli(capsys, "reproduce", tmp_path / "rel.nii.gz.xai.json", "--trust-model")
    assert code == 2 and "model files changed" in err and "--allow-changed-model" in err and err.count("\n") == 1
    code, stdout, _ = run_cli(capsys, "reproduce", tmp_path / "rel.nii.gz.xai.json", "--allow-changed-model", "--trust-model")
    assert code == 3 and "NOT reproduced" in stdout and "CHANGED" in stdout
    weights.write_bytes(saved)
    img = nib.load(str(vol))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) * 2.0, img.affine), str(vol))
    code, _, err = run_cli(capsys, "reproduce", tmp_path / "rel.nii.gz.xai.json", "--trust-model")
    assert code == 2 and "input file" in err and "changed" in err and "--input" in err
    assert np.asarray(nib.load(str(out)).dataobj).any()  # the recorded map is never touched


def test_paths_are_also_found_beside_the_sidecar(made, capsys, monkeypatch):
    tmp_path, *_ = made
    record = json.loads((tmp_path / "rel.nii.gz.xai.json").read_text())
    record["input"]["files"] = ["t1.nii.gz"]  # relative to the sidecar's folder
    record["input"]["sha256"] = {"t1.nii.gz": list(json.loads((tmp_path / "rel.nii.gz.xai.json").read_text())["input"]["sha256"].values())[0]}
    record["output"] = "rel.nii.gz"
    (tmp_path / "moved.json").write_text(json.dumps(record))
    monkeypatch.chdir(tmp_path.parent)
    code, stdout, err = run_cli(capsys, "reproduce", os.path.join(tmp_path.name, "moved.json"), "--trust-model")
    assert code == 0, err


def test_lrp_uses_the_recorded_configuration_when_its_file_is_gone(tmp_path, capsys):
    from napari_xai.core.lrp import LrpConfig, save_configs
    from napari_xai.core.lrp import preset_params

    src, weights, kwargs = python_source(tmp_path / "net", seed=2)
    vol = nifti(tmp_path / "t1.nii.gz", shape=(10, 10, 10))
    cfg = save_configs(tmp_path / "cfg.json", [LrpConfig(name="eps", default=preset_params("lrp-epsilon", epsilon=0.1))])
    out = tmp_path / "lrp.nii.gz"
    code, _, err = run_cli(capsys, "explain", vol, "--model", src, "--weights", weights, "--model-kwargs", kwargs,
                           "--method", "lrp", "--config", cfg, "--out", out, "--quiet")
    assert code == 0, err
    cfg.unlink()
    code, stdout, err = run_cli(capsys, "reproduce", tmp_path / "lrp.nii.gz.xai.json", "--trust-model")
    assert code == 0 and "reproduced:" in stdout, err


def test_segmentation_mask_file_is_recorded_and_a_drawn_mask_must_be_given(tmp_path, capsys):
    from test_attention import attention_bundle

    bundle = attention_bundle(tmp_path, (0.3, -0.2))
    vol = nifti(tmp_path / "t1.nii.gz", shape=(16, 16, 16))
    mask = tmp_path / "roi.nii.gz"
    nib.save(nib.Nifti1Image(np.pad(np.ones((6, 6, 6), np.uint8), 5), np.eye(4)), str(mask))
    out = tmp_path / "seg.nii.gz"
    code, _, err = run_cli(capsys, "explain", vol, "--model", bundle, "--method", "input-x-gradient", "--mask", mask,
                           "--target", "organ", "--out", out, "--quiet")
    assert code == 0, err
    record = json.loads((tmp_path / "seg.nii.gz.xai.json").read_text())
    assert record["segmentation"]["mask_file"] == str(mask.resolve())
    code, stdout, err = run_cli(capsys, "reproduce", tmp_path / "seg.nii.gz.xai.json")
    assert code == 0 and "checked mask" in stdout and "SHA-256 matches" in stdout, err
    saved = mask.read_bytes()
    nib.save(nib.Nifti1Image(np.pad(np.ones((4, 4, 4), np.uint8), 6), np.eye(4)), str(mask))  # the mask changed
    code, _, err = run_cli(capsys, "reproduce", tmp_path / "seg.nii.gz.xai.json")
    assert code == 2 and "target mask" in err and "changed" in err
    mask.write_bytes(saved)
    del record["segmentation"]["mask_file"]  # as from a mask drawn in napari
    (tmp_path / "drawn.json").write_text(json.dumps(record))
    code, _, err = run_cli(capsys, "reproduce", tmp_path / "drawn.json")
    assert code == 2 and "--mask" in err and err.count("\n") == 1
    code, stdout, err = run_cli(capsys, "reproduce", tmp_path / "drawn.json", "--mask", mask)
    assert code == 0 and "reproduced:" in stdout, err


def test_records_that_are_not_relevance_maps_are_refused():
    with pytest.raises(UserError, match="'clusters' result.*--params-from"):
        explain_arguments({"kind": "clusters"})
    with pytest.raises(UserError, match="no 'method'"):
        explain_arguments({"kind": "relevance"})


def test_compare_maps_by_hand():
    a = np.array([[0.0, 1.0, -2.0]])
    c = compare_maps(a + np.array([[0.0, 0.0, 1e-5]]), a)
    assert c["max_abs_diff"] == pytest.approx(1e-5) and c["relative"] == pytest.approx(5e-6) and c["reproduced"]
    c = compare_maps(-a, a)
    assert c["pearson"] == pytest.approx(-1.0) and c["relative"] == pytest.approx(2.0) and not c["reproduced"]
    with pytest.raises(UserError, match="shape"):
        compare_maps(a, a.T)


def test_a_map_saved_from_napari_is_signed_and_can_be_made_again(made, capsys):
    """napari's writer on a relevance (+) layer writes the whole signed map and the explain record itself."""
    from napari_xai._layers import relevance_layer_data
    from napari_xai._writer import write_image
    from napari_xai.core.explain import explain
    from napari_xai.core.models import load_model
    from napari_xai.core.volumes import load_nifti

    tmp_path, src, weights, vol, out = made
    model = load_model(src, weights=weights, model_kwargs='{"in_channels": 1, "classes": 3}')
    rel = explain(load_nifti(vol), model, "input-x-gradient", target=1)
    assert (rel.data < 0).any() and (rel.data > 0).any()
    data, meta, _ = relevance_layer_data(rel)[0]  # the (+) layer: only the positive part is shown
    saved = tmp_path / "saved.nii.gz"
    write_image(str(saved), data, meta)
    np.testing.assert_allclose(np.asarray(nib.load(str(saved)).dataobj), rel.data[0], rtol=1e-6)
    side = json.loads((tmp_path / "saved.nii.gz.xai.json").read_text())
    assert side["method"] == "input-x-gradient" and side["output"] == "saved.nii.gz" and side["signed_relevance"]
    code, stdout, err = run_cli(capsys, "reproduce", tmp_path / "saved.nii.gz.xai.json", "--trust-model")
    assert code == 0 and "reproduced:" in stdout, err


def test_relative_inputs_are_found_from_another_folder(tmp_path, capsys, monkeypatch):
    src, weights, kwargs = python_source(tmp_path / "net", seed=3)
    nifti(tmp_path / "t1.nii.gz", shape=(8, 8, 8))
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "explain", "t1.nii.gz", "--model", src, "--weights", weights, "--model-kwargs",
                           kwargs, "--method", "saliency", "--out", "out/rel.nii.gz", "--quiet")
    assert code == 0, err
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, stdout, err = run_cli(capsys, "reproduce", tmp_path / "out" / "rel.nii.gz.xai.json", "--trust-model")
    assert code == 0 and "reproduced:" in stdout, err


def test_sanity_step_maps_are_not_reproduced_from_the_intact_model():
    with pytest.raises(UserError, match="sanity check with 2 randomized"):
        explain_arguments({"kind": "relevance", "method": "saliency", "sanity": {"randomized_layers": ["fc", "conv"]}})


def test_sidecars_write_null_for_nan():
    from napari_xai.core.provenance import to_json

    assert json.loads(to_json({"r": float("nan"), "a": np.array([1.0, np.inf]), "n": np.float32("nan")})) == {
        "r": None, "a": [1.0, None], "n": None}


def test_a_channel_summed_map_is_compared_with_the_new_sum(tmp_path, capsys):
    """compare and cohort write the relevance summed over channels: reproduce compares sums then."""
    from napari_xai.core.explain import explain
    from napari_xai.core.models import load_model
    from napari_xai.core.provenance import write_sidecar
    from napari_xai.core.volumes import load_nifti, save_nifti, stack_channels

    src, weights, kwargs = python_source(tmp_path / "net", in_channels=2, seed=5)
    a, b = nifti(tmp_path / "a.nii.gz", shape=(8, 8, 8), seed=1), nifti(tmp_path / "b.nii.gz", shape=(8, 8, 8), seed=2)
    vol = stack_channels([load_nifti(a), load_nifti(b)])
    rel = explain(vol, load_model(src, weights=weights, model_kwargs=kwargs), "input-x-gradient", target=0)
    out = tmp_path / "summed.nii.gz"
    save_nifti(out, rel.data.sum(axis=0), rel.affine)
    write_sidecar(out, {**rel.provenance, "output": str(out)})
    code, stdout, err = run_cli(capsys, "reproduce", tmp_path / "summed.nii.gz.xai.json", "--trust-model")
    assert code == 0 and "sums the 2 channels" in stdout and "reproduced:" in stdout, err
