"""Benchmark of the explorer's live updates on a 1 mm MNI-sized volume (182×218×182).

Measures the compute of one slider update -- what the widget waits for, without
drawing -- for

* the cluster-size slider (``Explorer.update(min_size=...)``: labels + table slice),
* the threshold slider (``Explorer.update(threshold=...)``: labelling, table,
  histogram and the labels at the current minimum size),

and the same updates done two other ways, in the same run on the same data:

* **plain**: ``scipy.ndimage.label`` of r > t and of r < -t, ``bincount`` of the
  sizes and a mask of the kept clusters, from scratch on every update;
* **seed**: the seed app's way, ``skimage.measure.label`` plus one full-volume
  removal (``labels[labels == i] = 0``) per small cluster.

Inputs (relevance on the 1 mm MNI grid):

* ``noise``: Gaussian-smoothed white noise (σ = 3 mm) inside the MNI152 brain mask;
* ``demo``: the demo model's integrated-gradients relevance for a demo brain
  (2 mm), resampled to 1 mm through world coordinates -- when the demo model is
  available; otherwise a note is printed.

The threshold sweep covers the thresholds that keep 10 % down to 0.1 % of the
brain voxels (the 90th..99.9th percentiles of |r| in the brain, in drag order)
with a minimum cluster size of 10 voxels; ``--wide`` adds a sweep from the 50th
percentile. The cluster-size sweep drags the minimum size from 1 voxel to the
largest cluster and back (log steps) at the 97.5th percentile. The references
are timed on steps spread evenly over the same sweeps. Wall-clock and CPU (thread)
times are printed, with the load average, because this machine is shared.

Run::

    .venv/bin/python benchmarks/bench_explorer.py            # full (a few minutes)
    .venv/bin/python benchmarks/bench_explorer.py --quick    # fewer repetitions
    xvfb-run -a .venv/bin/python benchmarks/bench_explorer.py --no-demo --gui   # + the widget in napari
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_xai.core import geometry  # noqa: E402
from napari_xai.core import postprocess as pp  # noqa: E402
from napari_xai.core.explorer import Explorer  # noqa: E402

SHAPE = (182, 218, 182)
MNI_1MM = np.array([[-1.0, 0, 0, 90], [0, 1.0, 0, -126], [0, 0, 1.0, -72], [0, 0, 0, 1]])
SIGMA_MM = 2.0
CONNECTIVITY = 18
MIN_SIZE = 10.0  # voxels, during the threshold sweep


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------


def brain_mask() -> np.ndarray:
    from nilearn import datasets

    img = datasets.load_mni152_brain_mask(resolution=1)
    m = (np.asarray(img.dataobj) > 0).astype(np.float32)
    return geometry.resample_to_grid(m, img.affine, SHAPE, MNI_1MM, order=0) > 0.5


def noise_relevance(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(SHAPE).astype(np.float32)
    return (ndimage.gaussian_filter(white, 3.0) * mask).astype(np.float32)


def demo_relevance() -> tuple[np.ndarray | None, str]:
    try:
        from napari_xai.core.demo import demo_volume
        from napari_xai.core.explain import explain
        from napari_xai.core.models import load_model
    except Exception as exc:  # pragma: no cover - depends on the checkout
        return None, f"demo relevance skipped: {type(exc).__name__}: {exc}"
    try:
        vol, _ = demo_volume(seed=3, condition=True)
        model = load_model("demo", device="cpu")
        rel = explain(vol, model, "integrated-gradients")
    except Exception as exc:
        return None, f"demo relevance skipped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    data = geometry.resample_to_grid(rel.data[0], rel.affine, SHAPE, MNI_1MM, order=1)
    return data.astype(np.float32), f"demo relevance: integrated-gradients, {rel.target_name}, resampled 2 mm -> 1 mm"


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------

STRUCT = ndimage.generate_binary_structure(3, 2)  # 18-connectivity


def plain_update(f: np.ndarray, t: float, min_vox: float) -> np.ndarray:
    """ndimage.label per sign + bincount + a mask of the kept clusters, from scratch."""
    lp, npos = ndimage.label(f > t, STRUCT)
    ln, nneg = ndimage.label(f < -t, STRUCT)
    sp = np.bincount(lp.ravel(), minlength=npos + 1)
    sn = np.bincount(ln.ravel(), minlength=nneg + 1)
    keep_p = sp >= min_vox
    keep_n = sn >= min_vox
    keep_p[0] = keep_n[0] = False
    return keep_p[lp] | keep_n[ln]


def seed_update(f: np.ndarray, t: float, min_vox: float) -> np.ndarray:
    """The seed's way: skimage.measure.label, then one full-volume removal per small cluster."""
    from skimage import measure

    out = []
    for mask in (f > t, f < -t):
        lab = measure.label(mask, connectivity=2)
        sizes = np.bincount(lab.ravel())
        for i in range(1, sizes.size):
            if sizes[i] < min_vox:
                lab[lab == i] = 0
        out.append(lab > 0)
    return out[0] | out[1]


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------


