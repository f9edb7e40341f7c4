"""``napari-xai compare``: one input under several methods, LRP configurations, targets and models.

Every ticked combination (method or configuration x target x model) is one
cell (:mod:`napari_xai.core.compare`). The command writes, into ``--out-dir``:

* ``NN_<label>.nii.gz`` per cell, the channel-summed relevance on the input
  grid, each with a JSON sidecar holding its full provenance;
* ``comparison.json``: the cells (label, what, target, model, file, sums,
  conservation) and the common colour limit, plus the command line;
* with ``--png``, ``comparison.png``: napari's grid view of all cells with one
  colour scale (rendered on a private Xvfb display when there is none).

Existing files are never replaced without ``--overwrite``; if a cell fails,
nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import add_grid_options, add_output_flags, check_out_dir, input_space_kwargs
from ..core.errors import UserError

HELP = "explain one input with several methods/LRP configurations, targets and models; one cell each"


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help=HELP, description=HELP + ".")
    p.add_argument("volume", nargs="+", metavar="VOLUME", help="NIfTI file(s); several become channels in this order")
    p.add_argument("--model", action="append", required=True, metavar="SOURCE",
                   help="demo | MONAI bundle folder | file.py:Class | TorchScript file; repeat to compare models")
    p.add_argument("--weights", action="append", metavar="W.pt",
                   help="state_dict checkpoint for each file.py:Class --model, in the same order")
    p.add_argument("--model-kwargs", metavar="JSON", help="constructor keyword arguments (JSON) for every file.py:Class model")
    p.add_argument("--trust-model", action="store_true",
                   help="allow full unpickling, bundle code and TorchScript: this RUNS CODE from the model files")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--method", action="append", metavar="NAME",
                   help="attribution method (see 'napari-xai methods'); repeatable; 'lrp' = the default LRP composite")
    p.add_argument("--config", metavar="CONFIG.json", help="LRP configuration library (from the LRP designer)")
    p.add_argument("--configuration", action="append", metavar="NAME",
                   help="configuration of --config to compare; repeatable (default: every configuration in the file)")
    p.add_argument("--target", action="append", metavar="CLASS",
                   help="class index or name; repeatable (default: each model's predicted class)")
    add_grid_options(p, whose="the models'", when="a model does not declare one")
    g = p.add_argument_group("segmentation models")
    g.add_argument("--segmentation", action="store_true", help="explain the masked sum of the target's logit map")
    g.add_argument("--mask", metavar="MASK.nii.gz", help="mask on the input grid; implies --segmentation")
    from .options import parse_point

    g.add_argument("--point", type=parse_point, metavar="I,J,K", help="connected predicted component at this voxel")
    p.add_argument("--truth", metavar="MASK.nii.gz",
                   help="ground-truth mask on the input grid: relevance mass, rank accuracy and inclusivity per cell")
    p.add_argument("--flip", action="store_true",
                   help="also score each cell by region flipping: AOPC most relevant first and random (as 'cohort --flip')")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the cell NIfTIs, comparison.json (and .png)")
    p.add_argument("--png", action="store_true", help="also render comparison.png (napari grid, one colour scale)")
    p.add_argument("--view", choices=("3d", "2d"), default="3d", help="view of --png (default 3d)")
    p.add_argument("--scale", choices=("common", "per-cell"), default="common",
                   help="--png colours: one limit for all cells (default) or each cell its own (methods in other units)")
    add_output_flags(p, "replace existing files in --out-dir")
    p.set_defaults(func=cmd_compare)
    return p


def _models(args):
    """name -> LoadedModel, in --model order; --weights go to the file.py:Class models in order."""
    from ..core.compare import model_name
    from ..core.models import load_model

    py = [s for s in args.model if ".py:" in s]
    weights = list(args.weights or [])
    if weights and len(weights) != len(py):
        raise UserError(f"{len(weights)} --weights for {len(py)} file.py:Class model(s); give one per such --model, in order.")
    pending = iter(weights)
    out = {}
    for source in args.model:
        w = next(pending, None) if ".py:" in source else None
        name = model_name(source, w, list(out))
        out[name] = load_model(source, weights=w, model_kwargs=args.model_kwargs if ".py:" in source else None,
                               device=args.device, trust=args.trust_model)
    return out


def _whats(args) -> tuple[list[tuple[str, str]], dict]:
    from ..core.lrp import load_configs
    from ..core.methods.catalogue import get_method

    whats = [("method", get_method(m).name) for m in (args.method or [])]
    configs: dict = {}
    if args.config:
        library, _ = load_configs(args.config)
        by_name = {c.name: c for c in library}
        names = args.configuration or list(by_name)
        for n in names:
            if n not in by_name:
                raise UserError(f"{args.config} has no configuration {n!r}; it has: {', '.join(by_name)}.")
            configs[n] = by_name[n]
            whats.append(("config", n))
    elif args.configuration:
        raise UserError("--configuration names a configuration inside --config CONFIG.json; give --config too.")
    if not whats:
        raise UserError("give at least one --method or a --config library to compare.")
    return whats, configs


def cmd_compare(args: argparse.Namespace) -> int:
    from ..core.compare import cell_limits, common_limit, plan, run_comparison, slug
    from ..core.provenance import to_json, write_sidecar
    from ..core.volumes import atomic_write_bytes, load_nifti, save_nifti, stack_channels, written_or_removed

    outdir = check_out_dir(args.out_dir)
    space = input_space_kwargs(args)
    whats, configs = _whats(args)
    targets = args.target or [None]
    volume = stack_channels([load_nifti(p) for p in args.volume])
    kwargs: dict = {"normalization": args.normalization, "input_shape": args.input_shape, **space,
                    **_segmentation_kwargs(args)}
    truth = _truth(args, volume)
    plan(whats, targets, [str(i) for i in range(len(args.model))])  # too many cells: say so before loading models
    models = _models(args)
    items = plan(whats, targets, list(models))
    table, png = outdir / "comparison.json", outdir / "comparison.png"
    # cell file names depend on the class names, known only after the run: any earlier comparison blocks
    check_out_dir(outdir, [table.name, png.name, "[0-9][0-9]_*.nii.gz"], args.overwrite, sidecars=True)
    last = [-1.0]

    def progress(frac: float, msg: str) -> None:
        if args.quiet or not sys.stderr.isatty():
            return
        if frac - last[0] >= 0.05 or frac >= 1.0:
            last[0] = frac
            print(f"[{frac * 100:5.1f}%] {msg}", file=sys.stderr)

    t0 = time.perf_counter()
    cells = run_comparison(volume, items, models, configs, progress=progress, **kwargs)
    seconds = time.perf_counter() - t0
    files = [outdir / f"{i + 1:02d}_{slug(c.label)}.nii.gz" for i, c in enumerate(cells)]
    maps = [c.relevance.data.sum(axis=0) for c in cells]
    limit = common_limit(maps)
    shown = limit if args.scale == "common" else cell_limits(maps)
    command = getattr(args, "command_line", "napari-xai compare")
    rows = []
    scorers: dict = {}
    outdir.mkdir(parents=True, exist_ok=True)
    with written_or_removed() as written:
        for i, (cell, path) in enumerate(zip(cells, files)):
            rel = cell.relevance
            summed = rel.data.sum(axis=0)
            save_nifti(path, summed, rel.affine, header=volume.header)
            written.append(path)
            record = {**rel.provenance, "output": str(path), "command": command,
                      "comparison": {"cell": i + 1, "label": cell.label, "limit": limit}}
            written.append(write_sidecar(path, record))
            cons = rel.provenance["params"].get("conservation") or {}
            readouts = {}
            if truth is not None:
                from ..core.evaluation.metrics import MASK_READOUTS, mask_report

                rep = mask_report(rel.data, truth, image=volume.data)
                readouts = {k: rep[k] for k in MASK_READOUTS}
            if args.flip:
                readouts.update(_flip_readouts(models[cell.item.model], volume, rel, kwargs, scorers))
            rows.append({
                "cell": i + 1, "label": cell.label, "kind": cell.item.kind, "name": cell.item.name,
                "target": rel.target_name, "target_index": rel.target, "model": cell.item.model,
                "file": path.name, "relevance_sum": float(summed.sum()),
                "positive_sum": float(summed[summed > 0].sum()), "negative_sum": float(summed[summed < 0].sum()),
                "conservation_ratio": cons.get("ratio"), "warnings": list(rel.warnings), **readouts,
            })
        summary = {"command": command, "volumes": [str(p) for p in args.volume], "limit": limit,
                   "scale": args.scale, "png_limits": shown if args.scale == "per-cell" else [limit] * len(cells),
                   "seconds": round(seconds, 2), "cells": rows}
        atomic_write_bytes(table, (to_json(summary) + "\n").encode("utf-8"))
        written.append(table)
        if args.png:
            from .._demo_app import virtual_display

            with virtual_display():
                render_png(volume.data[0], [(c.label, c.relevance) for c in cells], shown, png, args.view == "3d")
            written.append(png)
    print_table(rows, truth is not None, args.flip)
    scale = f"colour limit 0…{limit:.4g}" if args.scale == "common" else "each cell its own colour limit"
    print(f"{len(rows)} cells in {seconds:.1f} s; {scale}; wrote {table}"
          + (f" and {png}" if args.png else ""))
    return 0


def _segmentation_kwargs(args) -> dict:
    """``mask``, ``point`` and ``segmentation`` for :func:`run_comparison`, from the segmentation options."""
    from ..core.volumes import load_nifti

    kwargs: dict = {}
    if args.mask:
        m = load_nifti(args.mask)
        if m.channels != 1:
            raise UserError(f"--mask {args.mask} has {m.channels} channels; give one 3D mask.")
        kwargs["mask"] = m.data[0]
    if args.point:
        kwargs["point"] = tuple(args.point)
    kwargs["segmentation"] = bool(args.segmentation or args.mask or args.point)
    return kwargs


def _truth(args, volume):
    """The ``--truth`` mask as booleans on the input's grid, or None."""
    from ..core.volumes import load_nifti

    if not args.truth:
        return None
    t = load_nifti(args.truth)
    if t.channels != 1 or tuple(t.shape) != tuple(volume.shape):
        raise UserError(f"--truth {args.truth} has shape {tuple(t.shape)} (channels {t.channels}) but the input has "
                        f"{tuple(volume.shape)}; give one 3D mask on the input's grid.")
    truth = t.data[0] != 0
    if not truth.any():
        raise UserError(f"--truth {args.truth} is empty (no voxel set).")
    return truth


