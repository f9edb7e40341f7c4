"""``napari-xai clusters``: the explorer's post-processing chain, headless.

It runs exactly the chain of the explorer widget
(:class:`napari_xai.core.explorer.Explorer`), so the same parameters give the
same labels, table and filtered map. Parameters come from the defaults, then a
sidecar (``--params-from``), then the flags given on the command line.

With ``--atlas NAME_OR_PATH`` the table gains the explorer's atlas columns
(``peak_region``, ``regions``);
:func:`napari_xai.core.cluster_outputs.save_outputs_with_regions` is shared with the explorer widget's Save so
both write the same CSV.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import UserError
from .options import add_output_flags

HELP = "threshold and cluster a relevance NIfTI (the explorer's chain); writes labels, table and sidecars"


def _alpha(text: str) -> tuple[float, float]:
    parts = [p for p in text.replace(";", ",").split(",") if p.strip()]
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--alpha {text!r} must be A1,A2 (fractions of max|r|), e.g. 0,0.4") from None
    if len(vals) == 1:
        return (0.0, vals[0])
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"--alpha {text!r} must be one or two numbers, e.g. 0.4 or 0.1,0.6")
    return (vals[0], vals[1])


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register the ``clusters`` sub-command on an argparse sub-parsers object."""
    from ..core.postprocess import CONNECTIVITIES, FILTERS, SCALES, SIGNS, SIZE_UNITS, PostParams

    d = PostParams()
    p = subparsers.add_parser(
        "clusters",
        help=HELP,
        description=HELP + ". Defaults: " + ", ".join(f"{k}={v}" for k, v in d.to_dict().items()),
    )
    p.add_argument("relevance", metavar="RELEVANCE.nii.gz", help="relevance NIfTI (e.g. from 'napari-xai explain')")
    p.add_argument("--sigma", type=float, metavar="MM", help="Gaussian smoothing sigma in mm (0 = none)")
    p.add_argument("--scale", choices=SCALES, help="divide by nothing, max|r|, a percentile of |r|, or a fixed value")
    p.add_argument("--percentile", type=float, help="percentile of |r| for --scale percentile (default 99.99)")
    p.add_argument("--scale-value", type=float, metavar="V", help="divisor for --scale fixed (same V for every subject)")
    p.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None, help="clip the scaled map to [-1, 1]")
    p.add_argument("--filter", choices=FILTERS, help="fraction-pass or fraction-clamp filter on r/max|r|")
    p.add_argument("--alpha", type=_alpha, metavar="A1,A2", help="filter range as fractions of max|r| (A2 alone = 0,A2)")
    p.add_argument("--sign", choices=SIGNS, help="which relevance to cluster")
    p.add_argument("--threshold", type=float, help="keep voxels with |r| > THRESHOLD (units of the scaled map)")
    p.add_argument("--min-size", type=float, metavar="N", help="drop clusters smaller than N (see --size-unit)")
    p.add_argument("--size-unit", choices=SIZE_UNITS, help="unit of --min-size: voxels or mm3")
    p.add_argument("--connectivity", type=int, choices=CONNECTIVITIES, help="6 (faces), 18 (+edges) or 26 (+corners)")
    p.add_argument("--params-from", metavar="SIDECAR.json", help="take the parameters from a sidecar; flags override")
    p.add_argument("--channel", type=int, help="channel of a 4D relevance file (required when it has several)")
    p.add_argument("--out-table", metavar="T.csv", help="cluster table (CSV) + T.json sidecar")
    p.add_argument("--out-labels", metavar="L.nii.gz", help="uint16 cluster labels + L.json sidecar")
    p.add_argument("--out-filtered", metavar="F.nii.gz", help="filtered relevance (float32) + F.json sidecar")
    p.add_argument("--mask-filtered", action="store_true", help="zero the filtered relevance outside the kept clusters")
    p.add_argument("--atlas", metavar="NAME_OR_PATH",
                   help="add peak_region and regions columns to the table from this atlas (see 'napari-xai atlases')")
    p.add_argument("--atlas-labels", metavar="FILE", help="labels file of a user --atlas: CSV (index,name), FreeSurfer LUT or FSL XML")
    p.add_argument("--atlas-threshold", type=float, default=25.0, metavar="PERCENT",
                   help="probabilistic atlases: min. probability of the max-probability label (default 25)")
    add_output_flags(p, "replace existing outputs", "print nothing but errors")
    p.set_defaults(func=cmd_clusters)
    return p


