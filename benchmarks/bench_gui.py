"""User-chair latency of the Relevance explorer: from moving a slider to the redrawn canvas (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_gui.py [--sizes demo,1mm] [--steps 6]

The scene is what a user has after the demo: the demo brain, the demo model's
integrated-gradients relevance as its (+)/(−) layers, the Relevance explorer
opened the Plugins-menu way (``add_plugin_dock_widget``) with its "filtered
relevance" and "clusters" layers. Two sizes: the demo grid (2 mm, 91×109×91)
and the same brain and relevance resampled to the 1 mm MNI grid
(182×218×182, 7.2 M voxels; the case that froze the GUI on its first 3D switch).

For each size, in 2D then 3D, the threshold slider and the cluster-size slider
are moved step by step; each step is split into

* **compute**: ``Explorer.update`` (in a worker thread for a threshold step, on
  the GUI thread for a size step) -- the reference: the core alone;
* **layer update**: the widget putting the result into its two layers (``_set_layer``);
  **all of _apply** adds the table, slider ranges and the plots' artists; **guides** is
  the matplotlib plots' ``draw`` calls, which Qt runs once the event loop turns;
* **slider → data**: from ``setValue`` to the layers holding the new data (throttle
  timer, worker thread and hand-over included);
* **canvas paint**: the napari canvas's own paint after the new data (timed by
  vispy's draw event -- napari has no public hook, so the benchmark reaches
  into ``viewer.window._qt_viewer`` -- ending with ``glFinish``, because Mesa's
  llvmpipe otherwise rasterises only at the buffer swap), texture uploads included;
* **slider → redrawn**: from ``setValue`` to the end of that paint, as the user
  waits for it (Qt runs the plots' deferred draws in the same event loop, so
  they may fall before the paint).

The **first 3D switch** is timed from ``viewer.dims.ndisplay = 3`` to the end
of the first 3D paint (split into napari's slicing/scene set-up and the paint,
which uploads every volume as a 3D texture and compiles the shaders), followed
by a second paint for comparison.

Medians and maxima are printed, and each as a ratio to the compute median of
the same run; the load average is printed because the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch._dynamo  # noqa: E402,F401  - before OpenGL (see napari_xai/_qt/__init__.py)

MNI_1MM = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
SHAPE_1MM = (182, 218, 182)


def scene_data(size: str):
    """(brain layer tuples, relevance) at the demo grid or resampled to 1 mm."""
    from napari_xai._sample_data import demo_layer_data
    from napari_xai.core import geometry
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.explain import explain
    from napari_xai.core.models import load_model

    vol, _ = demo_volume(seed=0, condition=True)
    rel = explain(vol, load_model("demo", device="cpu"), "integrated-gradients")
    (brain, kw, _), _ = demo_layer_data()
    if size == "1mm":
        brain = geometry.resample_to_grid(brain, vol.affine, SHAPE_1MM, MNI_1MM, order=1).astype(np.float32)
        data = geometry.resample_to_grid(rel.data[0], rel.affine, SHAPE_1MM, MNI_1MM, order=1).astype(np.float32)
        rel.data = data[None]
        rel.affine = MNI_1MM
        kw = {**kw, "affine": MNI_1MM, "metadata": {**kw["metadata"], "affine": MNI_1MM}}
    return (brain, kw), rel


def med(xs):
    return statistics.median(xs) if xs else float("nan")


class Probe:
    """Times the widget's compute, layer update and guides (wrapping its methods; nothing else changes)."""

    def __init__(self, widget):
        self.w = widget
        self.compute: list[float] = []
        self.apply: list[float] = []
        self.guides: list[float] = []
        self.set_layer: list[float] = []
        self.applied_at = self.data_at = None
        ex = widget._explorer
        original_update = ex.update

        def update(*a, **k):
            t0 = time.perf_counter()
            try:
                return original_update(*a, **k)
            finally:
                self.compute.append(time.perf_counter() - t0)

        ex.update = update
        original_apply = widget._apply

        def apply(res):
            t0 = time.perf_counter()
            original_apply(res)
            t1 = time.perf_counter()
            self.apply.append(t1 - t0)
            self.applied_at = t1

        widget._apply = apply
        original_set_layer = widget._set_layer

        def set_layer(*a, **k):
            t0 = time.perf_counter()
            original_set_layer(*a, **k)
            self.data_at = time.perf_counter()
            self.set_layer.append(self.data_at - t0)

        widget._set_layer = set_layer
        for canvas in (widget.hist_canvas, widget.slice_canvas):
            original_draw = canvas.draw

            def draw(*a, _orig=original_draw, **k):
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    self.guides.append(time.perf_counter() - t0)

            canvas.draw = draw

    def reset(self):
        self.compute.clear()
        self.apply.clear()
        self.guides.clear()
        self.set_layer.clear()
        self.applied_at = self.data_at = None


