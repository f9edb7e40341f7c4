"""What each 3D level-of-detail option saves: one layer's 3D paint at 1 mm, one layer visible at a time (Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_lod.py [--rounds 5] [--size 1400x900]

The scene of ``bench_gui.py`` at 1 mm (the demo brain and the demo's integrated-gradients relevance resampled to
182×218×182), without docks. For the brain (attenuated MIP) and each relevance half ((+) and (−): MIP, additive)
the variants are painted in turn, interleaved over ``--rounds`` rounds (the machine is shared, so the best of
the rounds is the figure; medians are printed too), each as a ratio to the full layer:

* **crop > lo**: the box of the voxels above the layer's lower contrast limit, one voxel wider (what
  ``napari_xai._qt.lod`` shows in 3D; the same picture for these layers);
* **down k**: a k× downsampled proxy (mean for the brain, max-pooling for the relevance MIPs, so peaks stay),
  placed by its affine (lossy: what option (a), a 3D level of detail, would show);
* **down 2 + crop > lo**: both;
* the brain in other rendering modes (a different picture), for scale.

Then the whole scene (brain and both halves) full, with the crop, and with the crop plus a 2× brain.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import bench_gui as bg  # noqa: E402  - the same scene, draw timer and event-loop helpers


def downsample(a: np.ndarray, k: int, how: str) -> np.ndarray:
    """``a`` reduced k× per axis (zero-padded to a multiple of k): block mean or block max."""
    s = tuple(-(-n // k) * k for n in a.shape)
    pad = np.zeros(s, a.dtype)
    pad[tuple(slice(0, n) for n in a.shape)] = a
    b = pad.reshape(s[0] // k, k, s[1] // k, k, s[2] // k, k)
    return b.max(axis=(1, 3, 5)) if how == "max" else b.mean(axis=(1, 3, 5), dtype=np.float32)


def downsampled_affine(affine, k: int) -> np.ndarray:
    """The affine of a k× block-downsampled grid: block centres on the full grid's world positions."""
    s = np.diag([k, k, k, 1.0])
    s[:3, 3] = (k - 1) / 2
    return np.asarray(affine, float) @ s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", default="1400x900", help="window size, WxH")
    args = ap.parse_args(argv)
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_xai._layers import relevance_layer_data
    from napari_xai.core.geometry import above_box, cropped_affine

    w, h = (int(x) for x in args.size.split("x"))
    (brain, kw), rel = bg.scene_data("1mm")
    viewer = napari.Viewer(show=True, title="bench_lod")
    viewer.window.resize(w, h)
    app = QApplication.instance()
    draws = bg.Draws(viewer)

    def paint() -> float:
        t1 = time.perf_counter()
        viewer.window._qt_viewer.canvas._scene_canvas.update()
        a, b = bg.wait_for_draw(app, draws, t1)
        return b - a

    pos, neg = relevance_layer_data(rel)
    variants: dict[str, object] = {}

    def add(label, data, affine, src, **over):
        k = {key: v for key, v in src.items() if key not in ("affine", "metadata", "name")}
        k.update(over)
        variants[label] = viewer.add_image(data, affine=affine, name=label, **k)

    add("brain", brain, kw["affine"], kw)
    lo_brain = float(variants["brain"].contrast_limits[0])
    for name, (data, k0, _) in (("(+)", pos), ("(−)", neg)):
        add(name, data, k0["affine"], k0)
    for name, data, k0, how in (("brain", brain, kw, "mean"), ("(+)", pos[0], pos[1], "max"),
                                ("(−)", neg[0], neg[1], "max")):
        aff = k0["affine"]
        lo = lo_brain if name == "brain" else float(k0["contrast_limits"][0])
        box = above_box(data, lo, pad=1)
        if name != "brain":
            add(f"{name} crop > lo", data[box], cropped_affine(aff, box), k0)
        for k in ((2, 3, 4) if name == "brain" else (2, 4)):
            d = downsample(data, k, how)
            add(f"{name} down {k}", d, downsampled_affine(aff, k), k0)
        if name != "brain":
            d = downsample(data, 2, how)
            b2 = above_box(d, lo, pad=1)
            add(f"{name} down 2 + crop > lo", d[b2], cropped_affine(downsampled_affine(aff, 2), b2), k0)
    for mode in ("mip", "translucent"):
        add(f"brain, rendering {mode}", brain, kw["affine"], kw, rendering=mode)
    for layer in viewer.layers:
        layer.visible = False
    viewer.camera.angles = (-15.0, 35.0, 145.0)
    viewer.dims.ndisplay = 3
    bg.settle(app, 10)
    for layer in viewer.layers:  # upload every texture once
        layer.visible = True
        paint()
        layer.visible = False
    scenes = {"scene: full": ["brain", "(+)", "(−)"],
              "scene: relevance crop > lo (napari_xai._qt.lod)": ["brain", "(+) crop > lo", "(−) crop > lo"],
              "scene: crop > lo + brain down 2": ["brain down 2", "(+) crop > lo", "(−) crop > lo"]}
    canvas = tuple(viewer.window._qt_viewer.canvas._scene_canvas.size)
    print(f"# bench_lod: canvas {canvas} px, load average {os.getloadavg()[0]:.2f}, {args.rounds} rounds")
    times: dict[str, list[float]] = {k: [] for k in [*variants, *scenes]}
    for _ in range(args.rounds):
        for name, layer in variants.items():
            layer.visible = True
            times[name].append(paint())
            layer.visible = False
        for name, members in scenes.items():
            for m in members:
                variants[m].visible = True
            times[name].append(paint())
            for m in members:
                variants[m].visible = False
    ref = {"brain": min(times["brain"]), "(+)": min(times["(+)"]), "(−)": min(times["(−)"]),
           "scene": min(times["scene: full"])}
    for name, ts in times.items():
        base = next(v for k, v in ref.items() if name.startswith(k))
        shape = getattr(variants.get(name), "data", np.empty(0)).shape if name in variants else ""
        print(f"{name:52s} best {min(ts) * 1e3:6.0f} ms  median {statistics.median(ts) * 1e3:6.0f} ms  "
              f"{min(ts) / base:5.2f}× the full  {shape}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
