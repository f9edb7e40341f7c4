"""``napari-xai dissect``: which atlas region does each channel of a layer fire on (network dissection)?

Writes a CSV (one row per channel: best region and IoU, the runner-up, the
activation threshold, dead/detector flags, and with ``--relevance`` the
channel's share of the target's positive relevance) with a JSON sidecar.
"""

from __future__ import annotations

import argparse
import sys

from .options import add_model_options, add_output_flags, load_model_from
from ..core.errors import UserError

HELP = "label each channel of a layer with the atlas region its strongest activations overlap (network dissection)"


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    from ..core.dissect import MIN_IOU, QUANTILE

    p = subparsers.add_parser("dissect", help=HELP, description=HELP + ".")
    p.add_argument("inputs", nargs="+", metavar="SUBJECTS.csv|VOLUME",
                   help="a cohort CSV (id, path) or NIfTI files, one subject each; all in the atlas's (MNI) space")
    add_model_options(p)
    p.add_argument("--layer", help="module name with a 3D feature map (default: the last one, e.g. the last ReLU)")
    p.add_argument("--atlas", required=True, metavar="NAME_OR_PATH", help="regions as concepts (see 'napari-xai atlases')")
    p.add_argument("--labels", metavar="FILE", help="labels file of a user --atlas")
    p.add_argument("--atlas-threshold", type=float, default=25.0, metavar="PERCENT",
                   help="probabilistic atlases: minimum probability of a region (default 25)")
    p.add_argument("--quantile", type=float, default=QUANTILE,
                   help=f"per-channel activation quantile that sets its mask (default {QUANTILE}: the top 0.5 %%)")
    p.add_argument("--min-iou", type=float, default=MIN_IOU, help=f"IoU of a detector (default {MIN_IOU})")
    p.add_argument("--relevance", action="store_true",
                   help="also give each channel's share of the target's positive LRP relevance (γ | ε | 0 composite), "
                        "summed over the subjects, and sort by it")
    p.add_argument("--target", help="class for --relevance (default: each subject's predicted class)")
    p.add_argument("--out", required=True, metavar="channels.csv", help="CSV of the channels (a .json sidecar goes beside it)")
    add_output_flags(p, "replace --out if it exists")
    p.set_defaults(func=cmd_dissect)
    return p


def cmd_dissect(args: argparse.Namespace) -> int:
    import numpy as np

    from .options import csv_bytes, fmt
    from ..core.atlas import load_atlas
    from ..core.cohort import subjects_from_inputs
    from ..core.dissect import dissect
    from ..core.provenance import package_versions, sidecar_path, write_sidecar
    from ..core.volumes import atomic_write_bytes, load_nifti, stack_channels, written_or_removed

    from .options import check_out_file

    out = check_out_file(args.out, args.overwrite, ".csv")
    if not 0.0 <= args.atlas_threshold <= 100.0:
        raise UserError(f"--atlas-threshold is a probability in percent (0-100), got {args.atlas_threshold:g}.")
    subjects = subjects_from_inputs(args.inputs)
    atlas = load_atlas(args.atlas, labels=args.labels)
    model = load_model_from(args)
    volumes = []
    for s in subjects:
        v = stack_channels([load_nifti(p) for p in s.paths])
        v.name = s.id
        volumes.append(v)

    def progress(frac: float, msg: str) -> None:
        if not args.quiet and sys.stderr.isatty():
            print(f"[{frac * 100:5.1f}%] {msg}", file=sys.stderr)

    res = dissect(model, volumes, atlas, args.layer, quantile=args.quantile, min_iou=args.min_iou,
                  atlas_threshold=args.atlas_threshold / 100.0, progress=progress)
    share = None
    if args.relevance:
        from ..core.evaluation.ablation import channel_relevance

        pos = None
        for v in volumes:
            ch = channel_relevance(model, v, res.layer, args.target)
            p = np.array([c["positive"] for c in ch["channels"]], dtype=np.float64)
            pos = p if pos is None else pos + p
        share = pos / pos.sum() if pos is not None and pos.sum() > 0 else np.zeros(len(res.rows))
    rows = list(res.rows)
    order = sorted(range(len(rows)), key=(lambda i: -share[i]) if share is not None else (lambda i: -rows[i].iou))
    header = ["channel", "region", "iou", "second_region", "second_iou", "threshold", "voxels", "detector", "dead"]
    if share is not None:
        header.append("relevance_share")
    table = []
    for i in order:
        r = rows[i]
        line = [r.channel, r.region, fmt(r.iou), r.second, fmt(r.second_iou), fmt(r.threshold), r.voxels,
                int(r.detector), int(r.dead)]
        if share is not None:
            line.append(fmt(float(share[i])))
        table.append(line)
    record = {**res.record, "subjects": [s.id for s in subjects], "atlas_threshold_percent": args.atlas_threshold,
              "relevance": {"method": "lrp (γ | ε | 0 composite)", "target": args.target or "predicted"} if args.relevance else None,
              "summary": res.summary(), "output": str(out), "versions": package_versions(),
              "command": getattr(args, "command_line", "napari-xai dissect")}
    with written_or_removed(out, sidecar_path(out)):
        atomic_write_bytes(out, csv_bytes(header, table))
        write_sidecar(out, record)
    print(res.summary())
    show = [rows[i] for i in order][:10]
    for r, i in zip(show, order):
        extra = f"  relevance {share[i]:6.1%}" if share is not None else ""
        flag = "dead" if r.dead else ("detector" if r.detector else "")
        print(f"  channel {r.channel:3d}: {r.region or '-':45.45s} IoU {r.iou:.3f}{extra}  {flag}")
    print(f"wrote {out} and {sidecar_path(out)}")
    return 0
