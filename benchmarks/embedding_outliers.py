"""How often the outlier flag of ``napari-xai embed`` fires without an outlier; what drives the demo's distances.

    .venv/bin/python benchmarks/embedding_outliers.py [--trials 500]
    .venv/bin/python benchmarks/embedding_outliers.py --demo-csv OUT/embedding.csv [--first-seed 100]

1. Cohorts of standard-normal feature vectors (no real outlier): the share of
   cohorts in which at least one subject gets a robust z-score of its 3-NN
   distance above 3.5 and above 5 (``core.embedding.knn_outliers``).
2. With ``--demo-csv`` (an ``embed`` run on ``scripts/make_demo_cohort.py``'s
   cohort): Pearson's r of each subject's 3-NN distance with the size of the
   simulated nuisance pose (shift in mm, rotation in degrees), replaying the
   nuisance draws of ``core.demo.simulate`` (generator ``[seed, 0]``).
"""

from __future__ import annotations

import argparse
import csv
import sys

import numpy as np


def false_alarms(trials: int) -> None:
    from napari_xai.core.embedding import knn_outliers

    rng = np.random.default_rng(0)
    print("subjects  dims  P(any flag | z > 3.5)  P(any flag | z > 5)")
    for n in (16, 64):
        for p in (2, 5, 20, 200):
            any35 = any5 = 0
            for _ in range(trials):
                z = knn_outliers(rng.normal(size=(n, p)), k=3).z
                any35 += bool((z > 3.5).any())
                any5 += bool((z > 5.0).any())
            print(f"{n:8d}  {p:4d}  {any35 / trials:21.2f}  {any5 / trials:19.2f}")


def demo_pose(path: str, first_seed: int) -> None:
    from napari_xai.core import demo as d
    from napari_xai.core.cohort import pearson

    rows = {r["id"]: r for r in csv.DictReader(open(path, encoding="utf-8")) if r["status"] == "ok"}
    ref = d._reference()
    shift, rot, dist = [], [], []
    for seed in range(first_seed, first_seed + len(rows)):
        nuis = np.random.default_rng([seed, 0])  # the draws of simulate(), in its order
        nuis.integers(0, d.DISTRACTOR_MAX + 1)
        nuis.integers(0, ref.far_candidates.size, size=d.DISTRACTOR_MAX)
        nuis.uniform(size=d.DISTRACTOR_MAX)
        nuis.uniform(size=d.DISTRACTOR_MAX)
        r = nuis.uniform(-d.POSE_ROTATION_DEG, d.POSE_ROTATION_DEG, 3)
        nuis.uniform(-d.POSE_SCALE, d.POSE_SCALE, 3)
        s = nuis.uniform(-d.POSE_SHIFT_MM, d.POSE_SHIFT_MM, 3)
        shift.append(float(np.linalg.norm(s)))
        rot.append(float(np.linalg.norm(r)))
        dist.append(float(rows[f"sub-{seed}"]["knn_distance"]))
        print(f"sub-{seed}: 3-NN distance {dist[-1]:8.2f}, shift {shift[-1]:.1f} mm, rotation {rot[-1]:.1f} deg")
    for name, v in (("shift", shift), ("rotation", rot)):
        r, p, n = pearson(v, dist)
        print(f"3-NN distance vs {name}: r = {r:+.2f} (p = {p:.2g}, n = {n})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--demo-csv")
    ap.add_argument("--first-seed", type=int, default=100)
    args = ap.parse_args(argv)
    if args.demo_csv:
        demo_pose(args.demo_csv, args.first_seed)
    else:
        false_alarms(args.trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
