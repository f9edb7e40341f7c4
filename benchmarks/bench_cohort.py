"""Benchmark the cohort executors on the 16-subject demo cohort: serial, ``--workers 2``, ``--scheduler local:2``.

Each executor explains the same subjects into a fresh folder with the demo
model (LRP-ε+ for "atrophy" by default), through the same task
(:func:`napari_xai.core.cohort_run.run_subject`) the CLI runs. Printed per
executor: wall time of the subjects (the executor phase; process start and the
model load of the driver are outside, the workers' own start-up is inside),
subjects/s, speed-up against serial, and the overhead per task:
``(wall x workers - sum of task times) / subjects`` in ms and in percent of the
serial per-subject time. For Dask, the cluster start is printed apart (a
one-off cost). The maps of every executor are checked to be bitwise equal to
the serial ones.

Usage::

    .venv/bin/python benchmarks/bench_cohort.py [--n 16] [--method lrp-epsilon-plus] [--workdir /tmp/bench_cohort]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _maps(out: Path) -> dict[str, bytes]:
    import nibabel as nib

    return {p.name: np.asarray(nib.load(str(p)).dataobj).tobytes() for p in sorted((out / "maps").glob("*.nii.gz"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--method", default="lrp-epsilon-plus")
    ap.add_argument("--target", default="atrophy")
    ap.add_argument("--workdir", default="/tmp/bench_cohort")
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--gpu-seconds", type=float, default=1.1,
                    help="assumed GPU explain time per subject for the 10,000-subject estimate (default 1.1 s: the "
                         "seed's 1,655 scans in about 30 min on one GPU)")
    args = ap.parse_args(argv)

    from napari_xai.core import cohort_run as cr
    from napari_xai.core.cohort import read_subjects
    from napari_xai.core.models import load_model

    work = Path(args.workdir)
    cohort = work / "cohort"
    if not (cohort / "subjects.csv").exists() or len(read_subjects(cohort / "subjects.csv")) != args.n:
        script = Path(__file__).resolve().parents[1] / "scripts" / "make_demo_cohort.py"
        subprocess.run([sys.executable, str(script), str(cohort), "--n", str(args.n)], check=True)
    subjects = read_subjects(cohort / "subjects.csv")
    model = load_model("demo")
    print(f"{len(subjects)} demo subjects, {args.method}, target {args.target}; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f} at start")

    def config(name: str) -> cr.RunConfig:
        out = work / name
        shutil.rmtree(out, ignore_errors=True)
        (out / "maps").mkdir(parents=True)
        return cr.RunConfig(model="demo", model_sha256=model.sha256, method=args.method, target=args.target,
                            outdir=str(out))

    results = {}

    def record(name: str, wall: float, rows: list[dict], workers: int, extra: str = "") -> None:
        tasks = [r["timings"]["total"] for r in rows]
        failed = [r for r in rows if r["status"] == "failed"]
        assert not failed, failed[0]["error"]
        results[name] = (wall, sum(tasks), workers)
        base = results["serial"][0] / len(rows)
        over = (wall * workers - sum(tasks)) / len(rows)
        print(f"{name:22s} {wall:7.2f} s  {len(rows) / wall:5.2f} subjects/s  speed-up {results['serial'][0] / wall:4.2f}x  "
              f"overhead/task {over * 1000:7.1f} ms ({100 * over / base:5.1f} % of a serial subject; "
              f"median task {np.median(tasks):.2f} s){extra}")

    cfg = config("serial")
    cr.cache_model(cfg, model)
    t = time.perf_counter()
    rows = list(cr.iter_serial(subjects, cfg))
    record("serial", time.perf_counter() - t, rows, 1)
    ref = _maps(work / "serial")
    phases = {k: float(np.median([r["timings"].get(k, 0.0) for r in rows])) for k in ("load", "explain", "write", "readouts")}
    print("  serial task phases (median s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    t = time.perf_counter()
    cr.reduce_cohort(work / "serial", subjects, cfg)
    reduce_s = (time.perf_counter() - t) / len(subjects)
    print(f"  reduction (tables from the per-subject outputs): {reduce_s * 1000:.1f} ms per subject")

    cfg = config("workers2")
    t = time.perf_counter()
    rows = list(cr.iter_pool(subjects, cfg, 2))
    record("--workers 2", time.perf_counter() - t, rows, 2)
    assert _maps(work / "workers2") == ref, "maps of --workers 2 differ from serial"

    if not args.skip_dask:
        cfg = config("dask2")
        t = time.perf_counter()
        client, cluster = cr.start_dask("local:2")
        client.run(lambda: __import__("napari_xai.core.explain"))  # workers import torch and the package once
        start = time.perf_counter() - t
        try:
            t = time.perf_counter()
            rows = list(cr.iter_dask(subjects, cfg, client))
            record("--scheduler local:2", time.perf_counter() - t, rows, 2, f"; cluster start {start:.1f} s (once)")
        finally:
            client.close()
            cluster.close()
        assert _maps(work / "dask2") == ref, "maps of --scheduler local:2 differ from serial"
    print("maps bitwise equal to serial: yes")
    # 10,000 subjects, from the measured times and stated assumptions (see docs/performance.md)
    n = 10_000
    serial_s = results["serial"][0] / len(subjects)
    pool_s = results["--workers 2"][0] / len(subjects)
    gpu_task = args.gpu_seconds + phases["load"] + phases["write"] + phases["readouts"]
    print(f"10,000 subjects: CPU serial {n * serial_s / 3600:.1f} h, CPU --workers 2 {n * pool_s / 3600:.1f} h; "
          f"1 GPU {(n * gpu_task + n * reduce_s) / 3600:.1f} h; 8 GPUs {(n * gpu_task / 8 + n * reduce_s) / 3600:.2f} h "
          f"(GPU explain {args.gpu_seconds} s per subject assumed; load, write and readouts as measured here; "
          f"the reduction runs once, serially: {n * reduce_s / 60:.1f} min)")
    print(f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