class Draws:
    """Start and end of every paint of the napari canvas (vispy's draw event, first and last callback)."""

    def __init__(self, viewer):
        canvas = viewer.window._qt_viewer.canvas._scene_canvas  # napari has no public draw hook
        self.spans: list[list] = []
        canvas.events.draw.connect(lambda _e: self.spans.append([time.perf_counter(), None]), position="first")
        canvas.events.draw.connect(self._end, position="last")

    def _end(self, _e):
        from vispy.gloo import gl

        gl.glFinish()  # software OpenGL renders lazily (at the buffer swap): wait until this frame is really drawn
        if self.spans:
            self.spans[-1][1] = time.perf_counter()

    def first_after(self, t: float):
        return next(((a, b) for a, b in self.spans if b is not None and a >= t), None)


def wait_for_draw(app, draws: Draws, after: float, widget=None, timeout: float = 300.0):
    """Run the event loop until the canvas was painted after ``after`` (and the widget is idle)."""
    t_end = time.perf_counter() + timeout
    while time.perf_counter() < t_end:
        app.processEvents()
        span = draws.first_after(after)
        if span is not None and (widget is None or widget.idle):
            return span
    raise TimeoutError("the canvas was not redrawn")


def settle(app, n=3):
    for _ in range(n):
        app.processEvents()


