"""The command line: every model source, both grid cases, exit codes, and bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from model_factory import bundle_source, nifti, python_source, torchscript_source
from napari_xai.cli import main

OBLIQUE = np.array([[-1.9, 0.3, 0.0, 30.0], [0.3, 2.1, 0.0, -40.0], [0.0, 0.0, 2.5, -20.0], [0, 0, 0, 1.0]])


def run(capsys, *argv):
    capsys.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def check_output(path, vol_path):
    src, out = nib.load(str(vol_path)), nib.load(str(path))
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, atol=1e-5)
    side = json.loads(path.with_name(path.name + ".xai.json").read_text())
    for key in ("model", "method", "params", "target", "prediction", "versions"):
        assert key in side
    assert len(side["model"]["sha256"]) == 64
    return np.asarray(out.dataobj), side


@pytest.mark.parametrize("shape", [(12, 12, 12), (15, 11, 13)])
def test_bundle_both_grids(tmp_path, capsys, shape):
    bundle = bundle_source(tmp_path / "bundle", spatial_shape=(12, 12, 12))
    vol = nifti(tmp_path / "v.nii.gz", shape=shape, affine=OBLIQUE)
    out = tmp_path / "rel.nii.gz"
    code, stdout, err = run(capsys, "explain", vol, "--model", bundle, "--method", "input-x-gradient", "--out", out, "--quiet")
    assert code == 0, err
    data, side = check_output(out, vol)
    assert side["grid"]["resampled"] is (shape != (12, 12, 12))
    assert side["model"]["class_names"] == ["healthy", "lesion"]
    assert np.abs(data).sum() > 0 and (data > 0).any() and (data < 0).any()


@pytest.mark.parametrize("input_shape", [None, "10,10,10"])
def test_python_file_both_grids(tmp_path, capsys, input_shape):
    source, weights, kwargs = python_source(tmp_path / "py")
    vol = nifti(tmp_path / "v.nii.gz", shape=(12, 14, 12), affine=OBLIQUE)
    out = tmp_path / "rel.nii.gz"
    extra = ["--input-shape", input_shape] if input_shape else []
    code, stdout, err = run(
        capsys, "explain", vol, "--model", source, "--weights", weights, "--model-kwargs", kwargs,
        "--method", "integrated-gradients", "--param", "steps=8", "--target", "1", "--out", out, "--quiet", *extra,
    )
    assert code == 0, err
    data, side = check_output(out, vol)
    assert side["target"]["index"] == 1 and side["params"]["steps"] == 8
    assert side["grid"]["resampled"] is bool(input_shape)


@pytest.mark.parametrize("input_shape", [None, "8,8,8"])
def test_torchscript_both_grids(tmp_path, capsys, input_shape):
    ts = torchscript_source(tmp_path / "ts")
    vol = nifti(tmp_path / "v.nii.gz", shape=(12, 12, 10), affine=OBLIQUE)
    out = tmp_path / "rel.nii.gz"
    extra = ["--input-shape", input_shape] if input_shape else []
    code, _, err = run(capsys, "explain", vol, "--model", ts, "--method", "saliency", "--out", out, "--quiet", *extra)
    # TorchScript is code: without --trust-model it is refused in one line naming the risk and the opt-in
    assert code == 2 and "TorchScript" in err and "--trust-model" in err and err.count("\n") == 1 and not out.exists()
    code, _, err = run(capsys, "explain", vol, "--model", ts, "--method", "saliency", "--out", out, "--quiet",
                       "--trust-model", *extra)
    assert code == 0, err
    data, side = check_output(out, vol)
    assert side["model"]["kind"] == "torchscript"
    assert np.isfinite(data).all() and np.abs(data).max() > 0


def test_torchscript_with_lrp_is_a_user_error(tmp_path, capsys):
    ts = torchscript_source(tmp_path / "ts")
    vol = nifti(tmp_path / "v.nii.gz")
    out = tmp_path / "rel.nii.gz"
    code, _, err = run(capsys, "explain", vol, "--model", ts, "--method", "lrp-epsilon", "--out", out,
                       "--trust-model")
    assert code == 2
    assert "eager nn.Module" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_two_files_become_channels(tmp_path, capsys):
    source, weights, kwargs = python_source(tmp_path / "py", in_channels=2)
    a = nifti(tmp_path / "a.nii.gz", seed=1)
    b = nifti(tmp_path / "b.nii.gz", seed=2)
    out = tmp_path / "rel.nii.gz"
    code, _, err = run(capsys, "explain", a, b, "--model", source, "--weights", weights, "--model-kwargs", kwargs,
                       "--method", "input-x-gradient", "--out", out, "--quiet")
    assert code == 0, err
    img = nib.load(str(out))
    assert img.shape == (12, 12, 12, 2)


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["--method", "nope"], "unknown method"),
        (["--target", "7"], "out of range"),
        (["--target", "zebra"], "unknown target class"),
        (["--param", "steps"], "KEY=VALUE"),
        (["--method", "integrated-gradients", "--param", "steps=-3"], "steps"),
        (["--method", "grad-cam", "--param", "layer=no.such.layer"], "layer"),
        (["--device", "cuda"], "CUDA"),
    ],
)
def test_user_errors_exit_2_with_one_line(tmp_path, capsys, argv_tail, message):
    import torch

    if argv_tail == ["--device", "cuda"] and torch.cuda.is_available():
        argv_tail = ["--device", "cuda:99"]
    bundle = bundle_source(tmp_path / "bundle")
    vol = nifti(tmp_path / "v.nii.gz")
    out = tmp_path / "rel.nii.gz"
    code, _, err = run(capsys, "explain", vol, "--model", bundle, "--out", out, *argv_tail)
    assert code == 2
    assert message.lower() in err.lower(), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "rel.nii.gz.xai.json").exists()


def test_channel_mismatch(tmp_path, capsys):
    bundle = bundle_source(tmp_path / "bundle")
    vol = nifti(tmp_path / "v.nii.gz", channels=2)
    code, _, err = run(capsys, "explain", vol, "--model", bundle, "--out", tmp_path / "r.nii.gz")
    assert code == 2 and "expects 1 channel" in err


def test_refuses_to_overwrite(tmp_path, capsys):
    bundle = bundle_source(tmp_path / "bundle")
    vol = nifti(tmp_path / "v.nii.gz")
    out = tmp_path / "rel.nii.gz"
    out.write_bytes(b"precious")
    code, _, err = run(capsys, "explain", vol, "--model", bundle, "--out", out)
    assert code == 2 and "exists" in err
    assert out.read_bytes() == b"precious"


def test_non_classifier_output(tmp_path, capsys):
    import torch

    seg = torch.jit.script(torch.nn.Conv3d(1, 2, 1))
    path = tmp_path / "seg.pt"
    torch.jit.save(seg, str(path))
    vol = nifti(tmp_path / "v.nii.gz")
    code, _, err = run(capsys, "explain", vol, "--model", path, "--method", "saliency", "--out", tmp_path / "r.nii.gz",
                       "--trust-model")
    assert code == 2 and "(N, classes)" in err


def test_methods_lists_every_method(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    for name in ("saliency", "input-x-gradient", "integrated-gradients", "smoothgrad", "guided-backprop",
                 "deconvolution", "grad-cam", "guided-grad-cam", "occlusion", "lrp-epsilon", "lrp-epsilon-plus",
                 "lrp-epsilon-plus-flat", "lrp-alpha1-beta0", "lrp-alpha2-beta1", "lrp-gamma"):
        assert f"\n{name} " in "\n" + out
    for param in ("steps=", "baseline=", "samples=", "noise=", "layer=", "window=", "stride=", "epsilon=", "gamma="):
        assert param in out


def test_demo_without_display_runs_headless_by_itself(tmp_path):
    """README's first command on a server (issue 12): `napari-xai demo` with no display exits 0 and leaves
    demo-out/ with the relevance, the brain, their sidecars and a 3D screenshot (rendered on a private Xvfb)."""
    import os
    import shutil
    import subprocess
    import sys

    from PIL import Image

    exe = shutil.which("napari-xai", path=os.path.dirname(sys.executable))
    assert exe, "the napari-xai executable is installed beside this Python"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["OMP_NUM_THREADS"] = "1"
    # saliency keeps the run short; the path (no display -> headless run -> Xvfb screenshot) is the README's
    proc = subprocess.run([exe, "demo", "--method", "saliency"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notes = [ln for ln in proc.stderr.splitlines() if "no display" in ln]
    assert len(notes) == 1 and "demo-out/" in notes[0], proc.stderr
    out = tmp_path / "demo-out"
    assert sorted(p.name for p in out.iterdir()) == ["demo_3d.png", "demo_brain.nii.gz", "demo_brain.nii.gz.xai.json",
                                                     "demo_relevance.nii.gz", "demo_relevance.nii.gz.xai.json"]
    record = json.loads((out / "demo_relevance.nii.gz.xai.json").read_text())
    assert record["method"] == "saliency" and record["command"].startswith("napari-xai demo")
    shot = np.asarray(Image.open(out / "demo_3d.png").convert("RGB"))
    assert shot.shape[0] > 300 and shot.shape[1] > 300
    assert shot.reshape(-1, 3).std(0).max() > 10, "the screenshot shows something (not a blank canvas)"
    # running the README command again may replace these files: the demo wrote them (their sidecars say so)
    from napari_xai._demo_app import _written_by_demo

    assert _written_by_demo(sorted(out.iterdir()))
    # a file that is not the demo's is never replaced without --overwrite (refused before any work)
    (out / "demo_brain.nii.gz.xai.json").write_text(json.dumps({"kind": "my-own"}))  # now not the demo's
    refused = subprocess.run([exe, "demo", "--method", "saliency"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode == 2 and "exists" in refused.stderr and "Traceback" not in refused.stderr


def test_internal_error_exit_1(monkeypatch, capsys, tmp_path):
    import importlib

    cli = importlib.import_module("napari_xai.cli.main")  # the module (the package's "main" is the function)

    def boom(args):
        raise RuntimeError("bug")

    monkeypatch.setattr(importlib.import_module("napari_xai.cli.methods"), "cmd_methods", boom)
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["methods"].set_defaults(func=boom)
    assert cli.main(["methods"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_the_record_holds_the_command_as_given(tmp_path, capsys, monkeypatch):
    """Called as a function (a script, a notebook), the record names the arguments of the call, shell-quoted,
    not those of the Python process."""
    monkeypatch.setattr("sys.argv", ["python", "-m", "pytest", "unrelated"])
    folder = tmp_path / "with space"
    folder.mkdir()
    vol = nifti(folder / "t1.nii.gz", shape=(8, 8, 8))
    out = folder / "rel.nii.gz"
    assert main(["explain", str(vol), "--model", "demo", "--method", "saliency", "--out", str(out), "--quiet"]) == 0
    record = json.loads((folder / "rel.nii.gz.xai.json").read_text())
    assert record["command"] == f"napari-xai explain '{vol}' --model demo --method saliency --out '{out}' --quiet"
