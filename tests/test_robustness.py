"""Max-sensitivity and infidelity (Yeh et al. 2019) against independent facts.

* A bias-free linear model f(x) = w·x: saliency (the gradient) is w for every
  input, so its sensitivity is exactly 0 and its infidelity is exactly 0
  (I·w = f(x) − f(x − I)); input x gradient is w∘x, so Φ(x+δ) − Φ(x) = w∘δ and
  the sensitivity is ||w∘δ|| / ||w∘x||, computed here from the same draws.
* Wrong maps (−w, a constant) get the infidelity computed by hand.
* The CLI on a tiny conv net with two methods: the JSON, the table and a
  one-line exit 2 for bad input.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from model_factory import nifti, python_source
from model_factory import run_cli as run
from napari_xai.core.errors import Cancelled, UserError
from napari_xai.core.explain import explain
from napari_xai.core.models import LoadedModel, ModelSpec
from napari_xai.core.evaluation.robustness import (
    evaluate,
    infidelity,
    infidelity_perturbations,
    intensity_ranges,
    is_contribution_map,
    max_sensitivity,
    uniform_perturbations,
)
from napari_xai.core.volumes import Volume

SHAPE = (4, 5, 6)


def linear(weight: np.ndarray) -> LoadedModel:
    """f(x) = W x, bias-free, two classes."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(weight.shape[1], 2, bias=False))
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(weight.astype(np.float32)))
    return LoadedModel(module=net.eval(), spec=ModelSpec(channels=1, class_names=["a", "b"]), source="test",
                       kind="python", sha256="0" * 64, device=torch.device("cpu"), is_scripted=False)


@pytest.fixture
def lin():
    rng = np.random.default_rng(3)
    n = int(np.prod(SHAPE))
    w = rng.normal(size=(2, n))
    w[1] += 0.5  # class 1 wins on a positive input
    x = (rng.random((1, *SHAPE)) * 4.0 + 1.0).astype(np.float32)
    vol = Volume(data=x, affine=np.diag([2.0, 2.0, 2.0, 1.0]), name="v")
    return linear(w), vol, w.astype(np.float32).astype(np.float64), x.astype(np.float64)


# --------------------------------------------------------------------------- perturbations


def test_uniform_perturbations_stay_in_the_ball_of_each_channel():
    data = np.stack([np.linspace(0, 10, 60).reshape(3, 4, 5), np.linspace(-1, 1, 60).reshape(3, 4, 5)])
    radii = 0.1 * intensity_ranges(data)
    assert radii == pytest.approx([1.0, 0.2])
    ds = list(uniform_perturbations(data.shape, radii, 5, seed=7))
    assert len(ds) == 5
    for d in ds:
        assert np.abs(d[0]).max() <= 1.0 and np.abs(d[1]).max() <= 0.2
        assert np.abs(d[0]).max() > 0.9  # 60 draws fill the ball
    again = list(uniform_perturbations(data.shape, radii, 5, seed=7))
    assert all(np.array_equal(a, b) for a, b in zip(ds, again))
    assert intensity_ranges(np.ones((1, 2, 2, 2))) == pytest.approx([1.0])  # a constant channel counts as range 1


def test_square_removal_sets_one_cube_to_the_baseline():
    data = np.random.default_rng(0).random((2, 7, 6, 5)).astype(np.float32) + 1.0
    for pert in infidelity_perturbations(data, "square", samples=6, seed=1, cube=3):
        inside = pert[0] != 0
        idx = np.argwhere(inside)
        assert inside.sum() == 27 and (idx.max(axis=0) - idx.min(axis=0) == 2).all()  # one 3x3x3 cube
        assert np.array_equal(pert[:, inside], data[:, inside])  # x - I = 0 there (zero baseline)
    big = next(infidelity_perturbations(data, "square", samples=1, seed=1, cube=50))
    assert np.array_equal(big, data)  # a cube larger than the volume is clipped to it
    with pytest.raises(UserError, match="gaussian, square"):
        next(infidelity_perturbations(data, "blob"))


# --------------------------------------------------------------------------- max-sensitivity