FLAG_TO_PARAM = {
    "sigma": "sigma_mm",
    "scale": "scale",
    "percentile": "percentile",
    "scale_value": "scale_value",
    "clip": "clip",
    "filter": "filter",
    "alpha": "alpha",
    "sign": "sign",
    "threshold": "threshold",
    "min_size": "min_size",
    "size_unit": "size_unit",
    "connectivity": "connectivity",
}


def params_from_args(args: argparse.Namespace):
    """Defaults <- ``--params-from`` sidecar <- explicit flags."""
    from ..core.explorer import params_from_sidecar
    from ..core.postprocess import PostParams

    params = params_from_sidecar(args.params_from) if args.params_from else PostParams()
    changes = {param: getattr(args, flag) for flag, param in FLAG_TO_PARAM.items() if getattr(args, flag) is not None}
    return params.replace(**changes).validated()


def cmd_clusters(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core import geometry
    from ..core.cluster_outputs import atlas_record, save_outputs_with_regions
    from ..core.explorer import Explorer, source_provenance
    from ..core.provenance import read_sidecar, sha256_file
    from ..core.volumes import load_nifti

    if not (args.out_table or args.out_labels or args.out_filtered):
        raise UserError("give at least one output: --out-table T.csv, --out-labels L.nii.gz or --out-filtered F.nii.gz.")
    if (args.atlas or args.atlas_labels) and not args.out_table:
        raise UserError("--atlas adds region columns to the cluster table; give --out-table T.csv as well.")
    if args.atlas_labels and not args.atlas:
        raise UserError("--atlas-labels needs --atlas IMAGE.nii.gz (the label image of the user atlas).")
    from .options import check_out_file
    from ..core.outputs import check_distinct
    from ..core.provenance import sidecar_path

    outs = [check_out_file(path, args.overwrite, suffix, option=opt)
            for opt, path, suffix in (("--out-table", args.out_table, ".csv"), ("--out-labels", args.out_labels, "nifti"),
                                      ("--out-filtered", args.out_filtered, "nifti")) if path]
    check_distinct(outs + [sidecar_path(p) for p in outs])
    params = params_from_args(args)
    vol = load_nifti(args.relevance)
    if vol.channels > 1 and args.channel is None:
        raise UserError(f"{Path(args.relevance).name} has {vol.channels} channels; choose one with --channel 0..{vol.channels - 1}.")
    ch = 0 if args.channel is None else args.channel
    if not 0 <= ch < vol.channels:
        raise UserError(f"--channel {ch} is out of range; {Path(args.relevance).name} has {vol.channels} channel(s).")
    try:
        side = read_sidecar(args.relevance)
    except ValueError:
        side = None
    prov = source_provenance(side)
    import warnings

    from ..core.errors import XaiWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XaiWarning)  # the same text is in result.messages
        ex = Explorer(np.asarray(vol.data[ch]), vol.affine, params, provenance=prov, name=Path(args.relevance).name)
        result = ex.update()
    source = {
        "file": str(Path(args.relevance).resolve()),
        "sha256": sha256_file(args.relevance),
        "channel": ch,
        "shape": list(vol.shape),
        "voxel_size_mm": geometry.voxel_sizes(vol.affine).tolist(),
    }
    command = getattr(args, "command_line", None)
    regions = atlas = None
    notes = []
    if args.atlas:
        from ..core import atlas as at

        atl = at.load_atlas(args.atlas, labels=args.atlas_labels)
        grid = at.atlas_on_grid(atl, result.labels.shape, result.affine, threshold=args.atlas_threshold / 100.0)
        regions = at.cluster_region_columns(result.table, result.labels, grid)
        atlas = atlas_record(grid)
        space = at.check_mni_space(grid.shape, grid.affine)
        notes = ([space] if space else []) + list(atl.warnings)
    paths = save_outputs_with_regions(
        result,
        regions,
        atlas,
        labels_path=args.out_labels,
        filtered_path=args.out_filtered,
        table_path=args.out_table,
        source=source,
        provenance=prov,
        header=vol.header,
        mask_filtered=args.mask_filtered,
        overwrite=args.overwrite,
        extra={"command": command} if command else None,
    )
    if not args.quiet:
        for m in list(result.messages) + notes:
            print(f"napari-xai: note: {m}", file=sys.stderr)
        print(result.summary())
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0
