"""Start-up costs (issue 13): the registry and the command line import without torch and the other heavy
libraries, `napari-xai methods` lists every registered method through the executable, the headless demo needs
neither napari nor a display, and the plain-torch model grid equals MONAI's transforms to the bit."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

HEAVY = ("torch", "captum", "zennit", "monai", "napari", "vispy", "qtpy", "matplotlib", "torchvision")


def _exe() -> str:
    exe = shutil.which("napari-xai", path=os.path.dirname(sys.executable))
    assert exe, "the napari-xai executable is installed beside this Python"
    return exe


def _imported(stderr: str) -> set[str]:
    """Top-level packages named in a ``-X importtime`` report."""
    names = set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+\d+ \|\s*(\S+)", line)
        if m:
            names.add(m.group(1).split(".")[0])
    return names


@pytest.mark.parametrize("module", ["napari_xai.core.methods.catalogue", "napari_xai.cli.main"])
def test_import_without_heavy_libraries(module):
    code = (f"import importlib, sys; m = importlib.import_module({module!r}); "
            "getattr(m, 'build_parser', lambda: None)(); "
            "import napari_xai.core.methods.catalogue as c; assert len(c.all_methods()) > 20; "
            f"print(sorted(n for n in {HEAVY!r} if n in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", f"{module} imports {proc.stdout.strip()}"


@pytest.mark.parametrize("args", [["--help"], ["methods"], ["atlases"]])
def test_light_commands_import_no_heavy_library(args):
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run([_exe(), *args], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "import time:" in proc.stderr  # the report is there, so an empty intersection means something
    heavy = _imported(proc.stderr) & set(HEAVY)
    assert not heavy, f"napari-xai {' '.join(args)} imports {sorted(heavy)}"


def test_methods_command_lists_every_registered_method():
    from napari_xai.core.methods.catalogue import all_methods

    proc = subprocess.run([_exe(), "methods"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = [ln.split()[0] for ln in proc.stdout.splitlines() if ln and not ln.startswith(" ")]
    assert listed == [m.name for m in all_methods()]
    # the families a user reads about in the README, by name (independent of the registry's own list)
    for name in ("saliency", "integrated-gradients", "deeplift", "grad-cam", "grad-cam-plus-plus", "occlusion",
                 "lime", "kernel-shap", "lrp-epsilon-plus-flat", "lrp", "attention-gates"):
        assert name in listed


def test_headless_demo_needs_no_napari_and_no_display(tmp_path):
    """`napari-xai demo --headless OUT` without DISPLAY and without Xvfb on PATH: every file, a real picture,
    and napari / Qt / vispy never imported."""
    from PIL import Image

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env.update(PATH=os.path.dirname(sys.executable), PYTHONPROFILEIMPORTTIME="1", OMP_NUM_THREADS="1")
    out = tmp_path / "out"
    proc = subprocess.run([_exe(), "demo", "--headless", str(out), "--method", "saliency"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _imported(proc.stderr) & {"napari", "vispy", "qtpy", "PyQt5", "PyQt6", "monai"}
    assert sorted(p.name for p in out.iterdir()) == ["demo_3d.png", "demo_brain.nii.gz", "demo_brain.nii.gz.xai.json",
                                                     "demo_relevance.nii.gz", "demo_relevance.nii.gz.xai.json"]
    shot = np.asarray(Image.open(out / "demo_3d.png").convert("RGB")).astype(int)
    assert shot.shape[0] > 300 and shot.shape[1] > 300
    grey = (np.abs(shot[..., 0] - shot[..., 2]) < 20) & (shot.mean(-1) > 60)  # lit brain surface
    colour = (shot[..., 0] > 200) & (shot[..., 2] < 120) | (shot[..., 2] > 200) & (shot[..., 0] < 120)
    assert grey.mean() > 0.2 and colour.sum() > 200, "a brain with hot/cyan relevance on it"


def test_plain_model_grid_equals_monai():
    """ModelGrid's plain-torch steps (no MONAI import) give MONAI's results to the bit: data, affine, steps, the
    inverse for relevance, per-voxel maps and labels; a permuted input still goes through MONAI."""
    from napari_xai.core import geometry
    from napari_xai.core.input_space import InputSpace

    rng = np.random.default_rng(0)
    las = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])
    aniso = np.array([[1.5, 0, 0, -30], [0, 2, 0, -40], [0, 0, 2.5, -20], [0, 0, 0, 1]])
    pil = np.array([[0, 0, -1.0, 90], [-1.0, 0, 0, 10], [0, -1.0, 0, 5], [0, 0, 0, 1]])
    cases = itertools.product([las, aniso, pil], [(20, 23, 17)], [(16, 16, 16), (20, 23, 17), None],
                              ["none", "zscore", "minmax"], [True, False], [False, True])
    plain = 0
    for aff, shape_in, shape, norm, cw, declared in cases:
        extra = {}
        if declared:
            extra = {"orientation": geometry.axcodes(aff),
                     "spacing": tuple(float(v) for v in geometry.voxel_sizes(aff))}
        space = InputSpace(shape=shape, normalization=norm, intensity=(("channel_wise", cw),), **extra)
        data = (rng.normal(size=(2,) + shape_in) * 100 + 50).astype(np.float32)
        data[1] = 7.0  # a constant channel
        ours = geometry.ModelGrid(space, aff, shape_in)
        a = ours.apply(data)
        monai = geometry.ModelGrid(space, aff, shape_in)
        monai._plain_plan = lambda: None  # noqa: B023 - force MONAI's transforms
        b = monai.apply(data)
        if declared and aff is pil:
            assert ours._torch_plan is None  # Orientation changes a PIR input: MONAI does it
            continue
        assert ours._torch_plan is not None
        plain += 1
        assert np.array_equal(a, b) and a.dtype == b.dtype
        assert np.array_equal(ours.affine, monai.affine) and ours.shape == monai.shape
        assert ours.steps == monai.steps and ours.resampled == monai.resampled
        rel = rng.normal(size=a.shape).astype(np.float32)
        for kw in ({}, {"additive": False}):
            assert np.array_equal(ours.to_volume(rel, **kw), monai.to_volume(rel, **kw))
        labels = (rng.random(shape_in) > 0.7).astype(np.uint16)
        assert np.array_equal(ours.to_model(labels), monai.to_model(labels))
        lm = (rng.random(ours.shape) > 0.5).astype(np.uint8)
        assert np.array_equal(ours.to_volume(lm, labels=True), monai.to_volume(lm, labels=True))
    assert plain > 60