def test_saliency_of_a_linear_model_has_sensitivity_zero(lin):
    model, vol, w, _ = lin
    res = max_sensitivity(vol, model, "saliency", samples=4, radius=0.2, seed=1)
    assert res.target == 1 and res.target_name == "b"
    assert res.sensitivities == [0.0] * 4 and res.max == 0.0 and res.mean == 0.0
    assert res.rank_stability == pytest.approx(1.0)
    assert res.norm == pytest.approx(np.linalg.norm(w[1]), rel=1e-6)


def test_input_x_gradient_sensitivity_equals_the_hand_computed_value(lin):
    model, vol, w, x = lin
    radius, seed = 0.05, 11
    res = max_sensitivity(vol, model, "input-x-gradient", samples=3, radius=radius, seed=seed)
    # the documented drawing, done again: delta_k = U(-1, 1) * radius * (max - min)
    r = radius * (x.max() - x.min())
    rng = np.random.default_rng(seed)
    phi = w[1] * x.ravel()
    expect, rhos = [], []
    for _ in range(3):
        moved = (x + rng.uniform(-1.0, 1.0, size=x.shape) * r).astype(np.float32).astype(np.float64)
        other = w[1] * moved.ravel()
        expect.append(np.linalg.norm(other - phi) / np.linalg.norm(phi))
        rhos.append(spearmanr(phi, other).statistic)
    assert res.radii == pytest.approx([r])
    assert res.sensitivities == pytest.approx(expect, rel=1e-5)
    assert res.max == pytest.approx(max(expect), rel=1e-5) and res.mean == pytest.approx(np.mean(expect), rel=1e-5)
    assert res.spearman == pytest.approx(rhos, abs=1e-9)
    assert 0 < res.max < 1 and res.rank_stability < 1


def test_given_perturbations_and_the_target_stays_the_original_class(lin):
    model, vol, w, x = lin
    # delta = c everywhere: input x gradient changes by c w, so the sensitivity is |c| ||w|| / ||w x||
    c = 0.3
    res = max_sensitivity(vol, model, "input-x-gradient", perturbations=[np.full(vol.data.shape, c)])
    assert res.sensitivities == pytest.approx([c * np.linalg.norm(w[1]) / np.linalg.norm(w[1] * x.ravel())], rel=1e-5)
    # a perturbation that makes class "a" win: saliency still explains "b" (the original's class), so it is unchanged
    flip = np.sign(w[0] - w[1]).reshape(vol.data.shape) * 50.0
    moved = vol.data.astype(np.float64) + flip
    assert moved.ravel() @ w[0] > moved.ravel() @ w[1]
    res = max_sensitivity(vol, model, "saliency", perturbations=[flip])
    assert res.target == 1 and res.sensitivities == [0.0]


def test_sensitivity_progress_cancel_and_bad_input(lin):
    model, vol, _, _ = lin
    seen = []
    max_sensitivity(vol, model, "saliency", samples=2, progress=lambda f, m: seen.append((f, m)))
    assert seen[-1][0] == 1.0 and any("perturbation 2/2" in m for _, m in seen)
    assert all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        max_sensitivity(vol, model, "saliency", samples=5, should_stop=stop)
    with pytest.raises(UserError, match="radius"):
        max_sensitivity(vol, model, "saliency", radius=-0.1)
    with pytest.raises(UserError, match="at least 1"):
        max_sensitivity(vol, model, "saliency", samples=0)
    with pytest.raises(UserError, match="shape"):
        max_sensitivity(vol, model, "saliency", perturbations=[np.zeros((1, 2, 2, 2))])


# --------------------------------------------------------------------------- infidelity


@pytest.mark.parametrize("kind", ["gaussian", "square"])
def test_infidelity_of_the_gradient_of_a_linear_model_is_zero(lin, kind):
    model, vol, w, _ = lin
    rel = explain(vol, model, "saliency")
    assert rel.data[0].ravel() == pytest.approx(w[1], rel=1e-6)  # the gradient of a linear model is w
    res = infidelity(model, vol, rel.data, target=rel.target, kind=kind, samples=12, seed=2, cube=2)
    deltas = np.asarray(res.deltas)
    assert np.mean(deltas ** 2) > 1e-3  # the perturbations do change the score
    assert res.raw <= 1e-9 * np.mean(deltas ** 2) and res.normalized <= 1e-9 * np.mean(deltas ** 2)
    assert res.beta == pytest.approx(1.0, rel=1e-5)  # float32 forward passes
    assert res.dots == pytest.approx(list(deltas), abs=2e-4)  # f ~ 100: float32 rounding of the logits


