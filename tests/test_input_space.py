"""Explanations follow anatomy, not voxel storage order (issue 9): the model input space.

Independent facts used: nibabel's orientation tools store one image RAS, LAS and PIR (the same world
content), so a model that declares its orientation must give the same prediction and world-space
relevance for all three; a toy model whose correct answer is known (it looks only at the left
hemisphere); scipy resampling (not MONAI) for the "resampled to 2 mm first" reference; IG completeness.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_xai.core.errors import UserError
from napari_xai.core.explain import explain
from napari_xai.core.geometry import ModelGrid, axcodes, resample_to_grid, vox_to_world
from napari_xai.core.input_space import InputSpace, parse_orientation, parse_spacing
from napari_xai.core.models import LoadedModel, ModelSpec, load_model
from napari_xai.core.volumes import Volume

ORDERS = ("RAS", "LAS", "PIR")
WARNING_PIR = "model orientation unknown; the input is stored PIR and was fed as stored"


def stored_as(data: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with voxel order ``codes`` (nibabel's as_reoriented)."""
    img = nib.Nifti1Image(np.asarray(data), np.asarray(affine, dtype=float))
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(img.affine),
                                           nib.orientations.axcodes2ornt(tuple(codes)))
    out = img.as_reoriented(ornt)
    assert "".join(nib.aff2axcodes(out.affine)) == codes
    return np.asarray(out.dataobj), out.affine


def volume_as(vol: Volume, codes: str) -> Volume:
    data, aff = stored_as(vol.data[0], vol.affine, codes)
    return Volume(data=np.asarray(data, dtype=np.float32)[None].copy(), affine=aff, name=f"{vol.name}-{codes}")


def world_r(a: np.ndarray, aff_a: np.ndarray, b: np.ndarray, aff_b: np.ndarray) -> float:
    """Pearson r of two maps after resampling ``a`` onto ``b``'s grid through world coordinates."""
    on_b = resample_to_grid(a, aff_a, b.shape, aff_b, order=1)
    return float(np.corrcoef(on_b.ravel(), np.asarray(b).ravel())[0, 1])


def python_model(module: torch.nn.Module, **spec) -> LoadedModel:
    return LoadedModel(module=module.eval(), spec=ModelSpec(**spec), source="toy", kind="python", sha256="0" * 64,
                       device=torch.device("cpu"), is_scripted=False)


# ---------------------------------------------------------------------------
# declarations
# ---------------------------------------------------------------------------


def test_orientation_and_spacing_values_are_checked():
    assert parse_orientation("las") == "LAS" and parse_orientation("PIR") == "PIR"
    for bad in ("RAR", "RA", "XYZ", "LRS"):
        with pytest.raises(UserError, match="axis codes"):
            parse_orientation(bad)
    assert parse_spacing(2) == (2.0, 2.0, 2.0) and parse_spacing("1,1,2.5") == (1.0, 1.0, 2.5)
    for bad in ("-1", "0", "1,2", "a"):
        with pytest.raises(UserError, match="spacing"):
            parse_spacing(bad)


def test_demo_model_declares_the_space_it_was_trained_in():
    space = load_model("demo", device="cpu").spec.input_space
    # the demo brain is FSL's 2 mm MNI grid stored LAS (core/demo.py), resized to 48x56x48 and z-scored
    assert (space.orientation, space.spacing, space.shape, space.shape_policy, space.normalization) == (
        "LAS", (2.0, 2.0, 2.0), (48, 56, 48), "resize", "zscore")


# ---------------------------------------------------------------------------
# the demo brain and nilearn's MNI template stored RAS, LAS and PIR
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_model():
    return load_model("demo", device="cpu")


def _across_orders(vol: Volume, model, method="integrated-gradients", params=None):
    out = {}
    for codes in ORDERS:
        v = volume_as(vol, codes)
        out[codes] = (v, explain(v, model, method, params=params or {"steps": 8}))
    return out


def _check_same(results, tol=1e-4):
    ref_v, ref = results["RAS"]
    for codes, (v, rel) in results.items():
        assert rel.predicted == ref.predicted, codes
        for name, p in rel.probabilities.items():
            assert abs(p - ref.probabilities[name]) < tol, (codes, name, p, ref.probabilities[name])
        np.testing.assert_array_equal(rel.affine, v.affine)  # the input's own grid and affine
        assert rel.data.shape == v.data.shape
        r = world_r(rel.data[0], rel.affine, ref.data[0], ref.affine)
        assert r > 0.99, (codes, r)
        assert rel.provenance["input_space"]["stored"]["orientation"] == codes
    return ref


