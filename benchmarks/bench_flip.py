"""Benchmark the flipping curve against a plain loop (one full prediction per step).

The plain reference does what a script would: for every step, copy the
input, flip the regions ranked so far, run the model's whole input pipeline
(:func:`napari_xai.core.explain.prepare_input`: resize + normalise) and one
forward pass. ``flip_curve`` ranks the regions once, prepares the flipped
volumes in batches of 8 and runs one forward pass per batch. Both give the
same scores (checked here). Printed: median seconds of each over the repeats
and the ratio (ours / plain; below 1 is faster).

Usage::

    .venv/bin/python benchmarks/bench_flip.py [--repeats 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from napari_xai.core.demo import demo_volume
from napari_xai.core.explain import explain, prepare_input
from napari_xai.core.models import load_model
from napari_xai.core.evaluation.flipping import Scorer, flip_curve, region_ranking
from napari_xai.core.volumes import Volume


def plain_curve(model, volume, rel, target, steps, max_fraction, region):
    labels, ranked = region_ranking(rel, region, "morf")
    scores = []
    for k in range(steps + 1):
        count = int(round(max_fraction * k / steps * ranked.size))
        flip = np.isin(labels, ranked[:count])
        data = volume.data.copy()
        data[:, flip] = 0.0
        x, *_ = prepare_input(Volume(data=data, affine=volume.affine, name="v"), model)
        with torch.no_grad():
            scores.append(float(model.module(x)[0, target]))
    return scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-fraction", type=float, default=0.2)
    ap.add_argument("--region", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model("demo", device="cpu")
    volume, _ = demo_volume(seed=0, condition=True)
    rel = explain(volume, model, "lrp-epsilon-plus").data[0]
    scorer = Scorer(model, volume, "atrophy")
    target = scorer.target
    ours_t, plain_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = flip_curve(model, volume, rel, order="morf", steps=args.steps, max_fraction=args.max_fraction,
                          region=args.region, scorer=scorer)
        ours_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        plain = plain_curve(model, volume, rel, target, args.steps, args.max_fraction, args.region)
        plain_t.append(time.perf_counter() - t0)
    diff = float(np.max(np.abs(np.asarray(ours.scores) - np.asarray(plain))))
    o, p = statistics.median(ours_t), statistics.median(plain_t)
    print(f"demo model, {volume.shape} input, {args.steps + 1} steps, regions of {args.region} voxels, "
          f"{torch.get_num_threads()} threads")
    print(f"flip_curve {o:.3f} s   plain loop {p:.3f} s   ratio {o / p:.2f}   max |score difference| {diff:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