def timed(fn, *args, **kwargs):
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.thread_time() - c0


def spread(seq: list, n: int) -> list:
    """``n`` items spread evenly over ``seq`` (the references are too slow for every step)."""
    idx = np.unique(np.round(np.linspace(0, len(seq) - 1, max(1, min(n, len(seq))))).astype(int))
    return [seq[i] for i in idx]


def med(xs) -> float:
    return float(np.median(xs)) * 1000.0 if len(xs) else float("nan")


def bench_input(name: str, raw: np.ndarray, mask: np.ndarray, args) -> dict:
    print(f"\n## {name}", flush=True)
    ex = Explorer(raw, MNI_1MM, pp.PostParams(sigma_mm=SIGMA_MM, scale="max", threshold=0.5, connectivity=CONNECTIVITY))
    _, w, c = timed(ex.update)
    print(f"first update (smooth σ={SIGMA_MM} mm + filter + label + size): {w * 1000:.0f} ms wall, {c * 1000:.0f} ms CPU")
    _, w2, c2 = timed(ex.update, sign="positive")
    ex.update(sign="both")
    print(f"filter change (sign): {w2 * 1000:.0f} ms wall, {c2 * 1000:.0f} ms CPU")
    f = ex.result.filtered
    absb = np.abs(f[mask])
    pcts = np.linspace(90.0, 99.9, args.steps)
    thresholds = [float(np.percentile(absb, q)) for q in pcts]
    order = list(range(len(thresholds))) + list(range(len(thresholds) - 2, -1, -max(1, len(thresholds) // 5)))
    sweep = [thresholds[i] for i in order]  # up and partly back down, like a drag

    res: dict = {"name": name, "thresholds": thresholds}
    # --- threshold updates, with a minimum cluster size of MIN_SIZE voxels
    ex.update(min_size=MIN_SIZE)
    ours_w, ours_c, per_t = [], [], []
    for t in sweep:
        r, w, c = timed(ex.update, threshold=t)
        ours_w.append(w)
        ours_c.append(c)
        per_t.append((t, w, r.n_clusters_before_size))
    res["threshold_ours_wall_ms"] = med(ours_w)
    res["threshold_ours_cpu_ms"] = med(ours_c)
    plain_w, plain_c = [], []
    for t in spread(sweep, args.ref_steps):
        _, w, c = timed(plain_update, f, t, MIN_SIZE)
        plain_w.append(w)
        plain_c.append(c)
    res["threshold_plain_wall_ms"] = med(plain_w)
    res["threshold_plain_cpu_ms"] = med(plain_c)
    seed_w, seed_c = [], []
    for t in spread(sweep, args.seed_steps):
        _, w, c = timed(seed_update, f, t, MIN_SIZE)
        seed_w.append(w)
        seed_c.append(c)
    res["threshold_seed_wall_ms"] = med(seed_w)
    res["threshold_seed_cpu_ms"] = med(seed_c)

    # --- cluster-size updates at a mid threshold (97.5th percentile), a drag over the sizes
    t_mid = float(np.percentile(absb, 97.5))
    r = ex.update(threshold=t_mid, min_size=0)
    top = int(r.sizes_all[0]) if r.sizes_all.size else 1
    sizes = np.unique(np.round(np.geomspace(1, max(top, 2), args.steps)).astype(int))
    drag = [float(s) for s in sizes] + [float(s) for s in sizes[::-1][1:]]
    sw, sc = [], []
    for m in drag:
        _, w, c = timed(ex.update, min_size=m)
        assert ex.last_ran == ("size",)
        sw.append(w)
        sc.append(c)
    res["size_ours_wall_ms"] = med(sw)
    res["size_ours_cpu_ms"] = med(sc)
    pw, pc = [], []
    for m in spread(drag, args.ref_steps):
        _, w, c = timed(plain_update, f, t_mid, m)
        pw.append(w)
        pc.append(c)
    res["size_plain_wall_ms"] = med(pw)
    res["size_plain_cpu_ms"] = med(pc)
    qw, qc = [], []
    for m in spread(drag, args.seed_steps):
        _, w, c = timed(seed_update, f, t_mid, m)
        qw.append(w)
        qc.append(c)
    res["size_seed_wall_ms"] = med(qw)
    res["size_seed_cpu_ms"] = med(qc)
    res["clusters_at_mid_threshold"] = int(r.n_clusters_before_size)

    # --- exactness check against the plain reference (kept voxels, both signs)
    for t, m in ((thresholds[0], 0), (t_mid, 10), (thresholds[-1], 3)):
        ours = ex.update(threshold=t, min_size=m).labels > 0
        assert np.array_equal(ours, plain_update(f, t, m)), "mismatch with the plain reference"
    res["exact"] = True

    if args.wide:
        wide = [float(np.percentile(absb, q)) for q in np.linspace(50.0, 99.9, args.steps)]
        ww = []
        for t in wide:
            _, w, _c = timed(ex.update, threshold=t)
            ww.append(w)
        res["threshold_wide_ours_wall_ms"] = med(ww)
        res["threshold_wide_ours_max_ms"] = max(ww) * 1000
    res["per_threshold"] = [(float(t), w * 1000, n) for t, w, n in per_t]
    report(res, args)
    return res


def report(r: dict, args) -> None:
    def row(kind, unit_key):
        o = r[f"{kind}_ours_{unit_key}_ms"]
        p = r[f"{kind}_plain_{unit_key}_ms"]
        s = r[f"{kind}_seed_{unit_key}_ms"]
        return f"| {kind} update ({unit_key}) | {o:.1f} ms | {p:.0f} ms ({p / o:.0f}×) | {s:.0f} ms ({s / o:.0f}×) |"

    print(f"clusters at the mid threshold (97.5th pct): {r['clusters_at_mid_threshold']}; exact vs plain: {r['exact']}")
    print("| median per update | ours | plain reference (ratio) | seed's way (ratio) |")
    print("|---|---|---|---|")
    for kind in ("size", "threshold"):
        for u in ("wall", "cpu"):
            print(row(kind, u))
    if "threshold_wide_ours_wall_ms" in r:
        print(f"wide threshold sweep (50th..99.9th pct): median {r['threshold_wide_ours_wall_ms']:.0f} ms, "
              f"max {r['threshold_wide_ours_max_ms']:.0f} ms (wall)")
    if args.verbose:
        for t, w, n in r["per_threshold"]:
            print(f"   threshold {t:.4f}: {w:.1f} ms wall, {n} clusters")


def bench_gui(raw: np.ndarray, ndisplays=(2,)) -> None:
    """The widget on top: GUI-thread time to put a result into the layers and plots, and the
    end-to-end time from a control change to the drawn frame (needs a display, e.g. Xvfb)."""
    import napari
    from qtpy.QtCore import QCoreApplication

    from napari_xai._qt.explorer import ExplorerWidget

    viewer = napari.Viewer(show=True)
    viewer.add_image(raw, name="relevance", affine=MNI_1MM, metadata={"affine": MNI_1MM}, visible=False)
    w = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.set_params(pp.PostParams(sigma_mm=SIGMA_MM, threshold=0.4, min_size=MIN_SIZE))
    w.wait(300000)
    apply_times: list[float] = []
    original = w._apply

    def timed_apply(res):
        t0 = time.perf_counter()
        original(res)
        apply_times.append(time.perf_counter() - t0)

    w._apply = timed_apply

    def settle(n=5):
        for _ in range(n):
            QCoreApplication.processEvents()

    print("\n## widget (napari, software OpenGL under Xvfb)")
    for nd in ndisplays:
        viewer.dims.ndisplay = nd
        settle(20)
        for kind, values in (("size", [5, 20, 50, 100, 30, 10]), ("threshold", [0.45, 0.5, 0.55, 0.5, 0.45, 0.4])):
            apply_times.clear()
            e2e = []
            for x in values:
                t0 = time.perf_counter()
                if kind == "size":
                    w.min_size_spin.setValue(x)
                else:
                    w.threshold_slider.setValue(x)
                w.wait(300000)
                settle()
                e2e.append(time.perf_counter() - t0)
            print(f"{nd}D {kind} step: GUI-thread layer+plot update median {med(apply_times):.0f} ms; "
                  f"control change -> drawn, median {med(e2e):.0f} ms")
    viewer.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    ap.add_argument("--wide", action="store_true", help="also time thresholds from the 50th percentile")
    ap.add_argument("--no-demo", action="store_true", help="skip the demo relevance")
    ap.add_argument("--json", metavar="PATH", help="write the numbers as JSON")
    ap.add_argument("--verbose", action="store_true", help="print every threshold's time")
    ap.add_argument("--gui", action="store_true", help="also time the widget in napari (needs a display: xvfb-run -a)")
    ap.add_argument("--gui3d", action="store_true", help="with --gui, also in the 3D view (slow with software OpenGL)")
    args = ap.parse_args(argv)
    args.steps = 8 if args.quick else 20
    args.ref_steps = 4 if args.quick else 8
    args.seed_steps = 2 if args.quick else 4
    print(f"# bench_explorer: volume {SHAPE} at 1 mm, sigma {SIGMA_MM} mm, connectivity {CONNECTIVITY}")
    print(f"python {platform.python_version()}, numpy {np.__version__}, cores {os.cpu_count()}, "
          f"load average at start {os.getloadavg()[0]:.2f}")
    mask = brain_mask()
    print(f"brain mask: {int(mask.sum())} voxels ({mask.mean() * 100:.1f} % of the volume)")
    results = [bench_input("noise: smoothed noise (σ 3 mm) in the MNI152 brain mask", noise_relevance(mask), mask, args)]
    if not args.no_demo:
        data, note = demo_relevance()
        print(f"\nnote: {note}")
        if data is not None:
            results.append(bench_input("demo: demo model's relevance, resampled to 1 mm", data, mask, args))
    if args.gui:
        bench_gui(noise_relevance(mask), (2, 3) if args.gui3d else (2,))
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "load_end": os.getloadavg()[0]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
