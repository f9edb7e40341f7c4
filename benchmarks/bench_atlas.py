"""Atlas benchmark: loading, resampling, outlines, region tables and lookup speed.

Run::

    .venv/bin/python benchmarks/bench_atlas.py            # core only (no display needed)
    xvfb-run -a .venv/bin/python benchmarks/bench_atlas.py --gui   # + the widget's cursor path

All sizes are realistic: the 1 mm MNI grid (182 x 218 x 182 voxels). Lookup
figures are the time per mouse move; a display refreshes every ~16 ms (60 Hz),
so anything well under a millisecond follows the mouse.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from napari_xai.core import atlas as at

MNI1 = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
SHAPE1 = (182, 218, 182)


def timeit(fn, repeat=5, number=1):
    """Median seconds per call over ``repeat`` rounds of ``number`` calls."""
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        out.append((time.perf_counter() - t) / number)
    return statistics.median(out)


def row(name, seconds, note=""):
    if seconds < 1e-3:
        val = f"{seconds * 1e6:9.1f} µs"
    elif seconds < 1:
        val = f"{seconds * 1e3:9.1f} ms"
    else:
        val = f"{seconds:9.2f} s "
    print(f"{name:58s} {val}  {note}")


def bench_loading():
    print("\n## loading (first load in a process)")
    for name in ("aal", "desikan-killiany"):
        at.clear_caches()
        t = time.perf_counter()
        at.load_atlas(name)
        row(f"load {name} (label atlas)", time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as d:
        os.environ["NAPARI_XAI_CACHE"] = d
        for name in ("harvard-oxford", "juelich"):
            at.clear_caches()
            t = time.perf_counter()
            at.load_atlas(name)
            row(f"load {name} (4D, cold: no disk cache)", time.perf_counter() - t)
            at.clear_caches()
            t = time.perf_counter()
            at.load_atlas(name)
            row(f"load {name} (4D, from the disk cache)", time.perf_counter() - t)
        del os.environ["NAPARI_XAI_CACHE"]


def bench_grid():
    print("\n## onto the 1 mm MNI grid (182x218x182)")
    for name in ("aal", "desikan-killiany", "harvard-oxford"):
        a = at.load_atlas(name)
        src = a.label_volume()
        f = timeit(lambda: at.resample_labels(src, a.affine, SHAPE1, MNI1), repeat=3)
        g = timeit(lambda: at.resample_labels(src, a.affine, SHAPE1, MNI1, fast=False), repeat=1)
        row(f"resample {name}: separable fast path", f, f"general resample_to_grid {g * 1e3:.0f} ms ({g / f:.1f}x)")
    a = at.load_atlas("harvard-oxford")
    row("harvard-oxford: new max-prob threshold (labelling, atlas grid)", timeit(lambda: (a._threshold_cache.clear(), a.label_volume(0.4)), repeat=3))
    g = at.atlas_on_grid(at.load_atlas("aal"), SHAPE1, MNI1)
    row("outlines, 3D boundary volume (all regions)", timeit(lambda: at.outline_volume(g.labels), repeat=3))
    row("outlines, in-plane boundary volume (2D view)", timeit(lambda: at.outline_volume(g.labels, axes=(1, 2)), repeat=3))
    out = g.outlines
    row("outline of chosen regions (select 2 of 120)", timeit(lambda: at.select_regions(out, [4101, 4102]), repeat=5))
    rng = np.random.default_rng(0)
    rel = rng.normal(size=SHAPE1).astype(np.float32)
    cl = np.zeros(SHAPE1, dtype=np.uint16)
    cl[80:100, 90:110, 50:70] = 1
    row("region table (120 regions, + cluster overlaps)", timeit(lambda: at.region_table(g, rel, cl), repeat=3))
    return g


def bench_lookup(g):
    print("\n## lookup (per mouse move)")
    rng = np.random.default_rng(1)
    pts = rng.uniform([-70, -100, -50], [70, 70, 80], size=(2000, 3))
    aal = g.atlas
    ho = at.load_atlas("harvard-oxford")
    gho = at.atlas_on_grid(ho, SHAPE1, MNI1)
    it = iter(range(10**9))

    def one(fn):
        i = next(it) % len(pts)
        return fn(pts[i])

    row("AAL: Atlas.lookup(world mm) -> name", timeit(lambda: one(aal.lookup), repeat=5, number=2000))
    row("AAL: grid lookup (voxel under cursor -> name)", timeit(lambda: one(g.lookup), repeat=5, number=2000))
    row("Harvard-Oxford: lookup + all probabilities", timeit(lambda: one(ho.lookup), repeat=5, number=2000))
    row("Harvard-Oxford: grid lookup", timeit(lambda: one(gho.lookup), repeat=5, number=2000))
    big = rng.uniform([-70, -100, -50], [70, 70, 80], size=(1_000_000, 3))
    t = timeit(lambda: aal.values_at(big), repeat=3)
    row("AAL: values_at, 1e6 points vectorised", t, f"{t / 1e6 * 1e9:.0f} ns/point")
    dirs = rng.normal(size=(2000, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)

    def pick():
        i = next(it) % len(pts)
        return at.first_nonzero_along_ray(g.labels, g.affine, pts[i], dirs[i])

    row("3D pick: first labelled voxel along the ray (1 mm)", timeit(pick, repeat=5, number=500))


def bench_gui(g):
    """The widget's whole cursor path in a real viewer: lookup, labels, status bar, outline layer."""
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_xai._qt.atlas_widget import AtlasWidget

    print("\n## widget cursor path (real napari viewer, 1 mm grid, Xvfb + llvmpipe)")
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.zeros(SHAPE1, dtype=np.float32), affine=MNI1, name="mni1")
    w = AtlasWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_atlas("aal")
    w.load(sync=True)
    app = QApplication.instance()
    rng = np.random.default_rng(2)
    pts = rng.uniform([-60, -90, -40], [60, 60, 70], size=(400, 3))
    for ndisplay in (2, 3):
        viewer.dims.ndisplay = ndisplay
        app.processEvents()
        if ndisplay == 3:
            viewer.camera.set_view_direction((0.0, 0.0, -1.0))
        times, changed, prev = [], 0, None
        for p in pts:
            t = time.perf_counter()
            viewer.cursor.position = tuple(p)  # emits the event the mouse would
            times.append(time.perf_counter() - t)
            changed += w.last_lookup.value != prev
            prev = w.last_lookup.value
        w._outline_timer.stop()
        row(
            f"{ndisplay}D: cursor event -> name in widget + status bar",
            statistics.median(times),
            f"p95 {np.percentile(times, 95) * 1e3:.2f} ms; region changed on {changed}/{len(pts)} moves",
        )
        values = [v for v in sorted(w.grid.atlas.regions) if w.grid.region_bbox(v) is not None][:40]
        upd = []
        for v in values:
            t = time.perf_counter()
            w._set_cursor_outline(v)
            upd.append(time.perf_counter() - t)
        row(f"{ndisplay}D: outline layer update on a region change", statistics.median(upd), f"p95 {np.percentile(upd, 95) * 1e3:.1f} ms; throttled to <= 1 per {w.OUTLINE_INTERVAL_MS} ms")
        draws = []
        for v in values[:10]:
            w._set_cursor_outline(v)
            t = time.perf_counter()
            viewer.window._qt_viewer.canvas._scene_canvas.render()
            draws.append(time.perf_counter() - t)
        row(f"{ndisplay}D: full canvas render (software OpenGL)", statistics.median(draws), "llvmpipe; a GPU is far faster")
    viewer.close()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gui", action="store_true", help="also time the widget's cursor path in a real napari viewer (needs a display)")
    p.add_argument("--skip-loading", action="store_true", help="skip the cold-load timings")
    args = p.parse_args(argv)
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_loading:
        bench_loading()
    g = bench_grid()
    bench_lookup(g)
    if args.gui:
        bench_gui(g)


if __name__ == "__main__":
    main()
