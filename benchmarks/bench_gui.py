"""User-chair latency of the Relevance explorer: from moving a slider to the redrawn canvas (run under Xvfb).

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python benchmarks/bench_gui.py [--sizes demo,1mm] [--steps 6]

The scene is what a user has after the demo: the demo brain, the demo model's
integrated-gradients relevance as its (+)/(−) layers, the Relevance explorer
opened the Plugins-menu way (``add_plugin_dock_widget``) with its "filtered
relevance" and "clusters" layers. Two sizes: the demo grid (2 mm, 91×109×91)
and the same brain and relevance resampled to the 1 mm MNI grid
(182×218×182, 7.2 M voxels; the case that froze the GUI on its first 3D switch).

For each size, in 2D, in 3D, in 3D without the 3D crop of the relevance
layers (``napari_xai._qt.lod``: in 3D each (+)/(−) layer holds only the box of
its voxels above the lower contrast limit; this pass shows them whole, as
before that crop, in the same run) and in 3D with only the explorer's two
layers visible, the threshold slider and the cluster-size slider are moved step
by step; each step is split into

* **compute**: ``Explorer.update`` (in a worker thread for a threshold step, on
  the GUI thread for a size step) -- the core alone;
* **display array**: building what the layers show (the cropped labels and the
  masked filtered relevance, or their in-place update), with the widget's layer
  bookkeeping: the layer updater's time minus napari's own ``layer.data = ...``;
* **layer set**: napari's ``layer.data = ...`` (timed on the Image and Labels
  classes, whatever code calls it); **all of _apply** adds the table, slider
  ranges and readouts;
* **guides**: the matplotlib plots' drawing (before issue 13: the canvases'
  ``draw`` calls inside the step; after: the coalesced ``Guides.draw_now``,
  which runs after the layers);
* **render** (canvas paint): napari's own paint of the canvas after the new data
  (timed by vispy's draw event -- napari has no public hook, so the benchmark
  reaches into ``viewer.window._qt_viewer`` -- ending with ``glFinish``, because
  Mesa's llvmpipe otherwise rasterises only at the buffer swap);
* **slider → data**: from ``setValue`` to the layers holding the new data;
* **slider → redrawn**: from ``setValue`` to the end of that paint, as the user
  waits for it.

The **first 3D switch** is timed from ``viewer.dims.ndisplay = 3`` to the end
of the first 3D paint (split into napari's slicing/scene set-up and the paint,
which uploads every volume as a 3D texture and compiles the shaders), followed
by a second paint for comparison, and by what each layer costs a 3D paint on
its own (best of 3), with and without the 3D crop.

Medians and maxima are printed, and each as a ratio to the compute median of
the same run; the load average is printed because the machine is shared.

**References measured in the same run** (on the explorer's own filtered map):
the plain ``scipy.ndimage`` implementation of the step (threshold: ``label`` +
``bincount`` + a lookup; cluster size: ``bincount`` + a lookup over the label
volume) and the physical floor, one numpy pass over the volume (``np.copyto`` of
the float32 map). Every median is also printed as a ratio to these.

**Drag watchdog.** A slider drag is simulated as a sequence of value changes
delivered through the Qt event loop (one every 16 ms, a 60 Hz mouse); a QTimer
firing every 10 ms records the gaps between its ticks, and the longest gap minus
10 ms is the longest the main thread was blocked during the drag (until the
layers, the guides and the canvas show the last value, which is checked).
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
LAYER_SET = None  # LayerSetTimer, made in main() (needs napari)


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


class LayerSetTimer:
    """Times napari's own ``layer.data = ...`` (Image and Labels), whatever widget code calls it."""

    def __init__(self):
        from napari.layers import Image, Labels

        self.times: list[float] = []
        for cls in (Image, Labels):
            prop = next(c.__dict__["data"] for c in cls.__mro__ if "data" in c.__dict__)

            def fset(layer, value, _set=prop.fset):
                t0 = time.perf_counter()
                try:
                    _set(layer, value)
                finally:
                    self.times.append(time.perf_counter() - t0)

            setattr(cls, "data", property(prop.fget, fset, prop.fdel, prop.__doc__))


