"""``napari-xai reproduce``: make a relevance map again from its sidecar and check it comes out the same.

Exit codes: 0 reproduced (or, without a recorded map, made again), 3 made
again but different from the recorded map, 2 user error (one line), 1
internal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.errors import UserError

HELP = "run a relevance map's recorded settings again (checking input and model hashes) and compare the result"
DIFFERENT = 3


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    from ..core.reproduce import TOLERANCE

    p = subparsers.add_parser("reproduce", help=HELP, description=HELP + ".")
    p.add_argument("sidecar", metavar="RELEVANCE.json", help="the JSON sidecar of a relevance file (or the .nii.gz beside it)")
    p.add_argument("--input", nargs="+", metavar="VOLUME", help="the input NIfTI file(s), when the recorded ones moved")
    p.add_argument("--model", help="the model source, when the recorded one moved")
    p.add_argument("--weights", help="the weights file, when the recorded one moved")
    p.add_argument("--mask", metavar="MASK.nii.gz", help="the target mask of a segmentation result drawn in napari")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: CUDA when available (results may differ by ~1e-6)")
    p.add_argument("--trust-model", action="store_true",
                   help="run the recorded .py or TorchScript model and allow full unpickling: THIS RUNS CODE FROM THE FILES "
                        "the sidecar names (a sidecar may come from anyone); only for files you trust")
    p.add_argument("--allow-changed-model", action="store_true",
                   help="explain even if the model files' SHA-256 differs from the record")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help=f"largest voxel difference, as a fraction of the recorded max |r|, that counts as the same "
                        f"(default {TOLERANCE:g})")
    p.add_argument("--out", metavar="NEW.nii.gz", help="also write the new map (with its own sidecar)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_reproduce)
    return p


def _note_recorded_inputs(record: dict, side: Path) -> None:
    """The files the record names (its input volumes, its relevance file) are inputs too: --out never replaces one."""
    from ..core.outputs import note_inputs

    rec = record.get("input") if isinstance(record.get("input"), dict) else {}
    names = [f for f in (rec.get("files") or []) if isinstance(f, str)] if isinstance(rec.get("files"), list) else []
    if isinstance(record.get("output"), str):
        names.append(record["output"])
    note_inputs([p for n in names for p in (Path(n), side.parent / Path(n).name)])


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .options import PROG, check_out_file
    from ..core.provenance import read_sidecar, sidecar_path, write_sidecar
    from ..core.reproduce import reproduce
    from ..core.volumes import is_nifti_path, load_nifti, save_nifti, written_or_removed

    from ..core.provenance import find_sidecar

    side = Path(args.sidecar)
    if is_nifti_path(side):
        side = find_sidecar(side)
    if not side.exists() and side.suffix.lower() == ".json":
        # an older record name (OUT.json) given for a map written as OUT.nii.gz: its OUT.nii.gz.xai.json
        for ext in (".nii.gz", ".nii"):
            if find_sidecar(side.with_suffix(ext)).exists():
                side = find_sidecar(side.with_suffix(ext))
                break
    if not side.exists():
        raise UserError(f"{side} not found; give the relevance file or the JSON sidecar written beside it.")
    try:
        record = read_sidecar(side) if side.suffix.lower() == ".json" else None
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{side} is not a napari-xai sidecar (JSON object); give the .json beside a relevance file.")
    _note_recorded_inputs(record, side)
    out = check_out_file(args.out, args.overwrite, "nifti") if args.out else None
    mask = load_nifti(args.mask).data[0] if args.mask else None
    res = reproduce(record, sidecar=side, inputs=args.input, model=args.model, weights=args.weights, mask=mask,
                    device=args.device, trust=args.trust_model, allow_changed_model=args.allow_changed_model,
                    tolerance=args.tolerance)
    for line in res.checks:
        print(f"checked {line}")
    for w in res.relevance.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    if out is not None:
        rel = res.relevance
        record_new = {**rel.provenance, "output": str(out), "reproduces": str(side.resolve()),
                      "comparison": res.comparison,
                      "command": getattr(args, "command_line", PROG)}
        with written_or_removed(out, sidecar_path(out)):
            save_nifti(out, rel.data[0] if rel.data.shape[0] == 1 else rel.data, rel.affine)
            write_sidecar(out, record_new)
        print(f"wrote {out} and {sidecar_path(out)}")
    c = res.comparison
    if c is None:
        print("made again; no recorded map to compare with")
        return 0
    print(json.dumps({k: c[k] for k in ("max_abs_diff", "max_abs_recorded", "relative", "pearson")}))
    if c["reproduced"]:
        print(f"reproduced: the largest voxel difference is {c['relative']:.2g} of the recorded max |r| "
              f"(tolerance {c['tolerance']:g})")
        return 0
    print(f"NOT reproduced: the largest voxel difference is {c['relative']:.3g} of the recorded max |r| "
          f"(tolerance {c['tolerance']:g}; Pearson r {c['pearson']:.4f})")
    return DIFFERENT
