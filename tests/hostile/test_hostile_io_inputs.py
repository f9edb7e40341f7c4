"""Hostile and broken inputs get one clear line (issue 10, items 9-13).

Broken models, NIfTI headers and affines, non-finite parameters, float64 volumes beyond float32, malformed JSON
beside an image: each case runs ``napari-xai`` in a subprocess and expects exit 2, exactly one stderr line, no
traceback, and the folder unchanged (item 13: the napari reader opens the image with a warning).
"""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _io_helpers import cli, models_file, nifti, python, raw_nifti, refused_and_unchanged, tree  # noqa: E402

FAST = ["--model", "demo", "--method", "saliency", "--quiet"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    nifti(d / "in.nii.gz", shape=(16, 16, 16))
    nifti(d / "in12.nii.gz", shape=(12, 12, 12))
    models_file(d)
    res = cli("explain", d / "in.nii.gz", *FAST, "--out", d / "rel.nii.gz")
    assert res.returncode == 0, res.stderr
    return d


@pytest.fixture
def work(base, tmp_path):
    d = tmp_path / "w"
    shutil.copytree(base, d, symlinks=True)
    return d


def user_model(work, name, volume="in.nii.gz", method="saliency", command="explain"):
    src = f"{work / 'hostile_models.py'}:{name}"
    if command == "explain":
        return ["explain", work / volume, "--model", src, "--trust-model", "--method", method, "--quiet",
                "--out", work / "out.nii.gz"]
    return ["flip", work / volume, "--model", src, "--trust-model", "--relevance", work / "rel.nii.gz", "--steps", "2",
            "--region", "4", "--out", work / "curves.csv"]


# ------------------------------------------------------------------ 9. exceptions inside the user's model

@pytest.mark.parametrize("name,words", [
    ("Raises", ("Raises", "(1, 1, 16, 16, 16)", "even number")),
    ("Asserts", ("Asserts", "(1, 1, 16, 16, 16)", "96")),
    ("KeyErr", ("KeyErr", "(1, 1, 16, 16, 16)", "KeyError")),
])
def test_an_exception_in_forward_is_one_line_naming_model_and_shape(work, name, words):
    refused_and_unchanged(work, *user_model(work, name), words=words)


def test_monai_style_divisible_by_8_gives_the_accepted_sizes(work):
    refused_and_unchanged(work, *user_model(work, "Divisible", volume="in12.nii.gz"),
                          words=("Divisible", "(1, 1, 12, 12, 12)", "divisible by 8", "--input-shape"))


@pytest.mark.parametrize("method", ["saliency", "integrated-gradients"])
def test_an_output_that_does_not_depend_on_the_input(work, method):
    refused_and_unchanged(work, *user_model(work, "Detached", method=method), words=("Detached", "does not depend"))


def test_a_model_that_changes_its_input_in_place(work):
    refused_and_unchanged(work, *user_model(work, "Inplace"), words=("Inplace", "in place"))


def test_a_model_error_during_flip(work):
    refused_and_unchanged(work, *user_model(work, "Raises", command="flip"), words=("Raises",))


# ------------------------------------------------------------------ 10. headers and affines

@pytest.mark.parametrize("name,kwargs,words", [
    ("neg.nii", {"dims": {1: -5}}, ("negative",)),
    ("claims_more.nii", {"dims": {1: 2000, 2: 2000, 3: 2000}}, ("claims",)),
    ("claims_more.nii.gz", {"dims": {1: 16}, "gz": True}, ("claims",)),
    ("beyond_memory.nii.gz", {"dims": {1: 3000, 2: 3000, 3: 3000}, "gz": True}, ("memory",)),
    ("singular.nii.gz", {"sform": np.zeros((3, 4)), "gz": True}, ("singular",)),
    ("nan_affine.nii.gz", {"sform": [[np.nan, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "gz": True}, ("NaN",)),
    ("rank2.nii.gz", {"sform": [[1, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 0]], "gz": True}, ("singular",)),
])
def test_a_broken_header_is_one_line_before_any_allocation(work, name, kwargs, words):
    raw_nifti(work / name, **kwargs)
    refused_and_unchanged(work, "explain", work / name, *FAST, "--out", work / "out.nii.gz", words=(name, *words))


def test_clusters_on_a_map_with_a_singular_affine(work):
    raw_nifti(work / "flat.nii.gz", sform=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], gz=True)
    refused_and_unchanged(work, "clusters", work / "flat.nii.gz", "--out-table", work / "t.csv", words=("singular",))


def test_the_inputs_qform_and_sform_codes_are_kept(work):
    import nibabel as nib

    src = nib.load(str(work / "in.nii.gz"))  # written by nibabel: sform code 2, no qform (code 0)
    assert (int(src.header["sform_code"]), int(src.header["qform_code"])) == (2, 0)
    res = cli("explain", work / "in.nii.gz", *FAST, "--out", work / "out.nii.gz")
    assert res.returncode == 0, res.stderr
    out = nib.load(str(work / "out.nii.gz"))
    assert (int(out.header["sform_code"]), int(out.header["qform_code"])) == (2, 0)
    np.testing.assert_allclose(out.affine, src.affine)


# ------------------------------------------------------------------ 11. NaN/Inf parameters, grids beyond memory

@pytest.mark.parametrize("extra,words", [
    (["--method", "smoothgrad", "--param", "noise=nan"], ("noise", "finite")),
    (["--method", "smoothgrad", "--param", "noise=-nan"], ("noise", "finite")),
    (["--method", "lrp-epsilon", "--param", "epsilon=nan"], ("epsilon", "finite")),
    (["--method", "saliency", "--input-shape", "5000,5000,5000"], ("memory",)),
])
def test_non_finite_parameters_and_huge_grids(work, extra, words):
    refused_and_unchanged(work, "explain", work / "in.nii.gz", "--model", "demo", "--quiet", *extra,
                          "--out", work / "out.nii.gz", words=words)


def test_reproduce_tolerance_nan(work):
    side = next(p for p in work.glob("rel*.json"))
    refused_and_unchanged(work, "reproduce", side, "--tolerance", "nan", words=("--tolerance", "finite"))


def test_flip_max_fraction_nan(work):
    refused_and_unchanged(work, "flip", work / "in.nii.gz", "--model", "demo", "--relevance", work / "rel.nii.gz",
                          "--max-fraction", "nan", "--out", work / "c.csv", words=("nan",))


# ------------------------------------------------------------------ 12. float64 beyond float32

@pytest.mark.parametrize("value", [1e300, -1e39])
def test_a_float64_volume_beyond_float32_is_refused_not_zeroed(work, value):
    data = np.random.default_rng(0).random((16, 16, 16))
    data[3, 4, 5] = value
    nifti(work / "f64.nii.gz", data.astype(np.float64))
    refused_and_unchanged(work, "explain", work / "f64.nii.gz", *FAST, "--out", work / "out.nii.gz",
                          words=("f64.nii.gz", "float32"))


# ------------------------------------------------------------------ 13. a malformed JSON beside the image

@pytest.mark.parametrize("side,payload", [
    ("rel.json", b"{not json"),
    ("rel.json", b"\x00\xff\xfe garbage"),
    ("rel.nii.gz.xai.json", b'{"kind": "relevance", '),
])
def test_the_reader_opens_an_image_beside_a_malformed_json(work, side, payload):
    for p in list(work.glob("rel*.json")):
        p.unlink()
    (work / side).write_bytes(payload)
    before = tree(work)
    res = python("import warnings, sys\nwarnings.simplefilter('always')\n"
                 "from napari_xai._reader import get_reader\n"
                 f"p = {str(work / 'rel.nii.gz')!r}\n"
                 "layers = get_reader(p)(p)\n"
                 "print(len(layers), layers[0][0].shape, layers[0][2])\n")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[0] == "1" and "(16, 16, 16)" in res.stdout and "image" in res.stdout
    assert "could not be read" in res.stderr  # the user is told
    assert tree(work) == before