class Probe:
    """Times the widget's compute, layer update and guides (wrapping its methods; nothing else changes).

    Works on the one-class widget (before issue 13) and on the composed one (``widget.layer_updater``,
    ``widget.guides``)."""

    def __init__(self, widget, layer_set: LayerSetTimer):
        self.w = widget
        self.layer_set = layer_set
        self.compute: list[float] = []
        self.apply: list[float] = []
        self.guides: list[float] = []
        self.set_layer: list[float] = []
        self.applied_at = self.data_at = None
        self.ex = None
        self.wrap_explorer()
        self.wrap_widget()

    def wrap_explorer(self):
        ex = self.w._explorer
        if ex is None or ex is self.ex:
            return
        self.ex = ex
        original_update = ex.update

        def update(*a, **k):
            t0 = time.perf_counter()
            try:
                return original_update(*a, **k)
            finally:
                self.compute.append(time.perf_counter() - t0)

        ex.update = update

    def wrap_widget(self):
        widget = self.w
        original_apply = widget._apply

        def apply(res):
            t0 = time.perf_counter()
            original_apply(res)
            t1 = time.perf_counter()
            self.apply.append(t1 - t0)
            self.applied_at = t1

        widget._apply = apply
        owner = getattr(widget, "layer_updater", widget)  # the composed widget's layer updater, or the old class
        name = "show" if owner is not widget else "_set_layer"
        original_set_layer = getattr(owner, name)

        def set_layer(*a, **k):
            t0 = time.perf_counter()
            original_set_layer(*a, **k)
            self.data_at = time.perf_counter()
            self.set_layer.append(self.data_at - t0)

        setattr(owner, name, set_layer)
        guides = getattr(widget, "guides", None)
        targets = [(guides, "draw_now")] if guides is not None else [(c, "draw") for c in
                                                                       (widget.hist_canvas, widget.slice_canvas)]
        for obj, attr in targets:
            original_draw = getattr(obj, attr)

            def draw(*a, _orig=original_draw, **k):
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    self.guides.append(time.perf_counter() - t0)

            setattr(obj, attr, draw)
        if guides is not None:  # its timer is connected to the bound method: connect it to the wrapper
            guides.timer.timeout.disconnect()
            guides.timer.timeout.connect(guides.draw_now)

    def reset(self):
        self.wrap_explorer()
        self.compute.clear()
        self.apply.clear()
        self.guides.clear()
        self.set_layer.clear()
        self.layer_set.times.clear()
        self.applied_at = self.data_at = None


class Watchdog:
    """A QTimer ticking every ``period_ms``: the longest gap between ticks is the longest main-thread block."""

    def __init__(self, period_ms: int = 10):
        from qtpy.QtCore import QTimer

        self.period = period_ms / 1e3
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(period_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self):
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> tuple[float, int]:
        """Stop; (the longest block in seconds: the longest gap minus the period, blocks over 100 ms)."""
        self.timer.stop()
        self.ticks.append(time.perf_counter())
        blocks = np.diff(self.ticks) - self.period
        return (max(float(blocks.max()), 0.0) if blocks.size else 0.0), int((blocks > 0.1).sum())


def references(widget, threshold: float, min_size: float, repeats: int = 3) -> dict:
    """Plain scipy.ndimage steps and the one-numpy-pass floor, on the explorer's own filtered map."""
    from scipy import ndimage

    from napari_xai.core import postprocess as pp

    res = widget.result
    filt = res.filtered
    st = pp.structure(res.params.connectivity)

    def best(fn):
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return min(out)

    def plain_threshold():
        lab, n = ndimage.label(np.abs(filt) > threshold, structure=st)
        sizes = np.bincount(lab.ravel())
        keep = sizes >= min_size
        keep[0] = False
        return np.where(keep[lab], lab, 0).astype(np.uint16)

    lab, _ = ndimage.label(np.abs(filt) > threshold, structure=st)

    def plain_size():
        sizes = np.bincount(lab.ravel())
        keep = sizes >= min_size
        keep[0] = False
        return np.where(keep[lab], lab, 0).astype(np.uint16)

    buf = np.empty_like(filt)
    return {"threshold": best(plain_threshold), "cluster size": best(plain_size),
            "floor": best(lambda: np.copyto(buf, filt))}


def drag(app, widget, draws, kind: str, values, interval_ms: int = 16) -> tuple[float, int, float, bool]:
    """Deliver ``values`` to a slider through the event loop; (longest block s, blocks over 100 ms,
    drag-to-settled s, final state right)."""
    from qtpy.QtCore import QTimer

    slider = widget.threshold_slider if kind == "threshold" else widget.size_slider
    dog = Watchdog()
    settle(app, 5)
    dog.start()
    t0 = time.perf_counter()
    fired = []
    for i, v in enumerate(values):
        QTimer.singleShot(i * interval_ms, lambda v=v: (slider.setValue(v), fired.append(time.perf_counter())))
    t_end = time.perf_counter() + 300
    while time.perf_counter() < t_end:
        app.processEvents()
        guides_idle = getattr(getattr(widget, "guides", None), "pending", False) is False
        if len(fired) == len(values) and widget.idle and guides_idle and draws.first_after(fired[-1]):
            break
    settle(app, 10)
    total = time.perf_counter() - t0
    block, n_long = dog.stop()
    p = widget.result.params
    if kind == "threshold":
        ok = abs(p.threshold - float(widget.threshold_slider.value())) < 1e-9
    else:
        ok = abs(p.min_size - float(widget.min_size_spin.value())) < 1e-9
    return block, n_long, total, ok


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