def test_demo_model_says_atrophy_for_every_storage_order(demo_model):
    from napari_xai.core.demo import demo_volume

    results = _across_orders(demo_volume(3, True)[0], demo_model)
    ref = _check_same(results)
    assert ref.target_name == "atrophy" and ref.probabilities["atrophy"] > 0.9
    for codes, (_, rel) in results.items():
        assert rel.provenance["prediction"]["name"] == "atrophy", codes
        steps = [s["transform"] for s in rel.provenance["input_space"]["steps"]]
        assert steps == ["Orientation", "Spacing", "Resize", "NormalizeIntensity"], steps
        assert not any("orientation unknown" in w for w in rel.warnings)


def test_nilearn_mni_template_gives_one_prediction_and_map_for_every_storage_order(demo_model):
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=2)  # 99x117x95, stored RAS: another field of view than the demo grid
    vol = Volume(data=np.asarray(img.dataobj, dtype=np.float32)[None], affine=img.affine, name="mni")
    _check_same(_across_orders(vol, demo_model))


# ---------------------------------------------------------------------------
# a toy model whose right answer is known: it looks only at the left hemisphere
# ---------------------------------------------------------------------------


class LeftBlobNet(torch.nn.Module):
    """Declared RAS: logit 1 is the sum of the input over model voxels with world x < 0 (the left half)."""

    def __init__(self, shape):
        super().__init__()
        w = torch.zeros((1, 1, *shape))
        w[:, :, : shape[0] // 2] = 1.0  # RAS: the first half of axis 0 is Left
        self.register_buffer("w", w)

    def forward(self, x):
        s = (x * self.w).flatten(1).sum(1, keepdim=True)
        return torch.cat([torch.zeros_like(s), s], dim=1)


def _two_blobs():
    """A 4 mm RAS grid with one blob in each hemisphere (x = -30 and x = +30 mm)."""
    shape = (24, 28, 20)
    aff = np.diag([4.0, 4.0, 4.0, 1.0])
    aff[:3, 3] = [-46.0, -60.0, -40.0]
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    xyz = vox_to_world(aff, ijk)
    data = np.zeros(shape, np.float32)
    for cx in (-30.0, 30.0):
        data += np.exp(-(((xyz - [cx, -10.0, 5.0]) ** 2).sum(-1)) / (2 * 8.0**2)).astype(np.float32)
    return Volume(data=data[None], affine=aff, name="blobs")


def _centre_x(rel) -> float:
    r = np.clip(rel.data[0], 0, None)
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in r.shape], indexing="ij"), axis=-1)
    return float((vox_to_world(rel.affine, ijk)[..., 0] * r).sum() / r.sum())


def test_left_hemisphere_model_puts_relevance_on_the_left_for_every_storage_order():
    vol = _two_blobs()
    model = python_model(LeftBlobNet((24, 28, 20)), input_shape=(24, 28, 20))
    for codes in ORDERS:
        v = volume_as(vol, codes)
        rel = explain(v, model, "input-x-gradient", target=1, model_orientation="RAS")
        assert _centre_x(rel) < -20.0, (codes, _centre_x(rel))
        assert rel.probabilities == explain(vol, model, "saliency", target=1, model_orientation="RAS").probabilities
        # the same input fed as stored: right for RAS, wrong (on the right) for LAS, which is what issue 9 was
        raw = explain(v, model, "input-x-gradient", target=1, model_orientation="stored")
        assert any("model orientation unknown; the input is stored " + codes in w for w in raw.warnings)
        if codes == "LAS":
            assert _centre_x(raw) > 20.0


# ---------------------------------------------------------------------------
# spacing
# ---------------------------------------------------------------------------


