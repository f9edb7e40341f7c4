"""Write a demo cohort: simulated subjects of the demo brain and a cohort CSV with covariates.

    .venv/bin/python scripts/make_demo_cohort.py OUTDIR [--n 16] [--first-seed 100]

Odd seeds are atrophic, even seeds healthy (``napari_xai.core.demo.demo_sample``);
atrophic subjects get their atrophied region as ``truth`` mask. Covariates: the simulated atrophy ``severity`` (0 for healthy subjects), the
class ``atrophy`` (0/1) and ``hippocampal_tissue``, the summed image intensity
inside the hippocampus/amygdala region (a stand-in for a hippocampus volume).
Then, for example::

    .venv/bin/napari-xai cohort OUTDIR/subjects.csv --model demo --method lrp-epsilon-plus \\
        --target atrophy --atlas harvard-oxford --out-dir OUTDIR/results
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from napari_xai.core.demo import demo_sample
    from napari_xai.core.volumes import atomic_write_bytes, save_nifti

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=100)
    args = ap.parse_args(argv)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    rows = ["id,path,truth,severity,atrophy,hippocampal_tissue"]
    for seed in range(args.first_seed, args.first_seed + args.n):
        s = demo_sample(seed)
        name = f"sub-{seed}.nii.gz"
        save_nifti(out / name, s.volume.data[0], s.volume.affine)
        tissue = float(s.volume.data[0][s.region.astype(bool)].sum())
        truth = ""
        if s.condition:  # the atrophied region is the ground truth of atrophic subjects
            truth = f"sub-{seed}_truth.nii.gz"
            save_nifti(out / truth, s.region.astype("uint8"), s.volume.affine)
        rows.append(f"sub-{seed},{name},{truth},{s.severity:.4f},{int(s.condition)},{tissue:.1f}")
    atomic_write_bytes(out / "subjects.csv", ("\n".join(rows) + "\n").encode("utf-8"))
    print(f"wrote {args.n} subjects and {out / 'subjects.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
