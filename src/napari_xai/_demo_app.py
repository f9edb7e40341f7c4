"""``napari-xai demo``: the demo brain, the demo model and an explanation in 3D.

With ``--headless OUTDIR`` the same explanation is written as NIfTI + JSON
sidecar, with a 3D picture rendered offscreen by :func:`napari_xai.core.render.render_3d`
(no viewer, no OpenGL, no display needed; the napari viewer, with its start-up of
seconds, is for the interactive demo). :func:`virtual_display` and
:func:`save_canvas_png` serve the commands that render napari scenes headless.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from .core.errors import UserError

DEMO_SEED = 0
AUTO_OUTDIR = "demo-out"  # where `napari-xai demo` writes when there is no display


def explain_demo(method: str = "integrated-gradients", progress=None):
    """The demo volume, its ground-truth mask, the loaded demo model and the relevance."""
    from .core.demo import demo_volume
    from .core.explain import explain
    from .core.models import load_model

    volume, mask = demo_volume(seed=DEMO_SEED, condition=True)
    model = load_model("demo")
    rel = explain(volume, model, method, progress=progress)
    return volume, mask, model, rel


def populate_viewer(viewer, volume, mask, rel) -> None:
    """Demo brain, ground truth and relevance layers, in 3D, camera on the brain."""
    from ._layers import relevance_layer_data, upsert
    from ._sample_data import demo_layer_data

    upsert(viewer, demo_layer_data(seed=DEMO_SEED, condition=True))
    upsert(viewer, relevance_layer_data(rel))
    # colour scales and the brain's 3D rendering come from _layers (relevance_limits, anatomy_style),
    # the same as after File › Open Sample and the Explain widget
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    camera = viewer.scene.camera if hasattr(getattr(viewer, "scene", None), "camera") else viewer.camera  # napari 0.9
    camera.angles = (-15.0, 35.0, 145.0)
    camera.zoom *= 0.9


def require_display() -> None:
    """Raise :class:`UserError` now (before long work) if a screenshot could not be rendered later."""
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux") or shutil.which("Xvfb"):
        return
    raise UserError("no display and no Xvfb to render the screenshot; install xvfb (apt-get install xvfb "
                    "libgl1-mesa-dri) or leave out --png.")


@contextmanager
def virtual_display():
    """A private Xvfb display when there is none; a no-op when a display exists."""
    if os.environ.get("DISPLAY") or not sys.platform.startswith("linux"):
        yield
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise UserError("no display and no Xvfb to render the 3D screenshot; install xvfb (apt-get install xvfb libgl1-mesa-dri).")
    for num in range(90, 140):
        if not Path(f"/tmp/.X{num}-lock").exists():
            break
    proc = subprocess.Popen(
        [xvfb, f":{num}", "-screen", "0", "1600x1200x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    old = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM")}
    os.environ["DISPLAY"] = f":{num}"
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    try:
        for _ in range(50):
            if Path(f"/tmp/.X11-unix/X{num}").exists():
                break
            time.sleep(0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _written_by_demo(paths: list[Path]) -> bool:
    """True when every existing output is one an earlier demo run wrote (its NIfTIs' sidecars say so)."""
    from .core.provenance import read_sidecar

    for p in paths:
        if p.suffix == ".png":
            continue
        try:
            record = read_sidecar(p)
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or not (record.get("kind") == "demo-brain" or str(record.get("command", "")).startswith("napari-xai demo")):
            return False
    return any(p.suffix != ".png" for p in paths)


def run_headless(outdir: Path, method: str = "integrated-gradients", overwrite: bool = False, auto: bool = False) -> int:
    """Explain the demo and write the relevance, the brain, their sidecars and a 3D screenshot into ``outdir``.

    ``auto`` is the run ``napari-xai demo`` does by itself without a display: it
    replaces the files of an earlier demo run in ``outdir`` (nothing else). The 3D
    picture needs no display (:func:`render_png`).
    """
    from .core.provenance import write_sidecar
    from .core.volumes import save_nifti

    outdir = Path(outdir)
    rel_path = outdir / "demo_relevance.nii.gz"
    brain_path = outdir / "demo_brain.nii.gz"
    shot_path = outdir / "demo_3d.png"
    from .cli.options import check_out_dir
    from .core.volumes import written_or_removed

    targets = (rel_path, brain_path, shot_path)
    existing = [p for p in targets if p.exists()]
    # the automatic headless run (no display) replaces the files of an earlier demo run, and nothing else
    replace = overwrite or bool(auto and existing and _written_by_demo(existing))
    check_out_dir(outdir, [p.name for p in targets], replace, option="OUTDIR", sidecars=True)
    outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    volume, mask, model, rel = explain_demo(method, progress=_print_progress)
    for w in rel.warnings:
        print(f"napari-xai: warning: {w}", file=sys.stderr)
    with written_or_removed():
        save_nifti(brain_path, volume.data[0], volume.affine, header=volume.header)
        write_sidecar(brain_path, {"kind": "demo-brain", "seed": DEMO_SEED, "condition": "atrophy"})
        save_nifti(rel_path, rel.data[0], rel.affine, header=volume.header)
        write_sidecar(rel_path, {**rel.provenance, "output": str(rel_path), "command": "napari-xai demo --headless"})
        probs = ", ".join(f"{k}={v:.3f}" for k, v in rel.probabilities.items())
        print(f"predicted: {rel.provenance['prediction']['name']} ({probs}); explained '{rel.target_name}' with {rel.method}")
        render_png(volume, rel, shot_path)  # the picture joins the same transaction: all files appear, or none
    print(f"wrote {rel_path}, {brain_path} and their .xai.json sidecars ({time.perf_counter() - t0:.1f} s)")
    print(f"wrote {shot_path}")
    return 0


def render_png(volume, rel, path: Path) -> None:
    """The demo's 3D picture (brain surface, relevance (+) hot and (−) cyan as in the viewer, the same contrast
    limits), rendered offscreen and written atomically."""
    import io

    from PIL import Image

    from ._layers import relevance_limits
    from .core.render import render_3d
    from .core.volumes import atomic_write_bytes

    signed = rel.data[0]
    img = render_3d(volume.data[0], volume.affine, signed, relevance_limits(signed))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def preload_torch_extras() -> None:
    """Load torch._dynamo (and triton) before OpenGL exists: see napari_xai/_qt/__init__.py."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # pragma: no cover - optional; the _qt guard handles the rest
        pass


def save_canvas_png(viewer, path: Path) -> None:
    """The viewer's canvas as a PNG file, written atomically (temporary file, then rename)."""
    import io

    from PIL import Image

    from .core.volumes import atomic_write_bytes

    buf = io.BytesIO()
    Image.fromarray(viewer.screenshot(canvas_only=True, flash=False)).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def _print_progress(frac: float, msg: str) -> None:
    print(f"[{frac * 100:5.1f}%] {msg}", file=sys.stderr)


def dock_widgets(viewer, names=("Explain", "Relevance explorer")) -> list:
    """Open napari-xai's docks the way Plugins › napari-xai does, tabbed on the right; the inner widgets."""
    widgets = []
    for name in names:
        _, widget = viewer.window.add_plugin_dock_widget("napari-xai", name, tabify=True)
        widgets.append(widget)
    return widgets


def run_gui(method: str = "integrated-gradients") -> int:
    preload_torch_extras()
    import napari

    viewer = napari.Viewer(title="napari-xai demo")
    volume, mask, model, rel = explain_demo(method, progress=_print_progress)
    populate_viewer(viewer, volume, mask, rel)
    explain, _explorer = dock_widgets(viewer)
    explain.method.value = method
    napari.run()
    return 0