class ConvSum(torch.nn.Module):
    """Any grid: a seeded 3x3x3 convolution, ReLU, mean; two logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))


def test_a_1mm_input_explained_at_2mm_equals_the_input_resampled_to_2mm_first():
    shape = (40, 44, 36)
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    aff[:3, 3] = [-20.0, -22.0, -18.0]
    ijk = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1).astype(float)
    # smooth blobs that vanish towards the border (no edge effects of the convolution's zero padding)
    smooth = sum(a * np.exp(-((ijk - c) ** 2).sum(-1) / (2 * 4.0**2))
                 for a, c in ((2.0, (14, 16, 12)), (1.0, (26, 28, 22)), (-0.5, (20, 12, 20)))).astype(np.float32)
    vol = Volume(data=smooth[None], affine=aff, name="one-mm")
    model = python_model(ConvSum())
    rel1 = explain(vol, model, "integrated-gradients", params={"steps": 16}, target=1, model_orientation="RAS",
                   model_spacing=2.0)
    assert [s["transform"] for s in rel1.provenance["input_space"]["steps"]] == ["Orientation", "Spacing"]
    grid = rel1.provenance["input_space"]["model_grid"]
    # the reference: resampled to the same 2 mm grid first with scipy, then explained as stored at 2 mm
    aff2, shape2 = np.asarray(grid["affine"]), tuple(grid["shape"])
    assert np.allclose(np.abs(np.diag(aff2)[:3]), 2.0)
    from scipy import ndimage

    vox = np.linalg.inv(aff) @ aff2  # 2 mm voxel -> 1 mm voxel; outside the input: the border value, as MONAI
    two = ndimage.affine_transform(smooth, vox[:3, :3], offset=vox[:3, 3], output_shape=shape2, order=1,
                                   mode="nearest").astype(np.float32)
    rel2 = explain(Volume(two[None], aff2, name="two-mm"), model, "integrated-gradients", params={"steps": 16},
                   target=1, model_orientation="RAS", model_spacing=2.0)
    assert abs(rel1.probabilities["class 1"] - rel2.probabilities["class 1"]) < 1e-3
    # same total (relevance is additive: the round trip keeps it) and the same map in world space
    print("spacing: sums", rel1.data.sum(), rel2.data.sum(), "abs", np.abs(rel1.data).sum(), np.abs(rel2.data).sum(),
          "r", world_r(rel1.data[0], rel1.affine, rel2.data[0], rel2.affine))
    assert rel1.data.sum() == pytest.approx(rel2.data.sum(), rel=0.02)
    assert world_r(rel1.data[0], rel1.affine, rel2.data[0], rel2.affine) > 0.95


def test_integrated_gradients_completeness_holds_through_orientation_and_spacing():
    vol = volume_as(_two_blobs(), "PIR")
    model = python_model(ConvSum())
    rel = explain(vol, model, "integrated-gradients", params={"steps": 64}, target=1, model_orientation="LAS",
                  model_spacing=3.0)
    x = rel.provenance["input_space"]
    assert [s["transform"] for s in x["steps"]] == ["Orientation", "Spacing"] and x["model_grid"]["orientation"] == "LAS"
    # completeness on the model grid: sum of IG = f(x) - f(0); the round trip to the 4 mm PIR grid keeps the sum
    from napari_xai.core.explain import prepare

    xin = prepare(vol, model, model_orientation="LAS", model_spacing=3.0).x
    with torch.no_grad():
        delta = float(model.module(xin)[0, 1] - model.module(torch.zeros_like(xin))[0, 1])
    assert rel.data.sum() == pytest.approx(delta, rel=0.05)


def test_model_grid_round_trip_is_exact_for_orientation_only():
    rng = np.random.default_rng(0)
    vol = volume_as(Volume(rng.random((1, 6, 7, 5)).astype(np.float32), np.diag([2.0, 3.0, 4.0, 1.0])), "PIR")
    grid = ModelGrid(InputSpace(orientation="RAS"), vol.affine, vol.shape)
    x = grid.apply(vol.data)
    assert axcodes(grid.affine) == "RAS" and x.shape == (1, 6, 7, 5)
    np.testing.assert_array_equal(grid.to_volume(x, additive=True), vol.data)


# ---------------------------------------------------------------------------
# bundles: preprocessing read as data
# ---------------------------------------------------------------------------

CLASSIFIER_KW = {"in_shape": [1, 16, 16, 16], "classes": 2, "channels": [2, 4], "strides": [2, 2]}


def _bundle(root: Path, transforms: list, state_dict) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {
        "imports": ["$import torch"],
        "image_key": "image",
        "axes": "RAS",
        "network_def": {"_target_": "Classifier", **CLASSIFIER_KW},
        "preprocessing": {"_target_": "Compose", "transforms": transforms},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    meta = {"network_data_format": {"inputs": {"image": {"num_channels": 1}},
                                    "outputs": {"pred": {"channel_def": {"0": "left", "1": "right"}}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    torch.save(state_dict, root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def classifier_weights():
    from monai.networks.nets import Classifier

    torch.manual_seed(0)
    return Classifier(**CLASSIFIER_KW).state_dict()


PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "@image_key"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "@axes"},
    {"_target_": "Resized", "keys": "image", "spatial_size": [16, 16, 16]},
    {"_target_": "NormalizeIntensityd", "keys": "image"},
    {"_target_": "EnsureTyped", "keys": "image"},
]


def test_bundle_preprocessing_is_read_as_data(tmp_path, classifier_weights):
    root = _bundle(tmp_path / "b", PREPROCESSING, classifier_weights)
    space = load_model(root, device="cpu").spec.input_space
    assert (space.orientation, space.spacing, space.shape, space.shape_policy, space.normalization, space.skipped) == (
        "RAS", None, (16, 16, 16), "resize", "zscore", ())
    assert space.order == ("orientation", "shape", "intensity", "spacing")


def test_unknown_or_code_transforms_are_reported_by_name_and_skipped(tmp_path, classifier_weights):
    steps = PREPROCESSING[:3] + [
        {"_target_": "MyHistogramMatchd", "keys": "image"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "$[1.0] * 3"},
    ] + PREPROCESSING[3:]
    root = _bundle(tmp_path / "b", steps, classifier_weights)
    model = load_model(root, device="cpu")
    assert model.spec.input_space.orientation == "RAS" and model.spec.input_space.spacing is None
    assert any("'MyHistogramMatchd'" in n for n in model.notes)
    rng = np.random.default_rng(0)
    rel = explain(Volume(rng.random((1, 12, 12, 12)).astype(np.float32), np.eye(4)), model, "saliency")
    assert any("'MyHistogramMatchd' is not one napari-xai knows; it is not applied" in w for w in rel.warnings)
    assert any("'Spacingd' has arguments that are code" in w for w in rel.warnings)
    assert any("MyHistogramMatchd" in s for s in rel.provenance["input_space"]["applied"]["skipped"])


# ---------------------------------------------------------------------------
# the acceptance test: the napari-xai executable, a bundle with Orientationd and a .py model with
# --model-orientation, on nilearn's MNI template stored RAS, LAS and PIR
# ---------------------------------------------------------------------------

NET_PY = """
from monai.networks.nets import Classifier


