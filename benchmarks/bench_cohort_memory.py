"""Peak memory of ``napari-xai cohort`` at 8, 64 and 256 subjects on small volumes: it must stay flat.

Two measurements per cohort size N (small 32³ volumes, a tiny CNN, saliency,
a two-region atlas so that regions.csv and correlations.csv are made too):

* the peak resident memory (ru_maxrss) of a whole ``napari-xai cohort`` run in
  its own process (imports, model, every subject's task and the tables);
* the peak of Python/numpy allocations (tracemalloc) while the tables are
  reduced from the N per-subject outputs (:func:`reduce_cohort`).

Usage::

    .venv/bin/python benchmarks/bench_cohort_memory.py [--sizes 8,64,256] [--workdir /tmp/bench_cohort_mem]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np

SHAPE = (32, 32, 32)


def make(work: Path, n: int) -> tuple[Path, list[str]]:
    import nibabel as nib

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from model_factory import python_source

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    if not (work / "model").exists():
        python_source(work / "model")
        atlas = np.zeros(SHAPE, np.int16)
        atlas[:16], atlas[16:] = 1, 2
        nib.save(nib.Nifti1Image(atlas, aff), str(work / "atlas.nii.gz"))
        (work / "atlas.csv").write_text("index,name\n1,left\n2,right\n")
    rng = np.random.default_rng(0)
    lines = ["id,path,age"]
    for k in range(n):
        f = work / f"s{k}.nii.gz"
        if not f.exists():
            nib.save(nib.Nifti1Image(rng.random(SHAPE).astype(np.float32), aff), str(f))
        lines.append(f"s{k},{f.name},{50 + k % 37}")
    table = work / f"cohort{n}.csv"
    table.write_text("\n".join(lines) + "\n")
    model = ["--model", f"{work / 'model' / 'tiny_net.py'}:TinyNet", "--weights", str(work / "model" / "tiny_net.pt"),
             "--method", "saliency", "--target", "1", "--atlas", str(work / "atlas.nii.gz"), "--labels", str(work / "atlas.csv")]
    return table, model


CHILD = """
import resource, sys
from napari_xai.cli import main
code = main(sys.argv[1:])
print("MAXRSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "CODE", code)
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="8,64,256")
    ap.add_argument("--workdir", default="/tmp/bench_cohort_mem")
    args = ap.parse_args(argv)
    from napari_xai.core import cohort_run as cr
    from napari_xai.core.cohort import read_subjects

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    print(f"volumes {SHAPE}, tiny CNN, saliency, 2-region atlas; load average {os.getloadavg()[0]:.2f}")
    for n in [int(x) for x in args.sizes.split(",")]:
        table, model = make(work, n)
        out = work / f"out{n}"
        res = subprocess.run([sys.executable, "-c", CHILD, "cohort", str(table), *model, "--out-dir", str(out),
                              "--overwrite", "--quiet"], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("MAXRSS_KB")]
        if not line or "CODE 0" not in line[0]:
            print(res.stdout, res.stderr)
            return 1
        rss_mb = int(line[0].split()[1]) / 1024
        rec = json.loads((out / "cohort.json").read_text())
        cfg = cr.RunConfig.from_dict(rec["config"])
        subjects = read_subjects(table)
        cr.reduce_cohort(out, subjects, cfg)  # once before measuring: module imports are not the reduction's memory
        tracemalloc.start()
        cr.reduce_cohort(out, subjects, cfg)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(f"N = {n:4d}: whole run peak RSS {rss_mb:7.1f} MB; reduction peak {peak / 2**20:6.2f} MB "
              f"(one map is {np.prod(SHAPE) * 8 / 2**20:.2f} MB as float64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