def test_infidelity_of_wrong_maps_by_hand(lin):
    model, vol, w, x = lin
    seed, noise, n = 5, 0.2, 10
    sigma = noise * (x.max() - x.min())
    rng = np.random.default_rng(seed)
    pert = [rng.standard_normal(x.shape) * sigma for _ in range(n)]
    wi = np.array([w[1] @ p.ravel() for p in pert])  # = f(x) - f(x - I) of the linear model
    exact = infidelity(model, vol, w[1].reshape(SHAPE), target=1, samples=n, seed=seed, noise=noise)
    assert exact.deltas == pytest.approx(list(wi), rel=1e-4, abs=1e-4)
    # -w: (-w.I - w.I)^2 = 4 (w.I)^2; the best scale beta = -1 fits it exactly
    neg = infidelity(model, vol, -w[1].reshape(SHAPE), target=1, samples=n, seed=seed, noise=noise, normalize=False)
    assert neg.raw == pytest.approx(np.mean(4 * wi ** 2), rel=1e-4)
    assert neg.value == neg.raw and neg.raw > 1e3 * max(exact.raw, 1e-12)
    assert neg.beta == pytest.approx(-1.0, rel=1e-5) and neg.normalized <= 1e-9 * neg.raw
    # a constant map c: I.Phi = c sum(I)
    c = 0.7
    const = infidelity(model, vol, np.full(SHAPE, c), target=1, samples=n, seed=seed, noise=noise)
    dots = np.array([c * p.sum() for p in pert])
    beta = (dots @ wi) / (dots @ dots)
    assert const.dots == pytest.approx(list(dots), rel=1e-9)
    assert const.raw == pytest.approx(np.mean((dots - wi) ** 2), rel=1e-4)
    assert const.beta == pytest.approx(beta, rel=1e-4)
    assert const.value == pytest.approx(np.mean((beta * dots - wi) ** 2), rel=1e-4)
    assert const.value > 1e3 * max(exact.value, 1e-12)
    assert const.unexplained == pytest.approx(const.value / np.mean(wi ** 2), rel=1e-4) and 0 < const.unexplained <= 1
    assert exact.unexplained < 1e-9
    rec = const.record()
    assert rec["infidelity"] == const.value and rec["perturbation"] == "gaussian" and rec["noise"] == noise


def test_contribution_maps_sum_over_the_removed_cube(lin):
    """With multiply_by_inputs, input x gradient (w x) of a bias-free linear model is exact under cube removal:
    the relevance summed in the cube, sum w_i x_i, is the score drop f(x) - f(x with the cube zeroed)."""
    model, vol, w, x = lin
    rel = explain(vol, model, "input-x-gradient")
    assert rel.data[0].ravel() == pytest.approx(w[1] * x.ravel(), rel=1e-5)
    exact = infidelity(model, vol, rel.data, kind="square", cube=2, samples=10, seed=3, multiply_by_inputs=True,
                       normalize=False)
    assert np.mean(np.square(exact.deltas)) > 1e-3 and exact.raw <= 1e-9 * np.mean(np.square(exact.deltas))
    # without the division, I.Phi = sum over the cube of w_i x_i^2: off by the intensities, computed by hand
    plain = infidelity(model, vol, rel.data, kind="square", cube=2, samples=10, seed=3, normalize=False)
    rng = np.random.default_rng(3)
    hand = []
    for _ in range(10):
        c = [int(rng.integers(0, n - 2 + 1)) for n in SHAPE]
        cube = np.zeros(SHAPE, bool)
        cube[c[0]:c[0] + 2, c[1]:c[1] + 2, c[2]:c[2] + 2] = True
        wx = (w[1] * x.ravel()).reshape(SHAPE)[cube]
        hand.append((np.sum(wx * x[0][cube]) - np.sum(wx)) ** 2)
    assert plain.raw == pytest.approx(np.mean(hand), rel=1e-4) and plain.raw > 1e3 * max(exact.raw, 1e-12)
    with pytest.raises(UserError, match="square removal"):
        infidelity(model, vol, rel.data, kind="gaussian", multiply_by_inputs=True)
    assert is_contribution_map("integrated-gradients") and is_contribution_map("lrp-epsilon-plus")
    assert is_contribution_map("occlusion") and not is_contribution_map("saliency")
    assert not is_contribution_map("grad-cam") and not is_contribution_map("guided-backprop")
    auto = evaluate(vol, model, "input-x-gradient", samples=1, kind="square", cube=2, infidelity_samples=10, seed=3,
                    multiply_by_inputs="auto")["infidelity"]
    assert auto.multiply_by_inputs and auto.dots == exact.dots


