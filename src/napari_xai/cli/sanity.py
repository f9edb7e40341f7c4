"""``napari-xai sanity``: the model-parameter randomization test (Adebayo et al. 2018), headless.

The model's parametrised layers are randomized on a copy, from the output end
towards the input (``--mode cascading``, cumulative) or one at a time
(``--mode independent``), and the map of ``--method`` is computed again after
each step (:func:`napari_xai.core.evaluation.sanity.sanity_check`). The table compares
every map with the original: Spearman rank correlation (signed and of |map|),
SSIM and the overlap of the top 5 % voxels. A map that stays the same while
the weights become random does not explain the model.

With ``--out FOLDER`` it writes ``sanity.json`` (the table, the layers, the
seed and the provenance) and, with ``--maps``, every step's map as
``NN_<layer>.nii.gz`` with a JSON sidecar. Existing files are never replaced
without ``--overwrite``; if a step fails, nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import (add_grid_options, add_model_options, add_output_flags, add_segmentation_options, check_out_dir,
                          input_space_kwargs, load_model_from)
from ..core.errors import UserError

HELP = "randomize the model's layers (top down) and measure how much the attribution map changes"


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    from ..core.evaluation.sanity import INITS, MODES

    p = subparsers.add_parser("sanity", help=HELP, description=HELP + " (Adebayo et al. 2018).")
    p.add_argument("volume", nargs="+", metavar="VOLUME", help="NIfTI file(s); several become channels in this order")
    add_model_options(p)
    p.add_argument("--method", default="integrated-gradients", help="attribution method (see 'napari-xai methods')")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter; repeatable")
    p.add_argument("--target", help="class index or name to explain at every step (default: the original prediction)")
    p.add_argument("--mode", choices=MODES, default="cascading",
                   help="cascading: randomize cumulatively from the output end (default); independent: one layer at a time")
    p.add_argument("--init", choices=INITS, default="normal",
                   help="normal: N(mean, std) of each original tensor (default); kaiming: N(0, sqrt(2/fan_in)) weights")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (and of stochastic methods)")
    p.add_argument("--layers", type=int, metavar="N", help="randomize only the last N parametrised layers")
    p.add_argument("--top-fraction", type=float, default=0.05, metavar="F",
                   help="share of voxels for the top-voxel overlap (default 0.05)")
    add_grid_options(p)
    g = p.add_argument_group("LRP configurations and segmentation models (as in 'explain')")
    g.add_argument("--config", metavar="CONFIG.json", help="LRP configuration for --method lrp (from the LRP designer)")
    g.add_argument("--configuration", metavar="NAME", help="configuration name inside a --config library file")
    add_segmentation_options(g)
    p.add_argument("--out", metavar="FOLDER", help="folder for sanity.json (and the maps with --maps)")
    p.add_argument("--maps", action="store_true", help="also write every step's map (NIfTI + JSON sidecar) into --out")
    add_output_flags(p, "replace existing files in --out")
    p.set_defaults(func=cmd_sanity)
    return p


def _check_args(args: argparse.Namespace) -> Path | None:
    """Fail on bad options (and on an --out folder holding an earlier run) before any work; the output folder."""
    from ..core.methods.catalogue import get_method

    get_method(args.method)
    if args.layers is not None and args.layers < 1:
        raise UserError(f"--layers must be at least 1, got {args.layers}.")
    if args.seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {args.seed}.")
    if not 0 < args.top_fraction <= 1:
        raise UserError(f"--top-fraction must be in (0, 1], got {args.top_fraction}.")
    if args.maps and not args.out:
        raise UserError("--maps writes the maps into the --out folder; give --out FOLDER too.")
    if not args.out:
        return None
    return check_out_dir(args.out, ["sanity.json", "[0-9][0-9]*_*.nii.gz"], args.overwrite, option="--out",
                         sidecars=True)


def cmd_sanity(args: argparse.Namespace) -> int:
    from .lrp import explain_options
    from .options import parse_params
    from ..core.compare import slug
    from ..core.provenance import to_json, write_sidecar
    from ..core.evaluation.sanity import sanity_check
    from ..core.volumes import atomic_write_bytes, load_nifti, save_nifti, stack_channels, written_or_removed

    outdir = _check_args(args)
    space = input_space_kwargs(args)
    params = parse_params(args.param)
    volume = stack_channels([load_nifti(p) for p in args.volume])
    extra_params, kwargs = explain_options(args, volume)
    params.update(extra_params)
    model = load_model_from(args)
    shown: set[str] = set()

    def progress(frac: float, msg: str) -> None:
        # one line per randomization step ("2/7 randomized features.7"), not per percent of each map
        step = msg.split(":", 1)[0]
        if args.quiet or not sys.stderr.isatty() or step in shown:
            return
        shown.add(step)
        print(f"[{frac * 100:5.1f}%] {step}", file=sys.stderr)

    t0 = time.perf_counter()
    result = sanity_check(volume, model, args.method, params=params, target=args.target, mode=args.mode,
                          seed=args.seed, last=args.layers, init=args.init, top_fraction=args.top_fraction,
                          keep_maps=bool(args.maps), progress=progress, normalization=args.normalization,
                          input_shape=args.input_shape, **space, **kwargs)
    seconds = time.perf_counter() - t0
    for w in result.warnings:
        print(f"napari-xai: warning: {w}", file=sys.stderr)
    command = getattr(args, "command_line", "napari-xai sanity")
    rows = result.rows  # to_json writes an undefined correlation (NaN, a constant map) as null
    if outdir is not None:
        files = []
        with written_or_removed() as written:
            if args.maps:
                for row, m, rec in zip(result.rows, result.maps, result.step_provenance):
                    path = outdir / f"{row['step']:02d}_{slug(row['layer']) if row['layer'] else 'original'}.nii.gz"
                    save_nifti(path, m.sum(axis=0), result.original.affine, header=volume.header)
                    written.append(path)
                    written.append(write_sidecar(path, {**rec, "output": str(path), "command": command}))
                    files.append(path.name)
            summary = {"command": command, "volumes": [str(p) for p in args.volume], **result.provenance,
                       "seconds": round(seconds, 2), "rows": rows, "files": files}
            atomic_write_bytes(outdir / "sanity.json", (to_json(summary) + "\n").encode("utf-8"))
            written.append(outdir / "sanity.json")
    print_table(result)
    where = f"; wrote {outdir / 'sanity.json'}" + (f" and {len(result.rows)} maps" if args.maps else "") if outdir else ""
    print(f"{len(result.rows) - 1} randomization steps in {seconds:.1f} s{where}")
    return 0


def print_table(result) -> None:
    """The rows as a readable table, with what the mode means."""
    prov = result.provenance
    target = (prov.get("target") or {}).get("name", "")
    cumulative = prov["mode"] == "cascading"
    print(f"{prov.get('method', 'map')} for '{target}' ({prov['model'].get('name', 'model')}); {prov['mode']} "
          f"randomization of {len(result.layers)} of {prov['layers_in_model']} parametrised layers, output end first "
          f"(init {prov['init']}, seed {prov['seed']})")
    pct = f"top-{prov['metrics']['top_fraction'] * 100:g}%"
    width = max([len("randomized" + (" (+ above)" if cumulative else ""))] + [len(r["layer"]) for r in result.rows])
    head = "randomized" + (" (+ above)" if cumulative else "")
    print(f"{'step':>4}  {head:{width}}  {'type':12}  {'spearman':>8}  {'|spearman|':>10}  {'SSIM':>6}  {pct:>7}  "
          f"{'max|r|':>9}  predicted")
    for r in result.rows:
        pred = f"{r['predicted']} (p {target} {r['target_probability']:.3f})" if "predicted" in r else ""
        print(f"{r['step']:>4}  {(r['layer'] or '(none)'):{width}}  {(r['type'] or '-'):12}  {r['spearman']:8.3f}  "
              f"{r['spearman_abs']:10.3f}  {r['ssim']:6.3f}  {r['top_overlap']:7.3f}  {r['max_abs']:9.3g}  {pred}")
