"""``napari-xai compare``: cells on disk equal hand-computed maps; table, PNG, refusals and bad input.

Independent fact: for a bias-free linear model ``y_c = sum_i W[c, i] x_i``,
input x gradient and LRP-0 give ``R_i = W[c, i] x_i``, computed here from the
saved weights and the saved volume, not by the code under test.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from model_factory import lin_source
from model_factory import run_cli as run
from napari_xai.core.lrp import LrpConfig, save_configs
from napari_xai.core.lrp import preset_params

SHAPE = (5, 4, 6)
@pytest.fixture
def case(tmp_path):
    rng = np.random.default_rng(7)
    weights = {}
    for name in ("wa", "wb"):
        w = rng.normal(size=(2, int(np.prod(SHAPE)))).astype(np.float32)
        lin_source(tmp_path, w, name)
        weights[name] = w
    x = (rng.random(SHAPE) + 0.5).astype(np.float32)
    vol = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(x, np.diag([2.0, 2.0, 2.0, 1.0])), str(vol))
    return tmp_path, vol, x, weights


def test_cells_on_disk_are_hand_computed_and_the_table_lists_them(case, capsys):
    tmp, vol, x, weights = case
    src = f"{tmp / 'lin.py'}:Lin"
    lib = tmp / "configs.json"
    save_configs(lib, [LrpConfig(name="zero", default=preset_params("lrp-0")),
                       LrpConfig(name="eps", default=preset_params("lrp-epsilon"))])
    out = tmp / "cmp"
    code, stdout, err = run(capsys, "compare", vol, "--model", src, "--model", src, "--weights", tmp / "wa.pt",
                            "--weights", tmp / "wb.pt", "--method", "input-x-gradient", "--config", lib,
                            "--configuration", "zero", "--target", "0", "--target", "1", "--out-dir", out, "--quiet")
    assert code == 0, err
    table = json.loads((out / "comparison.json").read_text())
    assert len(table["cells"]) == 2 * 2 * 2
    for row in table["cells"]:
        w = weights["wa" if "(wa)" in row["model"] else "wb"]
        expected = w[row["target_index"]].reshape(SHAPE) * x
        data = np.asarray(nib.load(str(out / row["file"])).dataobj)
        np.testing.assert_allclose(data, expected, rtol=1e-4, atol=1e-6, err_msg=row["label"])
        assert row["relevance_sum"] == pytest.approx(float(expected.sum()), rel=1e-4, abs=1e-5)
        side = json.loads((out / (row["file"] + ".xai.json")).read_text())
        assert side["comparison"]["label"] == row["label"] and side["target"]["index"] == row["target_index"]
    first = table["cells"][0]
    assert first["label"] == "input-x-gradient · class 0 · Lin (wa)" and first["file"].startswith("01_")
    assert table["cells"][1]["name"] == "zero" and table["cells"][1]["conservation_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert table["limit"] > 0 and "8 cells" in stdout
    # a second run into the same folder is refused and changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, stdout, err = run(capsys, "compare", vol, "--model", src, "--weights", tmp / "wa.pt", "--method", "saliency",
                            "--out-dir", out)
    assert code == 2 and err.strip() == f"napari-xai: error: {out / 'comparison.json'} exists; choose another --out-dir or pass --overwrite."
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_png_grid_with_per_cell_scale(case, capsys):
    from PIL import Image

    tmp, vol, x, _ = case
    out = tmp / "png"
    code, stdout, err = run(capsys, "compare", vol, "--model", f"{tmp / 'lin.py'}:Lin", "--weights", tmp / "wa.pt",
                            "--method", "saliency", "--method", "input-x-gradient", "--out-dir", out, "--png",
                            "--view", "2d", "--scale", "per-cell", "--quiet")
    assert code == 0, err
    table = json.loads((out / "comparison.json").read_text())
    assert table["scale"] == "per-cell" and len(table["png_limits"]) == 2
    assert table["png_limits"][0] != pytest.approx(table["png_limits"][1])  # each cell scaled on its own
    img = np.asarray(Image.open(out / "comparison.png"))
    assert img.ndim == 3 and img.shape[0] > 100 and len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20


@pytest.mark.parametrize(
    ("argv_tail", "message"),
    [
        (["--method", "saliency", "--configuration", "x"], "--configuration names a configuration inside --config"),
        (["--out-dir", "{tmp}/v.nii.gz", "--method", "saliency"], "is a file; give a folder"),
        (["--method", "no-such-method"], "unknown method"),
        (["--weights", "{tmp}/wa.pt", "--weights", "{tmp}/wb.pt", "--method", "saliency"],
         "2 --weights for 1 file.py:Class model(s)"),
        (["--method", "saliency", "--target", "7"], "target 7 is out of range"),
        ([], "give at least one --method or a --config library"),
    ],
)
def test_user_errors_exit_2_with_one_line(case, capsys, argv_tail, message):
    tmp, vol, _, _ = case
    tail = [a.replace("{tmp}", str(tmp)) for a in argv_tail]
    if "--out-dir" not in tail:
        tail += ["--out-dir", str(tmp / "o")]
    if "--weights" not in tail:
        tail += ["--weights", str(tmp / "wa.pt")]
    code, stdout, err = run(capsys, "compare", vol, "--model", f"{tmp / 'lin.py'}:Lin", *tail)
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp / "o").exists() or not any((tmp / "o").iterdir())


def test_truth_readouts_per_cell_and_readable_file_names(case, capsys):
    from napari_xai.core.compare import slug

    assert slug("γ | ε | 0 composite") == "gamma-epsilon-0_composite" and slug("z⁺ convs") == "zplus_convs"
    tmp, vol, x, weights = case
    truth = np.zeros(SHAPE, np.uint8)
    truth[1:3, :, 2:5] = 1
    nib.save(nib.Nifti1Image(truth, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp / "gt.nii.gz"))
    out = tmp / "gt_out"
    code, stdout, err = run(capsys, "compare", vol, "--model", f"{tmp / 'lin.py'}:Lin", "--weights", tmp / "wa.pt",
                            "--method", "input-x-gradient", "--target", "1", "--truth", tmp / "gt.nii.gz",
                            "--out-dir", out, "--quiet")
    assert code == 0, err
    row = json.loads((out / "comparison.json").read_text())["cells"][0]
    r = weights["wa"][1].reshape(SHAPE) * x
    pos = np.clip(r, 0, None)
    assert row["relevance_mass"] == pytest.approx(pos[truth > 0].sum() / pos.sum(), rel=1e-4)
    assert "mass-in-GT" in stdout
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4)), str(tmp / "bad.nii.gz"))
    code, _, err = run(capsys, "compare", vol, "--model", f"{tmp / 'lin.py'}:Lin", "--weights", tmp / "wa.pt",
                       "--method", "saliency", "--truth", tmp / "bad.nii.gz", "--out-dir", tmp / "o2")
    assert code == 2 and "give one 3D mask on the input's grid" in err


def test_flip_readouts_per_cell(case, capsys):
    """AOPC by hand: 3-voxel cubes ranked by summed w x, zeroed, 10 steps up to 20 % of the 8 cubes."""
    tmp, vol, x, weights = case
    out = tmp / "flip_out"
    code, stdout, err = run(capsys, "compare", vol, "--model", f"{tmp / 'lin.py'}:Lin", "--weights", tmp / "wa.pt",
                            "--method", "input-x-gradient", "--method", "saliency", "--target", "1", "--flip",
                            "--out-dir", out, "--quiet")
    assert code == 0, err
    cells = json.loads((out / "comparison.json").read_text())["cells"]
    r = weights["wa"][1].reshape(SHAPE) * x
    idx = [np.arange(n) // 3 for n in SHAPE]
    cube = (idx[0][:, None, None] * 2 + idx[1][None, :, None]) * 2 + idx[2][None, None, :]
    sums = np.bincount(cube.ravel(), weights=r.ravel(), minlength=8)
    order = np.argsort(-sums, kind="stable")
    scores = [r.sum() - sums[order[:int(round(0.02 * k * 8))]].sum() for k in range(11)]
    assert cells[0]["aopc_morf"] == pytest.approx(float(np.mean(scores[0] - np.asarray(scores))), rel=1e-4, abs=1e-5)
    assert cells[0]["aopc_random"] == pytest.approx(cells[1]["aopc_random"], rel=1e-6)  # same model, target, seed
    assert "AOPC-MoRF" in stdout