class Net(Classifier):
    def __init__(self):
        super().__init__(in_shape=[1, 16, 16, 16], classes=2, channels=[2, 4], strides=[2, 2])
"""


def _cli(*args) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "napari-xai")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=dict(os.environ), timeout=300)


@pytest.fixture(scope="module")
def mni_files(tmp_path_factory):
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=4)  # 50x59x48 at 4 mm, stored RAS
    folder = tmp_path_factory.mktemp("mni")
    files = {}
    for codes in ORDERS:
        data, aff = stored_as(np.asarray(img.dataobj, dtype=np.float32), img.affine, codes)
        files[codes] = folder / f"mni_{codes}.nii.gz"
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data), aff), str(files[codes]))
    return files


def _explain_all(files, out_dir: Path, model_args: list) -> dict:
    results = {}
    for codes, path in files.items():
        out = out_dir / f"rel_{codes}.nii.gz"
        proc = _cli("explain", path, *model_args, "--method", "integrated-gradients", "--param", "steps=8",
                    "--out", out, "--quiet")
        assert proc.returncode == 0, proc.stderr
        side = json.loads(Path(str(out) + ".xai.json").read_text())
        img = nib.load(str(out))
        results[codes] = (np.asarray(img.dataobj), img.affine, side, proc)
    ref = results["RAS"]
    for codes, (data, aff, side, _) in results.items():
        assert side["prediction"]["name"] == ref[2]["prediction"]["name"]
        for name, p in side["prediction"]["probabilities"].items():
            assert abs(p - ref[2]["prediction"]["probabilities"][name]) < 1e-4, (codes, name)
        assert np.allclose(aff, nib.load(str(files[codes])).affine)
        r = world_r(data, aff, ref[0], ref[1])
        assert r > 0.99, (codes, r)
        steps = [s["transform"] for s in side["input_space"]["steps"]]
        assert steps[0] == "Orientation" and side["input_space"]["applied"]["orientation"] == "RAS"
    return results


def test_cli_bundle_with_orientationd_and_py_model_with_model_orientation_agree_for_every_storage_order(
        tmp_path, mni_files, classifier_weights):
    root = _bundle(tmp_path / "bundle", PREPROCESSING, classifier_weights)
    bundle = _explain_all(mni_files, tmp_path, ["--model", root])
    (tmp_path / "net.py").write_text(NET_PY)
    py_dir = tmp_path / "py"
    py_dir.mkdir()
    python = _explain_all(mni_files, py_dir, ["--model", f"{tmp_path / 'net.py'}:Net", "--weights",
                                              root / "models" / "model.pt", "--model-orientation", "RAS",
                                              "--input-shape", "16,16,16", "--normalization", "zscore"])
    # both sources declare the same space and weights: the same prediction and map
    for codes in ORDERS:
        pb = bundle[codes][2]["prediction"]["probabilities"]
        pp = python[codes][2]["prediction"]["probabilities"]
        assert abs(pb["left"] - pp["class 0"]) < 1e-4
        assert world_r(bundle[codes][0], bundle[codes][1], python[codes][0], python[codes][1]) > 0.99
    assert python["PIR"][2]["input_space"]["from"]["orientation"] == "options"
    # reproduce redoes the recorded space (in-process: the CLI around it is tested in test_reproduce)
    from napari_xai.core.reproduce import reproduce

    sidecar = py_dir / "rel_PIR.nii.gz.xai.json"
    again = reproduce(json.loads(sidecar.read_text()), sidecar=sidecar, trust=True)  # a .py model runs code
    assert again.reproduced, again.comparison
    assert again.relevance.provenance["input_space"]["steps"] == python["PIR"][2]["input_space"]["steps"]


def test_cli_without_a_declared_orientation_warns_and_records_it(tmp_path, mni_files):
    (tmp_path / "net.py").write_text(NET_PY)
    out = tmp_path / "raw.nii.gz"
    proc = _cli("explain", mni_files["PIR"], "--model", f"{tmp_path / 'net.py'}:Net", "--input-shape", "16,16,16",
                "--method", "saliency", "--out", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert f"napari-xai: warning: {WARNING_PIR}" in proc.stderr
    side = json.loads((tmp_path / "raw.nii.gz.xai.json").read_text())
    assert WARNING_PIR in side["warnings"]
    assert side["input_space"]["applied"]["orientation"] is None
    assert side["input_space"]["from"]["orientation"] == "nothing declared"


@pytest.mark.parametrize("option, value, message", [
    ("--model-orientation", "RAR", "--model-orientation: orientation 'RAR' must be three axis codes"),
    ("--model-spacing", "0,1,1", "--model-spacing: spacing '0,1,1' must be one or three positive voxel sizes"),
])
def test_cli_bad_space_options_are_one_line_before_any_work(tmp_path, option, value, message):
    out = tmp_path / "x.nii.gz"
    proc = _cli("explain", tmp_path / "missing.nii.gz", "--model", "demo", option, value, "--out", out)
    assert proc.returncode == 2 and proc.stderr.startswith("napari-xai: error: " + message), proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()


def test_perturbation_scorer_feeds_perturbed_copies_through_the_same_space():
    from napari_xai.core.evaluation.flipping import Scorer

    vol = _two_blobs()
    model = python_model(LeftBlobNet((24, 28, 20)), input_shape=(24, 28, 20))
    left = float(vol.data[0, :12].sum())  # stored RAS: the first half of axis 0 is the left hemisphere
    for codes in ORDERS:
        v = volume_as(vol, codes)
        scorer = Scorer(model, v, 1, model_orientation="RAS")
        assert scorer.base_logits[1] == pytest.approx(left, rel=1e-5), codes
        zeroed = np.zeros_like(v.data)
        assert scorer.logits([zeroed])[0, 1] == 0.0


def test_a_ct_bundles_range_and_crop_pad_are_read_and_applied_in_the_bundles_order():
    from napari_xai.core.input_space import from_transforms

    pre = {"_target_": "Compose", "transforms": [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0, "b_max": 1.0,
         "clip": True},
        {"_target_": "ResizeWithPadOrCropd", "keys": "image", "spatial_size": [8, 8, 8]},
    ]}
    space, notes = from_transforms(pre, "pre", lambda value, where: value)
    assert (space.spacing, space.normalization, space.shape, space.shape_policy) == (
        (1.5, 1.5, 2.0), "range", (8, 8, 8), "crop-pad")
    assert space.order[:3] == ("spacing", "intensity", "shape") and not space.skipped
    grid = ModelGrid(space, np.eye(4), (10, 6, 8))
    x = grid.apply(np.full((1, 10, 6, 8), 300.0, np.float32))
    assert [s["transform"] for s in grid.steps] == ["Spacing", "ScaleIntensityRange", "ResizeWithPadOrCrop"]
    # 300 HU is clipped to a_max -> b_max = 1 inside; the padding comes after the intensity step, so it is 0
    assert x.shape == (1, 8, 8, 8) and x.max() == pytest.approx(1.0) and x.min() == 0.0
    assert grid.to_volume(x, additive=False).shape == (1, 10, 6, 8)
