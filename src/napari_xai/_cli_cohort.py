"""``napari-xai cohort``: explain every subject of a cohort with one model and method; group results.

Writes into ``--out-dir``:

* ``maps/<id>.nii.gz`` (+ JSON sidecar) per subject. A map whose sidecar
  records the same model, method, parameters, target and input files is reused,
  so an interrupted run resumes where it stopped; a map made with other
  settings is refused unless ``--overwrite``;
* ``subjects.csv`` (+ ``subjects.json``: settings, failures, versions): per
  subject the status, prediction, explained class, relevance sums, the map's
  file and the covariates of the cohort CSV;
* ``mean_relevance.nii.gz`` (+ sidecar): the mean map over the subjects that
  share the first subject's grid;
* with ``--atlas``: ``regions.csv`` (relevance per subject and region) and, when
  the cohort CSV has numeric covariates, ``correlations.csv`` (Pearson's r and
  p of each region's relevance with each covariate);
* with ``--png``, ``subjects.png``: napari's grid view of ``--png-subjects``
  subjects' maps over their own anatomy with one colour scale, labelled with
  id, ``--png-by`` covariate and prediction (Dyrba et al.'s Fig. 4);
* with a ``truth`` column (ground-truth masks), the relevance mass inside the
  mask, rank accuracy and inclusivity per subject, and with ``--flip`` the
  AOPC of region flipping (most relevant first and random); their mean and SD
  over the cohort go into ``subjects.json``, so methods and models can be
  ranked on a whole cohort.

A subject that fails with a user error (a bad file, a wrong channel count) is
reported and skipped; the others go on, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

from ._cli_common import add_model_options, check_out_dir, load_model_from
from .core.errors import UserError
from .core.metrics import MASK_READOUTS

HELP = "explain every subject of a cohort (CSV or files) with one model and method; mean map, region table, correlations"
MEASURES = ("pos_sum", "sum", "mean", "neg_sum")


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("cohort", help=HELP, description=HELP + ".")
    p.add_argument("inputs", nargs="+", metavar="SUBJECTS.csv|VOLUME",
                   help="a cohort CSV (columns id, path, numeric covariates) or NIfTI files (id = file name)")
    add_model_options(p)
    p.add_argument("--method", default="integrated-gradients", help="attribution method (see 'napari-xai methods')")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter; repeatable")
    p.add_argument("--target", help="class index or name for every subject (default: each subject's predicted class)")
    p.add_argument("--normalization", choices=("none", "zscore", "minmax"), help="override the model's intensity normalisation")
    p.add_argument("--input-shape", metavar="D,H,W", help="model grid when the model does not declare one")
    p.add_argument("--atlas", metavar="NAME_OR_PATH", help="atlas for regions.csv and correlations.csv (see 'napari-xai atlases')")
    p.add_argument("--labels", metavar="FILE", help="labels file of a user --atlas: CSV (index,name), FreeSurfer LUT or FSL XML")
    p.add_argument("--atlas-threshold", type=float, default=25.0, metavar="PERCENT",
                   help="probabilistic atlases: minimum probability of a region (default 25)")
    p.add_argument("--measure", choices=MEASURES, default="pos_sum",
                   help="region relevance correlated with the covariates (default pos_sum)")
    p.add_argument("--flip", action="store_true",
                   help="also score each map by region flipping: AOPC most relevant first and random (3-voxel "
                        "regions, 10 steps up to 20 %%, zero baseline: core.perturbation.READOUT_FLIP)")
    p.add_argument("--png", action="store_true",
                   help="also render subjects.png: napari's grid of some subjects' maps over their own anatomy, one "
                        "colour scale (on a private Xvfb display when there is none)")
    p.add_argument("--png-subjects", type=int, default=6, metavar="N", help="subjects in subjects.png (default 6)")
    p.add_argument("--png-by", metavar="COVARIATE",
                   help="pick the --png subjects spread over this numeric covariate (e.g. age, severity) instead of the first N")
    p.add_argument("--view", choices=("3d", "2d"), default="3d", help="view of --png (default 3d)")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="recompute maps made with other settings; replace the tables")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_cohort)
    return p


READOUTS = (*MASK_READOUTS, "aopc_morf", "aopc_random")


def _readouts(args, subject, data, model, target, volume=None) -> dict:
    """Ground-truth readouts (with a ``truth`` column) and flipping AOPC (with ``--flip``) for one subject's map.

    ``volume`` is the subject's input if it is loaded already (a reused map's input is loaded here, once).
    """
    from .core.volumes import load_nifti, stack_channels

    out: dict = {}
    if subject.truth is None and not args.flip:
        return out
    if volume is None:
        volume = stack_channels([load_nifti(p) for p in subject.paths])
    if subject.truth is not None:
        from .core.metrics import mask_report

        t = load_nifti(subject.truth)
        if t.channels != 1 or tuple(t.shape) != tuple(data.shape):
            raise UserError(f"truth mask {subject.truth.name} has shape {tuple(t.shape)} but the map has "
                            f"{tuple(data.shape)}; give the mask on the subject's grid.")
        rep = mask_report(data, t.data[0] != 0, image=volume.data)
        out.update({k: float(rep[k]) for k in MASK_READOUTS})
    if args.flip:
        from .core.perturbation import Scorer, aopc_readouts

        scorer = Scorer(model, volume, int(target["index"]), normalization=args.normalization,
                        input_shape=args.input_shape)
        out.update(aopc_readouts(model, volume, data, scorer))
    return out


def _csv_bytes(header: list[str], rows: list[list]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.8g}"
    return "" if v is None else str(v)


def _subjects_png(args, rows: list[dict], subjects, outdir: Path, png: Path) -> bool:
    """subjects.png: the maps of a few subjects over their own anatomy in napari's grid, one colour scale."""
    from types import SimpleNamespace

    from ._cli_compare import render_png
    from ._demo_app import virtual_display
    from .core.cohort import pick_subjects
    from .core.compare import common_limit
    from .core.volumes import load_nifti

    paths = {s.id: s.paths for s in subjects}
    picked = pick_subjects(rows, args.png_subjects, args.png_by)
    if not picked:
        return False
    anatomy, results = [], []
    for r in picked:
        rel = load_nifti(outdir / r["map"])
        anatomy.append(load_nifti(paths[r["id"]][0]).data[0])
        by = r.get(args.png_by) if args.png_by else None
        label = r["id"] + ("" if by is None else f" · {args.png_by} {by:.4g}" if isinstance(by, float) else f" · {by}")
        label += f" · {r['predicted']} {r['probability']:.2f}"
        results.append((label, SimpleNamespace(data=rel.data, affine=rel.affine, header=rel.header, warnings=[],
                                               provenance={"kind": "cohort-subject", "subject": r["id"]})))
    limit = common_limit([res.data.sum(axis=0) for _, res in results])
    with virtual_display():
        # seen from above (an axial MIP), where bilateral findings such as both hippocampi show side by side
        render_png(anatomy, results, limit, png, args.view == "3d", title="napari-xai cohort", cell_px=460,
                   angles=(0.0, 90.0, 0.0))
    return True


