"""Benchmark CRP: the top 8 concepts of a layer in one call against 8 separate LRP runs.

On the demo model and brain (91×109×91 at 2 mm, model grid 48×56×48, last Conv layer ``features.6``, 16
channels), with LRP-ε+ (``lrp-epsilon-plus``), median of ``--repeats`` runs after one warm-up:

* ``top_concepts(k=8)``: one forward pass, the relevance at the layer, the plain map and 8 conditional maps
  (batched: ``batch=8``), all taken back to the volume grid: the user's call;
* the same with ``batch=1`` (forward pass reused, concepts propagated one by one);
* 8 separate conditional runs: ``explain(method="crp", channels=c)`` for each of the same 8 channels (each its
  own forward and backward pass);
* 8 separate plain LRP runs: ``explain(method="lrp-epsilon-plus")`` eight times;
* 1 plain LRP run.

Prints the times and the ratios (goal: top-8 CRP <= 0.5 × 8 separate runs).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_crp.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median time of each function; the functions take turns in every round, so a change of the machine's load
    (shared cores) hits all of them alike."""
    for fn in fns.values():
        fn()  # warm-up (caches: layer list, trace, BatchNorm merge check, prediction)
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--k", type=int, default=8)
    args = ap.parse_args()

    import torch

    from napari_xai.core.concepts import top_concepts
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.explain import explain
    from napari_xai.core.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model("demo")
    vol, _ = demo_volume(1, True)
    k = args.k
    res = top_concepts(model, vol, k=k)
    chans = [c.channel for c in res.concepts]
    print(f"demo: layer {res.layer}, {len(res.channel_relevance)} channels, top {k}: {chans}; torch threads "
          f"{torch.get_num_threads()}, {args.repeats} repeats (median)")

    def separate_crp():
        for c in chans:
            explain(vol, model, "crp", params={"channels": str(c)})

    def separate_lrp():
        for _ in chans:
            explain(vol, model, "lrp-epsilon-plus")

    variants = {
        "crp": lambda: top_concepts(model, vol, k=k),
        "crp1": lambda: top_concepts(model, vol, k=k, batch=1),
        "sep_crp": separate_crp,
        "sep_lrp": separate_lrp,
        "one": lambda: explain(vol, model, "lrp-epsilon-plus"),
    }
    t = _interleaved(variants, args.repeats)
    t_crp, t_crp1, t_sep_crp, t_sep_lrp, t_one = (t[n] for n in variants)
    rows = [
        (f"top_concepts(k={k}) (batched)", t_crp),
        (f"top_concepts(k={k}, batch=1)", t_crp1),
        (f"{k} separate conditional runs (crp, one channel each)", t_sep_crp),
        (f"{k} separate plain LRP runs (lrp-epsilon-plus)", t_sep_lrp),
        ("1 plain LRP run", t_one),
    ]
    for name, t in rows:
        print(f"  {name:55s} {t:7.3f} s")
    print(f"ratio top-{k} CRP / {k} separate conditional runs: {t_crp / t_sep_crp:.2f} (goal <= 0.5)")
    print(f"ratio top-{k} CRP / {k} separate plain LRP runs:   {t_crp / t_sep_lrp:.2f}")
    print(f"ratio top-{k} CRP (batch=1) / {k} separate conditional runs: {t_crp1 / t_sep_crp:.2f}")
    print(f"ratio top-{k} CRP / 1 plain LRP run: {t_crp / t_one:.2f}")


if __name__ == "__main__":
    main()
