"""``napari-xai flip``: region-flipping curves and AOPC for relevance maps, headless.

For every ``--relevance`` file (a map of ``explain`` or a cell of ``compare``)
and every ``--order``, the input's cubic regions are ranked by their summed
relevance and flipped step by step to the baseline; the target logit after
each step is one row of the CSV (:func:`napari_xai.core.evaluation.flipping.flip_curve`).
The JSON sidecar holds the AOPC of every curve, the parameters, the model
hash and the command. The target is the one recorded in each relevance file's
sidecar (else ``--target``, else the predicted class), so a map is always
checked against the class it explains.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from .options import (add_grid_options, add_model_options, add_output_flags, check_out_file, input_space_kwargs,
                      load_model_from)
from ..core.errors import UserError

HELP = "flip input regions in the order of relevance map(s) and write the score curves and their AOPC"


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    from .options import parse_point
    from ..core.evaluation.flipping import BASELINES, ORDERS

    p = subparsers.add_parser("flip", help=HELP, description=HELP + ".")
    p.add_argument("volume", nargs="+", metavar="VOLUME", help="the NIfTI file(s) the relevance explains (several = channels)")
    add_model_options(p)
    p.add_argument("--relevance", action="append", required=True, metavar="REL.nii.gz",
                   help="relevance map on the volume's grid; repeat to compare maps (e.g. the cells of 'compare')")
    p.add_argument("--target", help="class when a relevance file has no sidecar (default: the predicted class)")
    p.add_argument("--order", action="append", choices=ORDERS,
                   help="morf (most relevant first), lerf, random; repeatable (default: morf and random)")
    p.add_argument("--baseline", choices=BASELINES, default="zero", help="what flipped voxels become (default zero)")
    p.add_argument("--region", type=int, default=3, metavar="VOXELS", help="edge of the cubic regions (default 3)")
    p.add_argument("--steps", type=int, default=20, help="steps from 0 to --max-fraction (default 20)")
    p.add_argument("--max-fraction", type=float, default=0.2, metavar="F", help="share of regions flipped at the end (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order")
    p.add_argument("--atlas", metavar="NAME_OR_PATH",
                   help="flip atlas regions instead of cubes (a built-in atlas for MNI-space inputs, or a label NIfTI); "
                        "voxels outside the atlas are never flipped")
    add_grid_options(p)
    p.add_argument("--segmentation", action="store_true", help="the model returns a logit map: score the masked sum")
    p.add_argument("--mask", metavar="MASK.nii.gz", help="segmentation target mask on the input grid")
    p.add_argument("--point", type=parse_point, metavar="I,J,K", help="segmentation: the predicted component at this voxel")
    p.add_argument("--output-index", type=int, default=0, metavar="N", help="output of a tuple-returning model (default 0)")
    p.add_argument("--out", required=True, metavar="curves.csv", help="CSV of the curves (a .json sidecar with the AOPC goes beside it)")
    add_output_flags(p, "replace --out if it exists", quiet=None)
    p.set_defaults(func=cmd_flip)
    return p


def _target_of(path: str, fallback):
    from ..core.provenance import read_sidecar

    side = read_sidecar(path) or {}
    index = (side.get("target") or {}).get("index")
    return (int(index), "sidecar") if index is not None else (fallback, "option" if fallback is not None else "predicted")


def cmd_flip(args: argparse.Namespace) -> int:
    from ..core.evaluation.flipping import Scorer, flip_curve
    from ..core.provenance import package_versions, sha256_file, sidecar_path, write_sidecar
    from ..core.volumes import atomic_write_bytes, load_nifti, stack_channels, written_or_removed

    out = check_out_file(args.out, args.overwrite, ".csv")
    space = input_space_kwargs(args)
    orders = list(dict.fromkeys(args.order or ["morf", "random"]))
    volume = stack_channels([load_nifti(p) for p in args.volume])
    maps = []
    for path in args.relevance:
        rel = load_nifti(path)
        if tuple(rel.shape) != tuple(volume.shape):
            raise UserError(f"--relevance {path} has shape {tuple(rel.shape)} but the input has {tuple(volume.shape)}; "
                            "give the map of this input.")
        maps.append((path, rel.data.sum(axis=0)))
    model = load_model_from(args)
    kwargs: dict = {"normalization": args.normalization, "input_shape": args.input_shape, **space,
                    "output_index": args.output_index}
    if args.mask:
        m = load_nifti(args.mask)
        kwargs["mask"] = m.data[0]
    if args.point:
        kwargs["point"] = tuple(args.point)
    kwargs["segmentation"] = bool(args.segmentation or args.mask or args.point)
    scorers: dict = {}
    rows, curves = [], []
    for path, rel in maps:
        target, source = _target_of(path, args.target)
        if target not in scorers:
            scorers[target] = Scorer(model, volume, target, **kwargs)
        for order in orders:
            c = flip_curve(model, volume, rel, order=order, baseline=args.baseline, region=args.region,
                           steps=args.steps, max_fraction=args.max_fraction, seed=args.seed, scorer=scorers[target],
                           atlas=args.atlas)
            curves.append({"relevance": str(path), "target_from": source, **c.record()})
            for k, (f, v, s, p) in enumerate(zip(c.fractions, c.voxels, c.scores, c.probabilities)):
                rows.append([str(path), c.target_name, order, k, f"{f:.6g}", v, f"{s:.8g}", f"{p:.8g}"])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["relevance", "target", "order", "step", "fraction", "voxels", "score", "probability"])
    writer.writerows(rows)
    record = {
        "kind": "flipping-curves", "command": getattr(args, "command_line", "napari-xai flip"),
        "volumes": [str(p) for p in args.volume],
        "model": {"source": str(args.model), "sha256": model.sha256, "name": model.name},
        "params": {"baseline": args.baseline, "region": None if args.atlas else args.region, "atlas": args.atlas,
                   "steps": args.steps,
                   "max_fraction": args.max_fraction, "seed": args.seed, "orders": orders},
        "relevance": {str(p): sha256_file(p) for p, _ in maps},
        "curves": [{k: v for k, v in c.items() if k in ("relevance", "target", "target_name", "target_from", "order", "aopc",
                                                        "atlas", "flipped")}
                   for c in curves],
        "versions": package_versions(),
    }
    with written_or_removed(out, sidecar_path(out)):
        atomic_write_bytes(out, buf.getvalue().encode("utf-8"))
        write_sidecar(out, record)
    width = max(len(Path(c["relevance"]).name) for c in curves)
    print(f"{'relevance':{width}}  {'target':12}  {'order':7}  {'AOPC':>10}  {'score 0':>10}  {'score end':>10}")
    for c in curves:
        print(f"{Path(c['relevance']).name:{width}}  {c['target_name'][:12]:12}  {c['order']:7}  {c['aopc']:10.4g}  "
              f"{c['scores'][0]:10.4g}  {c['scores'][-1]:10.4g}")
    for c in curves:
        if c.get("flipped") and c["order"] == "morf":
            print(f"{Path(c['relevance']).name}: most relevant regions first: {', '.join(c['flipped'][:6])}"
                  + (" …" if len(c["flipped"]) > 6 else ""))
    print(f"wrote {out} and {sidecar_path(out)}")
    return 0