def cmd_cohort(args: argparse.Namespace) -> int:
    import numpy as np

    from .cli import _parse_params
    from .core import atlas as at
    from .core.cohort import RunningMean, correlations, subjects_from_inputs, summarize
    from .core.explain import explain
    from .core.provenance import package_versions, read_sidecar, sha256_file, write_sidecar
    from .core.registry import get_method
    from .core.volumes import atomic_write_bytes, load_nifti, save_nifti, stack_channels, written_or_removed

    t0 = time.perf_counter()
    outdir = check_out_dir(args.out_dir)
    subjects = subjects_from_inputs(args.inputs)
    params = _parse_params(args.param)
    method = get_method(args.method)
    method.parse(params)  # bad parameters fail before any subject runs
    tables = [outdir / n for n in ("subjects.csv", "regions.csv", "correlations.csv", "mean_relevance.nii.gz")]
    if args.png:
        tables.append(outdir / "subjects.png")
        from ._demo_app import require_display

        require_display()
        if args.png_subjects < 1 or args.png_subjects > 24:
            raise UserError(f"--png-subjects must be 1 to 24 (a readable grid), got {args.png_subjects}.")
        if args.png_by and args.png_by not in (subjects[0].covariates if subjects else {}):
            raise UserError(f"--png-by {args.png_by!r} is not a covariate of the cohort table; use one of: "
                            f"{', '.join(subjects[0].covariates) or 'none (the table has no covariates)'}.")
    check_out_dir(outdir, [p.name for p in tables], args.overwrite, sidecars=True,
                  note=" (maps made with the same settings are reused either way)")
    atlas = None
    if args.atlas:
        if not 0.0 <= args.atlas_threshold <= 100.0:
            raise UserError(f"--atlas-threshold is a probability in percent (0-100), got {args.atlas_threshold:g}.")
        atlas = at.load_atlas(args.atlas, labels=args.labels)
    model = load_model_from(args)
    settings = {"model_sha256": model.sha256, "method": method.name, "params": params,
                "target": args.target, "normalization": args.normalization, "input_shape": args.input_shape}
    (outdir / "maps").mkdir(parents=True, exist_ok=True)
    command = getattr(args, "command_line", "napari-xai cohort")
    mean = RunningMean()
    rows, region_rows, failures = [], [], []
    values: dict[str, dict[str, float]] = {}
    grids: dict = {}
    for k, s in enumerate(subjects, start=1):
        path = outdir / "maps" / f"{s.id}.nii.gz"
        key = {**settings, "inputs": [sha256_file(p) for p in s.paths]}
        status = "ok"
        volume = None
        try:
            side = read_sidecar(path) if path.exists() else None
            if side is not None and side.get("cohort_key") == key:
                rel_vol = load_nifti(path)
                data, affine = rel_vol.data[0], rel_vol.affine
                pred, target = side["prediction"], side["target"]
                status = "reused"
            else:
                if path.exists() and not args.overwrite:
                    raise UserError(f"{path} was made with other settings; pass --overwrite to recompute it, or "
                                    "choose another --out-dir.")
                volume = stack_channels([load_nifti(p) for p in s.paths])
                rel = explain(volume, model, method.name, params=dict(params), target=args.target,
                              normalization=args.normalization, input_shape=args.input_shape)
                data = rel.data.sum(axis=0)
                affine = rel.affine
                pred, target = rel.provenance["prediction"], rel.provenance["target"]
                record = {**rel.provenance, "output": str(path), "command": command, "subject": s.id,
                          "cohort_key": key}
                with written_or_removed():  # the map and its sidecar appear together (a resumed run trusts both)
                    save_nifti(path, data, affine, header=volume.header)
                    write_sidecar(path, record)
                for w in rel.warnings:
                    print(f"napari-xai: warning: {s.id}: {w}", file=sys.stderr)
            data = np.asarray(data, dtype=np.float64)
            readouts = _readouts(args, s, data, model, target, volume)
        except UserError as exc:
            failures.append({"id": s.id, "error": str(exc)})
            print(f"napari-xai: error: subject {s.id}: {exc}", file=sys.stderr)
            rows.append({"id": s.id, "status": "failed", "error": str(exc), **s.covariates})
            continue
        mean.add(data, affine, s.id)
        if atlas is not None:
            gkey = (tuple(data.shape), tuple(np.round(np.asarray(affine), 4).ravel()))
            if gkey not in grids:
                grids[gkey] = at.atlas_on_grid(atlas, data.shape, affine, threshold=args.atlas_threshold / 100.0)
            table = at.region_table(grids[gkey], data, sort_by=None)
            values[s.id] = {r["region"]: float(r[args.measure]) for r in table.rows}
            region_rows += [[s.id, r["region"], r["voxels"], _fmt(r["pos_sum"]), _fmt(r["neg_sum"]),
                             _fmt(r["sum"]), _fmt(r["mean"])] for r in table.rows]
        prob = pred.get("probabilities", {}).get(pred.get("name"), float("nan")) if isinstance(pred, dict) else float("nan")
        rows.append({"id": s.id, "status": status, "predicted": pred.get("name", ""), "probability": float(prob),
                     "target": target.get("name", ""), "relevance_sum": float(data.sum()),
                     "positive_sum": float(data[data > 0].sum()), "negative_sum": float(data[data < 0].sum()),
                     "map": f"maps/{path.name}", "error": "", **readouts, **s.covariates})
        if not args.quiet:
            print(f"[{k}/{len(subjects)}] {s.id}: {status}; predicted {pred.get('name')}, explained {target.get('name')}",
                  file=sys.stderr)
    covariates = list(subjects[0].covariates) if subjects else []
    metrics = [k for k in READOUTS if any(k in r for r in rows)]
    header = ["id", "status", "predicted", "probability", "target", "relevance_sum", "positive_sum", "negative_sum",
              "map", "error", *metrics, *covariates]
    atomic_write_bytes(tables[0], _csv_bytes(header, [[_fmt(r.get(h, "")) for h in header] for r in rows]))
    corr = []
    if atlas is not None:
        atomic_write_bytes(tables[1], _csv_bytes(["id", "region", "voxels", "pos_sum", "neg_sum", "sum", "mean"], region_rows))
        if covariates and values:
            ok = [s for s in subjects if s.id in values]
            corr = correlations(values, ok, args.measure)
            atomic_write_bytes(tables[2], _csv_bytes(["region", "covariate", "measure", "n", "r", "p"],
                                                     [[c["region"], c["covariate"], c["measure"], c["n"], _fmt(c["r"]),
                                                       _fmt(c["p"])] for c in corr]))
    if mean.mean is not None:
        save_nifti(tables[3], mean.mean, mean.affine)
        write_sidecar(tables[3], {"kind": "cohort-mean-relevance", "subjects": mean.count, "skipped_other_grid": mean.skipped,
                                  "settings": settings, "command": command})
    png_written = bool(args.png) and _subjects_png(args, rows, subjects, outdir, tables[4])
    summary = {"kind": "cohort", "command": command, "settings": settings, "method_params": method.parse(params),
               "model": {"source": str(args.model), "name": model.name, "sha256": model.sha256},
               "atlas": {"name": atlas.name, "threshold_percent": args.atlas_threshold} if atlas is not None else None,
               "subjects": len(subjects), "ok": len(subjects) - len(failures), "failures": failures,
               "mean_over": mean.count, "mean_skipped_other_grid": mean.skipped,
               "readouts": summarize([r for r in rows if r["status"] != "failed"], metrics) if metrics else None,
               "seconds": round(time.perf_counter() - t0, 2), "versions": package_versions()}
    write_sidecar(tables[0], summary)
    reused = sum(1 for r in rows if r["status"] == "reused")
    print(f"{len(subjects) - len(failures)} of {len(subjects)} subjects explained ({reused} reused) in "
          f"{time.perf_counter() - t0:.1f} s; mean map over {mean.count}; wrote {outdir}/subjects.csv"
          + (", regions.csv" if atlas is not None else "") + (", correlations.csv" if corr else "")
          + (", subjects.png" if png_written else ""))
    for c in corr[:3]:
        print(f"  r = {c['r']:+.3f} (p = {c['p']:.2g}, n = {c['n']}): {c['measure']} in {c['region']} vs {c['covariate']}")
    for k, v in (summary["readouts"] or {}).items():
        print(f"  {k}: mean {v['mean']:.4g}, sd {v['sd']:.4g} (n = {v['n']})")
    if failures:
        raise UserError(f"{len(failures)} subject(s) failed ({', '.join(f['id'] for f in failures[:5])}); "
                        "see the lines above and subjects.csv.")
    return 0
