"""Evaluate the demo model on fresh simulated subjects: accuracy and relevance localisation.

Everything goes through the real pipeline: ``load_model("demo")`` and
:func:`napari_xai.core.explain.explain` (resize of the 91×109×91 demo volume to
the model grid, z-score, attribution, relevance mapped back to the demo grid).

* **Held-out accuracy**: on ``--n`` fresh subjects (seeds 200000 ..; odd seeds
  atrophic, even healthy; training used seeds 0 .. 511, validation 100000 ..).
* **Localisation**, per attribution method of the registry, on ``--n-loc``
  fresh atrophic subjects, explaining the class "atrophy": the share of the
  positive relevance that lies inside the ground-truth region (the
  subject's hippocampus + amygdala on the demo grid),
  ``sum(max(R, 0)[GT]) / sum(max(R, 0))``; the same within 4 mm and 8 mm of
  the region (the model sees ~3.8 mm voxels); and the share of the negative
  relevance inside the region. Chance level: the region's (dilated region's)
  share of the brain volume.

Writes the table between the ``<!-- results:start -->`` / ``<!-- results:end -->``
markers of ``docs/demo.md`` (``--no-write`` only prints it)::

    .venv/bin/python scripts/evaluate_demo.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_xai.core import demo
from napari_xai.core.explain import explain, predict, prepare_input
from napari_xai.core.models import load_model
from napari_xai.core.methods.catalogue import all_methods

EVAL_SEED0 = 200_000
DOC = Path(__file__).resolve().parent.parent / "docs" / "demo.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def positive_share(rel: np.ndarray, mask: np.ndarray) -> float:
    """Share of the positive relevance that falls inside ``mask`` (nan if there is none)."""
    pos = np.clip(np.asarray(rel, dtype=np.float64), 0.0, None)
    total = pos.sum()
    return float(pos[mask].sum() / total) if total > 0 else float("nan")


def dilate_mm(mask: np.ndarray, mm: float, voxel_mm: float = 2.0) -> np.ndarray:
    """Binary dilation by ``mm`` (ball of radius mm / voxel size voxels)."""
    r = int(round(mm / voxel_mm))
    if r <= 0:
        return mask
    g = np.indices((2 * r + 1,) * 3) - r
    ball = (g**2).sum(0) <= r * r
    return ndimage.binary_dilation(mask, structure=ball)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="held-out subjects for accuracy (default 64)")
    ap.add_argument("--n-loc", type=int, default=8, help="atrophic subjects per method for localisation (default 8)")
    ap.add_argument("--methods", default="", help="comma-separated method names (default: all registered)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights-dir", type=Path, default=None, help="evaluate demo_model.pt from this folder instead (candidates)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not update docs/demo.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    model = load_model("demo", device="cpu")
    if args.weights_dir is not None:
        import json

        from napari_xai.core.demo_net import DemoNet

        meta = json.loads((args.weights_dir / "demo_metadata.json").read_text())
        net = DemoNet(**meta["net_kwargs"])
        net.load_state_dict(torch.load(args.weights_dir / "demo_model.pt", weights_only=True))
        model.module = net.eval()
        import dataclasses

        model.spec = dataclasses.replace(model.spec, input_shape=tuple(meta["input_shape"]))
        args.no_write = True
    # accuracy through the pipeline's own input preparation and prediction
    seeds = list(range(EVAL_SEED0, EVAL_SEED0 + args.n))
    correct = 0
    probs_true = []
    for s in seeds:
        smp = demo.demo_sample(s)
        x, *_ = prepare_input(smp.volume, model)
        p = predict(model, x)
        correct += int(int(np.argmax(p)) == smp.label)
        probs_true.append(float(p[smp.label]))
    acc = correct / len(seeds)
    print(f"held-out accuracy {acc:.4f} ({correct}/{len(seeds)}), seeds {seeds[0]}..{seeds[-1]}", flush=True)

    # localisation on atrophic subjects (odd seeds after the accuracy block)
    loc_seeds = [EVAL_SEED0 + args.n + 2 * i + 1 for i in range(args.n_loc)]
    samples = [demo.simulate(s, True) for s in loc_seeds]
    masks = [(smp.region, dilate_mm(smp.region, 4.0), dilate_mm(smp.region, 8.0), smp.brain) for smp in samples]
    chance = float(np.mean([m[0].sum() / m[3].sum() for m in masks]))
    chance_d = float(np.mean([(m[1] & m[3]).sum() / m[3].sum() for m in masks]))
    chance_d8 = float(np.mean([(m[2] & m[3]).sum() / m[3].sum() for m in masks]))
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = [m.name for m in all_methods() if not wanted or m.name in wanted]
    rows = []
    for name in methods:
        pos, pos_d, pos_d8, neg, secs = [], [], [], [], []
        for smp, (gt, gtd, gtd8, _brain) in zip(samples, masks):
            t = time.perf_counter()
            rel = explain(smp.volume, model, name, target="atrophy").data[0]
            secs.append(time.perf_counter() - t)
            pos.append(positive_share(rel, gt))
            pos_d.append(positive_share(rel, gtd))
            pos_d8.append(positive_share(rel, gtd8))
            neg.append(positive_share(-rel, gt) if (rel < 0).any() else float("nan"))
        row = (
            name,
            float(np.mean(pos)),
            float(np.min(pos)),
            float(np.mean(pos_d)),
            float(np.mean(pos_d8)),
            float(np.nanmean(neg)) if not np.all(np.isnan(neg)) else float("nan"),
            float(np.mean(secs)),
        )
        rows.append(row)
        print(
            f"{name:24s} positive in region {row[1]:.3f} (min {row[2]:.3f}), within 4 mm {row[3]:.3f}, "
            f"within 8 mm {row[4]:.3f}; negative in region {row[5]:.3f}; {row[6]:.2f} s/subject",
            flush=True,
        )

    elapsed = time.perf_counter() - t0
    lines = [
        START,
        "",
        f"Model `{model.sha256[:12]}`, torch {torch.__version__}; "
        f"`.venv/bin/python scripts/evaluate_demo.py --n {args.n} --n-loc {args.n_loc}` ({elapsed:.0f} s on 2 CPU cores).",
        "",
        f"**Held-out accuracy: {acc:.3f}** ({correct}/{len(seeds)} fresh subjects, seeds {seeds[0]}..{seeds[-1]}, half atrophic); "
        f"mean probability of the true class {np.mean(probs_true):.3f}.",
        "",
        f"Localisation on {args.n_loc} fresh atrophic subjects (seeds {loc_seeds[0]}..{loc_seeds[-1]}, odd), target class "
        "`atrophy`, default method parameters, relevance on the 91×109×91 demo grid:",
        "",
        "| method | positive relevance in region | (min over subjects) | within 4 mm of region | within 8 mm | negative relevance in region | s / subject |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m, mn, md, md8, ng, sec in rows:
        ng_txt = "–" if np.isnan(ng) else f"{ng:.3f}"
        lines.append(f"| {name} | **{m:.3f}** | {mn:.3f} | {md:.3f} | {md8:.3f} | {ng_txt} | {sec:.2f} |")
    lines += [
        f"| *chance (share of brain volume)* | *{chance:.3f}* | | *{chance_d:.3f}* | *{chance_d8:.3f}* | *{chance:.3f}* | |",
        "",
        END,
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        text = DOC.read_text() if DOC.exists() else f"# Demo\n\n{START}\n{END}\n"
        if START in text and END in text:
            text = text[: text.index(START)] + table + text[text.index(END) + len(END) :]
        else:
            text = text.rstrip() + "\n\n" + table + "\n"
        from napari_xai.core.volumes import atomic_write_bytes

        atomic_write_bytes(DOC, text.encode())
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