def test_infidelity_checks_and_cancel(lin):
    model, vol, w, _ = lin
    with pytest.raises(UserError, match="shape"):
        infidelity(model, vol, np.zeros((3, 3, 3)))
    with pytest.raises(UserError, match="noise"):
        infidelity(model, vol, w[1].reshape(SHAPE), noise=0)
    with pytest.raises(UserError, match="perturbation must be one of"):
        infidelity(model, vol, w[1].reshape(SHAPE), kind="blob")
    with pytest.raises(Cancelled):
        infidelity(model, vol, w[1].reshape(SHAPE), should_stop=lambda: True)
    zero = infidelity(model, vol, np.zeros(SHAPE), samples=3)
    assert zero.beta == 0.0 and zero.normalized == pytest.approx(np.mean(np.square(zero.deltas)))
    assert any("I·Φ is 0" in n for n in zero.notes)


def test_evaluate_runs_both_with_one_seed(lin):
    model, vol, _, _ = lin
    a = evaluate(vol, model, "saliency", samples=2, infidelity_samples=4, seed=3)
    b = evaluate(vol, model, "input-x-gradient", samples=2, infidelity_samples=4, seed=3, scorer=a["scorer"])
    assert a["scorer"] is b["scorer"]
    assert a["sensitivity"].max == 0.0 and a["infidelity"].value < 1e-9
    c = evaluate(vol, model, "input-x-gradient", samples=2, infidelity_samples=4, seed=3)
    assert c["sensitivity"].sensitivities == b["sensitivity"].sensitivities
    assert c["infidelity"].deltas == b["infidelity"].deltas
    d = evaluate(vol, model, "input-x-gradient", samples=2, infidelity_samples=4, seed=4)
    assert d["sensitivity"].sensitivities != b["sensitivity"].sensitivities


# --------------------------------------------------------------------------- CLI


