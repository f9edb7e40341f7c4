"""The numbers and the figure of docs/concepts.md: the top concepts of the demo model's last Conv layer.

For atrophic demo subjects (odd seeds), ``top_concepts`` (LRP-ε+, k = 8) on layer ``features.6``; per concept:
its share of the layer's relevance, the share of its conditional map's positive relevance inside the
ground-truth region (hippocampus + amygdala, both sides: the simulated atrophy), inside that region dilated by
8 mm (one voxel of the layer's ~7.6 mm grid), the region's share of the brain's volume (what a map spread evenly
over the brain would give), and the AAL regions holding most of its relevance. Writes
docs/images/concepts_demo.png (seed 1: the top 4 concepts' maps, axial slice through the hippocampi, with the
ground-truth outline).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/concepts_demo.py [--seeds 1 3 5 7 9] [--png docs/images/concepts_demo.png]
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 3, 5, 7, 9])
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--png", default="docs/images/concepts_demo.png")
    args = ap.parse_args()

    import torch
    from scipy.ndimage import binary_dilation

    from napari_xai.core.atlas import load_atlas
    from napari_xai.core.concepts import mask_share, top_concepts
    from napari_xai.core.demo import demo_sample
    from napari_xai.core.models import load_model

    torch.set_num_threads(1)
    model = load_model("demo")
    atlas = load_atlas("aal")
    per_rank: dict[int, list] = {}
    first = None
    for seed in args.seeds:
        s = demo_sample(seed)
        assert s.condition, "odd seeds are atrophic"
        res = top_concepts(model, s.volume, k=args.k, target="atrophy", atlas=atlas)
        near = binary_dilation(s.region, iterations=4)  # 4 voxels of 2 mm
        chance = float(s.region[s.brain].sum() / s.brain.sum())
        chance_near = float(near[s.brain].sum() / s.brain.sum())
        print(f"seed {seed}: layer {res.layer}, prediction {res.provenance['prediction']['name']} "
              f"({res.provenance['prediction']['probabilities']['atrophy']:.3f}); region = {100 * chance:.2f} % of "
              f"the brain ({100 * chance_near:.1f} % dilated); unconditioned map: "
              f"{100 * mask_share(res.unconditioned, s.region):.1f} % in the region, "
              f"{100 * mask_share(res.unconditioned, near):.1f} % dilated")
        for c in res.concepts:
            row = (c.channel, c.share, mask_share(c.map, s.region), mask_share(c.map, near), chance, chance_near,
                   c.regions[:2])
            per_rank.setdefault(c.rank, []).append(row)
            print(f"  #{c.rank + 1} ch {c.channel:2d} share {100 * c.share:5.1f} %  in region "
                  f"{100 * row[2]:5.1f} %  dilated {100 * row[3]:5.1f} %  ({c.label})")
        if first is None:
            first = (s, res)
    print("\nmarkdown (mean over seeds " + ", ".join(map(str, args.seeds)) + "):\n")
    print("| rank | channels (per seed) | share of layer relevance | in region | in region + 8 mm | "
          "enrichment (in region / region's share of brain) | top AAL regions (seed %d) |" % args.seeds[0])
    print("|---|---|---|---|---|---|---|")
    for rank in sorted(per_rank):
        rows = per_rank[rank]
        chans = ", ".join(str(r[0]) for r in rows)
        share = np.mean([r[1] for r in rows])
        inr = np.mean([r[2] for r in rows])
        near = np.mean([r[3] for r in rows])
        enr = np.mean([r[2] / r[4] for r in rows])
        regs = "; ".join(f"{n} {100 * v:.0f} %" for n, v in rows[0][6])
        print(f"| {rank + 1} | {chans} | {100 * share:.1f} % | {100 * inr:.1f} % | {100 * near:.1f} % | "
              f"{enr:.1f}× | {regs} |")
    if args.png and first is not None:
        _figure(*first, args.png)
        print(f"\nwrote {args.png}")


def _figure(sample, res, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_xai.core.concepts import mask_share

    region = sample.region
    k = int(np.argmax(region.sum(axis=(0, 1))))  # the axial slice with most of the region (k is z in the demo's LAS grid)
    anat = sample.volume.data[0]
    shown = [("unconditioned LRP-ε+", res.unconditioned)] + [(c.label.split(":")[0] + f" ({100 * c.share:.0f} %)", c.map)
                                                            for c in res.concepts[:4]]
    vmax = max(float(np.percentile(m[m > 0], 99.5)) if (m > 0).any() else 1.0 for _, m in shown[1:])
    fig = Figure(figsize=(2.4 * len(shown), 2.9), dpi=110)
    FigureCanvasAgg(fig)
    for i, (title, m) in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        ax.imshow(anat[:, :, k].T, cmap="gray", origin="lower")
        scale = vmax if i else float(np.percentile(m[m > 0], 99.5))
        pos = np.ma.masked_less_equal(m[:, :, k].T, 0.05 * scale)
        ax.imshow(pos, cmap="hot", origin="lower", vmin=0, vmax=scale, alpha=0.8)
        ax.contour(region[:, :, k].T, levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(f"{title}\n{100 * mask_share(m, region):.0f} % in region", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"demo seed {sample.seed} (atrophy), layer {res.layer}: conditional maps of the top concepts; "
                 "cyan = ground-truth region (hippocampus + amygdala)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