def relevance_crop(viewer):
    """The viewer's 3D crop of the relevance layers (``napari_xai._qt.lod``), or None in code without it."""
    try:
        from napari_xai._qt import lod
    except ImportError:
        return None
    return lod.install(viewer)


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
    probe = Probe(widget, LAYER_SET)
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
    crop3d = relevance_crop(viewer)
    for on in ((True, False) if crop3d is not None else (None,)):
        if crop3d is not None:
            crop3d.enabled = on
            print(f"   {'with' if on else 'without'} the 3D crop of the relevance layers (napari_xai._qt.lod):")
        for layer in viewer.layers:  # what each layer costs a 3D paint on its own (best of 3)
            for other in viewer.layers:
                other.visible = other is layer
            best = []
            for _ in range(3):
                t1 = time.perf_counter()
                viewer.window._qt_viewer.canvas._scene_canvas.update()
                a1, b1 = wait_for_draw(app, draws, t1)
                best.append(b1 - a1)
            print(f"   3D paint with only {layer.name!r} ({getattr(layer, 'rendering', '')}, {layer.data.shape}): "
                  f"{min(best) * 1e3:.0f} ms")
        for layer in viewer.layers:
            layer.visible = True
    if crop3d is not None:
        crop3d.enabled = True
    if only_first_3d:
        viewer.close()
        return
    t0 = time.perf_counter()
    viewer.dims.ndisplay = 2
    wait_for_draw(app, draws, t0)

    top = widget.result.max_abs
    thresholds = list(np.linspace(0.25, 0.5, steps) * top)
    sizes = [5, 20, 60, 200, 50, 10, 3, 30][:max(steps, 2)]
    refs = references(widget, 0.3 * top, 10)
    print(f"references (same run): plain scipy threshold step {refs['threshold'] * 1e3:.0f} ms, plain scipy "
          f"cluster-size step {refs['cluster size'] * 1e3:.0f} ms, floor (one numpy pass) {refs['floor'] * 1e3:.1f} ms")
    own = {id(ly) for ly in widget.layer_updater.own()} if hasattr(widget, "layer_updater") else \
        {id(ly) for ly in widget._layers.values()}
    views = ["2D", "3D", "3D, explorer layers only"]
    if crop3d is not None:  # the whole scene once more with the relevance layers whole (as before the 3D crop)
        views.insert(2, "3D, no 3D crop")
    for view in views:
        nd = 2 if view == "2D" else 3
        if crop3d is not None:
            crop3d.enabled = view != "3D, no 3D crop"
        for layer in viewer.layers:  # the last pass hides the brain and the (+)/(−) maps
            layer.visible = view != "3D, explorer layers only" or id(layer) in own
        if viewer.dims.ndisplay != nd:
            t0 = time.perf_counter()
            viewer.dims.ndisplay = nd
            wait_for_draw(app, draws, t0)
        settle(app, 5)
        for kind, values in (("threshold", thresholds), ("cluster size", sizes)):
            to_data, to_drawn, comp, layers, upd, guides, paint, lset = [], [], [], [], [], [], [], []
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
                widget.wait(300000)  # the guides' coalesced draw (after the redraw the user waits for)
                to_data.append(data_at - t0)
                to_drawn.append(b - t0)
                paint.append(b - a)
                comp.append(sum(probe.compute))
                layers.append(sum(probe.set_layer))
                lset.append(sum(probe.layer_set.times))
                upd.append(sum(probe.apply))
                guides.append(sum(probe.guides))
            rows.append((size, f"{view} {kind}", to_data, to_drawn, comp, layers, upd, guides, paint))
            ref = med(comp)
            display = [max(a - b, 0.0) for a, b in zip(layers, lset)]
            plain, floor = refs[kind], refs["floor"]
            print(f"{view} {kind}: slider→redrawn median {med(to_drawn) * 1e3:5.0f} ms (max "
                  f"{max(to_drawn) * 1e3:5.0f}), slider→data {med(to_data) * 1e3:5.0f} ms; split (medians): compute "
                  f"{ref * 1e3:.1f} ms, display array (+ layer bookkeeping) {med(display) * 1e3:.1f} ms, layer set {med(lset) * 1e3:.1f} ms, "
                  f"all of _apply {med(upd) * 1e3:.0f} ms, guides {med(guides) * 1e3:.0f} ms, render "
                  f"{med(paint) * 1e3:.0f} ms")
            print(f"   ratios: redrawn / plain scipy {med(to_drawn) / plain:.2f}×, redrawn / floor "
                  f"{med(to_drawn) / floor:.1f}×, compute / plain scipy {ref / plain:.3f}×, compute / floor "
                  f"{ref / floor:.2f}×")
            n = max(steps * 3, 12)
            if kind == "threshold":
                path = list(np.linspace(0.3, 0.45, n) * top)
            else:
                pos = widget.size_slider.value()
                path = [int(x) for x in np.linspace(pos, min(pos + 400, 1000), n)]
            block, n_long, total, ok = drag(app, widget, draws, kind, path)
            print(f"   drag of {n} {kind} values (16 ms apart, via the event loop): longest main-thread block "
                  f"{block * 1e3:.0f} ms ({n_long} blocks over 100 ms), settled after {total * 1e3:.0f} ms, final state {'right' if ok else 'WRONG'}")
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
    global LAYER_SET
    LAYER_SET = LayerSetTimer()
    rows: list = []
    for size in args.sizes.split(","):
        run_size(size.strip(), args.steps, rows, args.first_3d_only)
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.stdout.reconfigure(line_buffering=True)
    sys.exit(main())