def test_cli_robustness_two_methods(tmp_path, capsys):
    source, weights, kwargs = python_source(tmp_path / "m")
    vol = nifti(tmp_path / "v.nii.gz", shape=(10, 10, 10))
    out = tmp_path / "r.json"
    base = [vol, "--model", source, "--weights", weights, "--model-kwargs", kwargs]
    code, stdout, err = run(capsys, "robustness", *base, "--method", "saliency", "--method", "input-x-gradient",
                            "--samples", "2", "--infidelity-samples", "6", "--seed", "4", "--target", "1",
                            "--out", out)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert rec["kind"] == "robustness" and rec["methods"] == ["saliency", "input-x-gradient"]
    assert rec["seed"] == 4 and rec["target"]["index"] == 1
    assert len(rec["model"]["sha256"]) == 64
    assert rec["command"].startswith("napari-xai robustness") and "--seed 4" in rec["command"]
    assert rec["settings"]["samples"] == 2 and rec["settings"]["infidelity"] == "gaussian"
    for r in rec["results"]:
        assert len(r["sensitivity"]["sensitivities"]) == 2 and len(r["infidelity"]["deltas"]) == 6
        assert r["sensitivity"]["max_sensitivity"] >= r["sensitivity"]["mean_sensitivity"] >= 0
        assert r["infidelity"]["normalize"] is True and r["infidelity"]["target"] == 1
    # the same seed draws the same perturbations for both methods: equal score changes
    assert rec["results"][0]["infidelity"]["deltas"] == rec["results"][1]["infidelity"]["deltas"]
    lines = stdout.splitlines()
    assert any(line.startswith("saliency ") for line in lines) and any(line.startswith("input-x-gradient ") for line in lines)
    assert "max-sens" in stdout and f"wrote {out}" in stdout
    # square removal: the contribution map (input x gradient) is scored with the relevance summed in the cube
    out2 = tmp_path / "square.json"
    code, stdout, err = run(capsys, "robustness", *base, "--method", "saliency", "--method", "input-x-gradient",
                            "--samples", "1", "--infidelity", "square", "--cube", "4", "--infidelity-samples", "4",
                            "--out", out2)
    assert code == 0, err
    rec = json.loads(out2.read_text())
    assert [r["infidelity"]["multiply_by_inputs"] for r in rec["results"]] == [False, True]
    assert rec["results"][0]["infidelity"]["cube"] == 4 and "input-x-gradient*" in stdout
    # bad input: one line, exit 2, nothing replaced
    for bad in (["--samples", "0"], ["--method", "nonsense"], ["--param", "steps=8", "--method", "saliency"], [],
                ["--multiply-by-inputs", "yes"]):
        code, _, err = run(capsys, "robustness", *base, *bad, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("napari-xai: error:"), err


def test_cli_segmentation_model_keeps_the_original_mask(tmp_path, capsys):
    from test_sanity import SEG_PY

    (tmp_path / "seg.py").write_text(SEG_PY)
    torch.manual_seed(0)
    net = nn.Sequential()
    net.conv, net.act, net.head = nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv3d(3, 2, 1)
    torch.save(net.state_dict(), tmp_path / "seg.pt")
    vol = nifti(tmp_path / "v.nii.gz", shape=(8, 8, 8))
    out = tmp_path / "seg.json"
    code, stdout, err = run(capsys, "robustness", vol, "--model", f"{tmp_path / 'seg.py'}:Seg", "--weights",
                            tmp_path / "seg.pt", "--method", "saliency", "--segmentation", "--target", "1",
                            "--samples", "2", "--infidelity-samples", "4", "--out", out)
    assert code == 0, err
    rec = json.loads(out.read_text())
    res = rec["results"][0]
    assert rec["target"]["index"] == 1 and res["infidelity"]["target"] == 1
    assert len(res["sensitivity"]["sensitivities"]) == 2 and all(np.isfinite(res["infidelity"]["deltas"]))


def test_every_method_says_whether_its_map_multiplies_by_the_input():
    """The registry flag, method by method: amounts of score per voxel (Captum's multiply_by_inputs convention)
    versus sensitivities; and which methods have intermediate maps (--out-intermediate)."""
    from napari_xai.core.methods.catalogue import all_methods

    amounts = {"input-x-gradient", "integrated-gradients", "deeplift", "gradient-shap", "occlusion",
               "region-ablation", "lime", "kernel-shap"}
    sensitivities = {"saliency", "smoothgrad", "guided-backprop", "deconvolution", "grad-cam", "grad-cam-plus-plus",
                     "guided-grad-cam", "attention-gates"}
    for m in all_methods():
        expected = m.family in ("lrp", "concepts") or m.name in amounts  # CRP maps are LRP maps (conditioned)
        assert m.name in amounts | sensitivities or m.family in ("lrp", "concepts"), f"{m.name} is not classified here"
        assert m.multiplies_input == expected, m.name
    assert {m.name for m in all_methods() if m.has_intermediate} == {"lrp", "attention-gates", "crp"}
    # the one method configured by an LrpConfig (reproduce and the LRP designer read the flag), and the methods
    # with a 'layer' parameter (the Explain widget builds its dropdown from the kind)
    assert {m.name for m in all_methods() if m.takes_config} == {"lrp"}
    assert {m.name for m in all_methods() if any(p.type == "layer" for p in m.params)} == {
        "grad-cam", "grad-cam-plus-plus", "guided-grad-cam", "attention-gates", "crp"}