def print_table(rows: list[dict], truth: bool, flip: bool) -> None:
    """One line per cell on stdout (with the ground-truth and flipping readouts when asked); warnings on stderr."""
    width = max(len(r["label"]) for r in rows)
    extra = "  mass-in-GT  rank-acc  D(R,GT)  D(R,x)" if truth else ""
    extra += "  AOPC-MoRF  AOPC-rand" if flip else ""
    print(f"{'#':>3}  {'cell':{width}}  {'sum':>11}  {'positive':>11}  {'negative':>11}{extra}  file")
    for r in rows:
        more = (f"  {r['relevance_mass']:10.3f}  {r['rank_accuracy']:8.3f}  {r['ground_truth_inclusivity']:7.3f}  "
                f"{r['input_inclusivity']:6.3f}") if truth else ""
        more += f"  {r['aopc_morf']:9.4g}  {r['aopc_random']:9.4g}" if flip else ""
        print(f"{r['cell']:>3}  {r['label']:{width}}  {r['relevance_sum']:11.4g}  {r['positive_sum']:11.4g}  "
              f"{r['negative_sum']:11.4g}{more}  {r['file']}")
        for w in r["warnings"]:
            print(f"napari-xai: warning: cell {r['cell']}: {w}", file=sys.stderr)


def _flip_readouts(model, volume, rel, kwargs: dict, scorers: dict) -> dict:
    """AOPC of region flipping (most relevant first, random) for one cell, with the cell's model and target."""
    from ..core.evaluation.flipping import Scorer, aopc_readouts

    key = (id(model), rel.target)
    if key not in scorers:
        scorers[key] = Scorer(model, volume, rel.target, **{k: v for k, v in kwargs.items() if v is not None})
    return aopc_readouts(model, volume, rel.data.sum(axis=0), scorers[key])


def render_png(anatomy, results: list, limit, path: Path, three_d: bool = True, title: str = "napari-xai compare",
               cell_px: int = 330, angles: tuple = (-15.0, 35.0, 145.0)) -> None:
    """napari's grid view of the comparison, saved as one PNG (atomically); ``anatomy`` as for
    :func:`~napari_xai._layers.comparison_layer_data` (one array, or one per cell)."""
    from .._demo_app import preload_torch_extras, save_canvas_png

    preload_torch_extras()
    import napari
    import numpy as np

    from .._layers import comparison_layer_data, show_grid

    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True, title=title)
    try:
        n = len(results)
        cols = int(np.ceil(np.sqrt(n)))  # napari's grid is as square as possible
        rows = -(-n // cols)
        viewer.window.resize(cell_px * cols + 60, cell_px * rows + 160)
        QApplication.processEvents()
        show_grid(viewer, comparison_layer_data(anatomy, results, limit), three_d=three_d)
        QApplication.processEvents()
        viewer.reset_view()
        if three_d:  # after reset_view, which resets the camera angles too
            viewer.camera.angles = tuple(angles)
        QApplication.processEvents()
        save_canvas_png(viewer, path)
    finally:
        viewer.close()