def run_size(size: str, steps: int, rows: list, only_first_3d: bool = False) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_xai._layers import relevance_layer_data, upsert
    from napari_xai.core import postprocess as pp

    t_data = time.perf_counter()
    (brain, kw), rel = scene_data(size)
    print(f"\n## {size}: volume {brain.shape}, scene data in {time.perf_counter() - t_data:.1f} s")
    viewer = napari.Viewer(show=True, title=f"bench_gui {size}")
    viewer.window.resize(1400, 900)
    app = QApplication.instance()
    viewer.add_image(brain, **kw)
    upsert(viewer, relevance_layer_data(rel))
    _, widget = viewer.window.add_plugin_dock_widget("napari-xai", "Relevance explorer")
    widget.wait(300000)
    widget.set_params(pp.PostParams(sigma_mm=2.0, scale="max", threshold=0.3, min_size=10, connectivity=18))
    widget.wait(300000)
    settle(app, 10)
    for layer in viewer.layers:
        print(f"   layer {layer.name!r}: {type(layer).__name__}, {layer.data.dtype}, {layer.data.shape}")
    probe = Probe(widget)
    draws = Draws(viewer)
    print(f"   canvas {tuple(viewer.window._qt_viewer.canvas._scene_canvas.size)} px")

    # the first 3D switch (the GUI froze here for ~27 s at 1 mm)
    viewer.camera.angles = (-15.0, 35.0, 145.0)
    settle(app, 5)
    t0 = time.perf_counter()
    viewer.dims.ndisplay = 3
    t_switch = time.perf_counter() - t0
    a, b = wait_for_draw(app, draws, t0 + t_switch)
    first = b - t0
    viewer.window._qt_viewer.canvas._scene_canvas.update()
    a2, b2 = wait_for_draw(app, draws, b)
    rows.append((size, "first 3D switch", first, t_switch, b - a, b2 - a2))
    print(f"first 3D switch: {first:.2f} s to the first 3D frame (napari set-up {t_switch:.2f} s, first paint "
          f"{b - a:.2f} s); a second paint {b2 - a2:.2f} s")
    for layer in viewer.layers:  # what each layer costs a 3D paint on its own
        for other in viewer.layers:
            other.visible = other is layer
        t1 = time.perf_counter()
        viewer.window._qt_viewer.canvas._scene_canvas.update()
        a1, b1 = wait_for_draw(app, draws, t1)
        print(f"   3D paint with only {layer.name!r} ({getattr(layer, 'rendering', '')}, {layer.data.shape}): "
              f"{b1 - a1:.2f} s")
    for layer in viewer.layers:
        layer.visible = True
    if only_first_3d:
        viewer.close()
        return
    t0 = time.perf_counter()
    viewer.dims.ndisplay = 2
    wait_for_draw(app, draws, t0)

    top = widget.result.max_abs
    thresholds = list(np.linspace(0.25, 0.5, steps) * top)
    sizes = [5, 20, 60, 200, 50, 10, 3, 30][:max(steps, 2)]
    for nd in (2, 3):
        if viewer.dims.ndisplay != nd:
            t0 = time.perf_counter()
            viewer.dims.ndisplay = nd
            wait_for_draw(app, draws, t0)
        settle(app, 5)
        for kind, values in (("threshold", thresholds), ("cluster size", sizes)):
            to_data, to_drawn, comp, layers, upd, guides, paint = [], [], [], [], [], [], []
            for x in values:
                probe.reset()
                t0 = time.perf_counter()
                if kind == "threshold":
                    widget.threshold_slider.setValue(float(x))
                else:
                    widget.min_size_spin.setValue(float(x))
                widget.wait(300000)
                data_at = probe.data_at or time.perf_counter()
                a, b = wait_for_draw(app, draws, data_at, widget)
                settle(app, 5)  # the plots' deferred draws, if not run yet
                to_data.append(data_at - t0)
                to_drawn.append(b - t0)
                paint.append(b - a)
                comp.append(sum(probe.compute))
                layers.append(sum(probe.set_layer))
                upd.append(sum(probe.apply))
                guides.append(sum(probe.guides))
            rows.append((size, f"{nd}D {kind}", to_data, to_drawn, comp, layers, upd, guides, paint))
            ref = med(comp)
            print(f"{nd}D {kind:12s}: slider→data median {med(to_data) * 1e3:5.0f} ms (max {max(to_data) * 1e3:5.0f}), "
                  f"slider→redrawn median {med(to_drawn) * 1e3:5.0f} ms (max {max(to_drawn) * 1e3:5.0f}); "
                  f"compute {ref * 1e3:.0f} ms, layer update {med(layers) * 1e3:.0f} ms (all of _apply "
                  f"{med(upd) * 1e3:.0f} ms), guides {med(guides) * 1e3:.0f} ms, canvas paint {med(paint) * 1e3:.0f} ms; "
                  f"ratios to compute: data {med(to_data) / ref:.1f}×, redrawn {med(to_drawn) / ref:.1f}×")
    viewer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="demo,1mm", help="comma-separated: demo, 1mm")
    ap.add_argument("--steps", type=int, default=6, help="slider steps per sweep")
    ap.add_argument("--first-3d-only", action="store_true", help="only the first 3D switch")
    args = ap.parse_args(argv)
    import napari
    import vispy

    print(f"# bench_gui: python {platform.python_version()}, napari {napari.__version__}, vispy {vispy.__version__}, "
          f"cores {os.cpu_count()}, load average at start {os.getloadavg()[0]:.2f}")
    rows: list = []
    for size in args.sizes.split(","):
        run_size(size.strip(), args.steps, rows, args.first_3d_only)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
