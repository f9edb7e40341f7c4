"""``napari-xai cohort``: explain every subject of a cohort with one model and method; group results.

Writes into ``--out-dir``:

* ``maps/<id>.nii.gz`` (+ JSON sidecar) per subject. A map whose sidecar
  records the same model, method, parameters, target and input files is reused,
  so an interrupted run resumes where it stopped; a map made with other
  settings is refused unless ``--overwrite``;
* ``subjects.csv`` (+ ``subjects.csv.xai.json``: settings, failures, versions): per
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
  over the cohort go into ``subjects.csv.xai.json``, so methods and models can be
  ranked on a whole cohort.

A subject that fails (a bad file, a wrong channel count, a model error) is
reported, listed in ``failures.csv`` with a one-line reason and skipped; the
others go on, and the exit code is 2.

The subjects run through :mod:`napari_xai.core.cohort_run`: serially, on a
local process pool (``--workers N``), on Dask (``--scheduler``), or one part
of a job array (``--num-parts K --part-id I``, then ``napari-xai cohort-merge``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import add_grid_options, add_model_options, add_output_flags, check_out_dir, load_model_from
from ..core.errors import UserError

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
    add_grid_options(p, space=False)
    p.add_argument("--atlas", metavar="NAME_OR_PATH", help="atlas for regions.csv and correlations.csv (see 'napari-xai atlases')")
    p.add_argument("--labels", metavar="FILE", help="labels file of a user --atlas: CSV (index,name), FreeSurfer LUT or FSL XML")
    p.add_argument("--atlas-threshold", type=float, default=25.0, metavar="PERCENT",
                   help="probabilistic atlases: minimum probability of a region (default 25)")
    p.add_argument("--measure", choices=MEASURES, default="pos_sum",
                   help="region relevance correlated with the covariates (default pos_sum)")
    p.add_argument("--flip", action="store_true",
                   help="also score each map by region flipping: AOPC most relevant first and random (3-voxel "
                        "regions, 10 steps up to 20 %%, zero baseline: core.evaluation.flipping.READOUT_FLIP)")
    p.add_argument("--png", action="store_true",
                   help="also render subjects.png: napari's grid of some subjects' maps over their own anatomy, one "
                        "colour scale (on a private Xvfb display when there is none)")
    p.add_argument("--png-subjects", type=int, default=6, metavar="N", help="subjects in subjects.png (default 6)")
    p.add_argument("--png-by", metavar="COVARIATE",
                   help="pick the --png subjects spread over this numeric covariate (e.g. age, severity) instead of the first N")
    p.add_argument("--view", choices=("3d", "2d"), default="3d", help="view of --png (default 3d)")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder")
    add_output_flags(p, "recompute maps made with other settings; replace the tables")
    g = p.add_argument_group("executors (see docs/cohort.md)")
    g.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local worker processes (default 1: in this process); with CUDA one per GPU, on CPU the "
                        "cores are divided among them")
    g.add_argument("--scheduler", metavar="ADDRESS|local:N",
                   help="run the subjects on a Dask distributed cluster (tcp://host:8786), or start a local one of "
                        "N workers; needs the extra napari-xai[dask]")
    g.add_argument("--memory-limit", metavar="SIZE", help="Dask memory limit per worker of --scheduler local:N (e.g. 4GB; default auto)")
    g.add_argument("--retries", type=int, default=1, metavar="N",
                   help="Dask: times a task is retried when its worker dies (default 1; retries are harmless)")
    g.add_argument("--num-parts", type=int, metavar="K", help="split the cohort into K parts (job arrays); "
                   "then run napari-xai cohort-merge OUT_DIR")
    g.add_argument("--part-id", type=int, metavar="I", help="the part to run, 0 to K-1: every K-th subject from the I-th")
    p.set_defaults(func=cmd_cohort)
    m = subparsers.add_parser("cohort-merge", help=MERGE_HELP, description=MERGE_HELP + ".")
    m.add_argument("out_dir", metavar="OUT_DIR", help="the --out-dir of the cohort parts")
    m.add_argument("--overwrite", action="store_true", help="replace the tables")
    m.set_defaults(func=cmd_merge)
    return p


MERGE_HELP = ("build the tables of a cohort run in --num-parts parts (mean map, subjects, regions, correlations, "
              "failures) from the parts' per-subject outputs")


def _subjects_png(args, rows: list[dict], subjects, outdir: Path, png: Path) -> bool:
    """subjects.png: the maps of a few subjects over their own anatomy in napari's grid, one colour scale."""
    from types import SimpleNamespace

    from .compare import render_png
    from .._demo_app import virtual_display
    from ..core.cohort import pick_subjects
    from ..core.compare import common_limit
    from ..core.volumes import load_nifti

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



TABLES = ("subjects.csv", "failures.csv", "regions.csv", "correlations.csv", "mean_relevance.nii.gz")
CONFIG = "cohort.json"


def check_executor_options(args) -> None:
    """Every executor option, checked before any work (one line each)."""
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}.")
    if args.retries < 0:
        raise UserError(f"--retries must be 0 or more, got {args.retries}.")
    if args.scheduler is not None:
        if args.workers != 1:
            raise UserError("give either --workers (a local process pool) or --scheduler (Dask), not both.")
        sched = args.scheduler.strip()
        if sched.startswith("local:"):
            n = sched.split(":", 1)[1]
            if not n.isdigit() or int(n) < 1:
                raise UserError(f"--scheduler local:N needs a number of workers N >= 1, got {args.scheduler!r}.")
        elif not sched or " " in sched:
            raise UserError(f"--scheduler {args.scheduler!r} is neither local:N nor a scheduler address (tcp://host:8786).")
        from ..core.cohort_run import require_dask

        require_dask()
    elif args.memory_limit is not None:
        raise UserError("--memory-limit is for --scheduler local:N (Dask workers).")
    if (args.num_parts is None) != (args.part_id is None):
        raise UserError("give --num-parts K and --part-id I together (I from 0 to K-1).")
    if args.num_parts is not None:
        if args.num_parts < 1:
            raise UserError(f"--num-parts must be at least 1, got {args.num_parts}.")
        if not 0 <= args.part_id < args.num_parts:
            raise UserError(f"--part-id must be 0 to {args.num_parts - 1} for --num-parts {args.num_parts}, got {args.part_id}.")
        if args.png:
            raise UserError("--png draws from the whole cohort: run it with napari-xai cohort (no --num-parts) after the merge.")


class Progress:
    """Subjects done and failed, the rate and the ETA: a tqdm bar on a terminal, one line per subject otherwise."""

    def __init__(self, total: int, quiet: bool):
        self.total, self.quiet, self.done, self.failed = total, quiet, 0, 0
        self.t0 = time.perf_counter()
        self.bar = None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="subject", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, row: dict) -> None:
        self.done += 1
        self.failed += row.get("status") == "failed"
        if row.get("status") == "failed":
            msg = f"napari-xai: error: subject {row['id']}: {row.get('error', '')}"
            (self.bar.write if self.bar is not None else lambda m: print(m, file=sys.stderr))(msg)
        if self.bar is not None:
            self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)
        elif not self.quiet:
            dt = time.perf_counter() - self.t0
            rate = self.done / dt if dt > 0 else float("inf")
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            print(f"[{self.done}/{self.total}] {row['id']}: {row.get('status')}"
                  + (f"; predicted {row.get('predicted')}, explained {row.get('target')}" if row.get("status") != "failed" else "")
                  + f" ({self.failed} failed; {rate:.2f} subjects/s, ETA {eta:.0f} s)", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _gpus(model) -> int:
    if getattr(model, "device", None) is None or model.device.type != "cuda" or model.device.index is not None:
        return 0
    import torch

    return torch.cuda.device_count()


def run_rows(subjects, cfg, args, model, progress: Progress) -> None:
    """Run every subject's task on the chosen executor, reporting each row to ``progress``."""
    from ..core import cohort_run as cr

    gpus = _gpus(model)
    client = cluster = None
    if args.scheduler:
        client, cluster = cr.start_dask(args.scheduler.strip(), gpus=gpus, memory_limit=args.memory_limit)
        rows = cr.iter_dask(subjects, cfg, client, gpus=gpus, retries=args.retries, local=cluster is not None)
    elif args.workers > 1 and len(subjects) > 1:
        cr.cache_model(cfg, model)
        rows = cr.iter_pool(subjects, cfg, args.workers, gpus=gpus, cuda=getattr(model.device, "type", "cpu") == "cuda")
    else:
        cr.cache_model(cfg, model)
        rows = cr.iter_serial(subjects, cfg)
    try:
        for row in rows:
            progress.update(row)
    except KeyboardInterrupt:
        progress.close()
        print(f"napari-xai: stopping after {progress.done} of {progress.total} subjects; finished subjects are kept, "
              "and the same command again resumes from there.", file=sys.stderr)
        raise
    finally:
        rows.close()
        progress.close()
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def _run_config(args, model, method, params, outdir: Path):
    from ..core.cohort_run import RunConfig

    return RunConfig(model=str(args.model), model_sha256=model.sha256, method=method.name,
                     params=tuple(sorted(params.items())), weights=str(Path(args.weights).resolve()) if args.weights else None,
                     model_kwargs=args.model_kwargs, trust=bool(args.trust_model), device=args.device,
                     target=args.target, normalization=args.normalization, input_shape=args.input_shape,
                     atlas=args.atlas, labels=args.labels, atlas_threshold=float(args.atlas_threshold),
                     measure=args.measure, flip=bool(args.flip), outdir=str(outdir.resolve()),
                     overwrite=bool(args.overwrite), command=getattr(args, "command_line", "napari-xai cohort"))


def cmd_cohort(args: argparse.Namespace) -> int:
    from .options import parse_params
    from ..core import atlas as at
    from ..core.cohort import subjects_from_inputs
    from ..core.cohort_run import select_part
    from ..core.provenance import to_json
    from ..core.methods.catalogue import get_method
    from ..core.volumes import atomic_write_bytes

    t0 = time.perf_counter()
    outdir = check_out_dir(args.out_dir)
    check_executor_options(args)
    subjects = subjects_from_inputs(args.inputs)
    params = parse_params(args.param)
    method = get_method(args.method)
    method.parse(params)  # bad parameters fail before any subject runs
    if args.png:
        from .._demo_app import require_display

        require_display()
        if args.png_subjects < 1 or args.png_subjects > 24:
            raise UserError(f"--png-subjects must be 1 to 24 (a readable grid), got {args.png_subjects}.")
        if args.png_by and args.png_by not in (subjects[0].covariates if subjects else {}):
            raise UserError(f"--png-by {args.png_by!r} is not a covariate of the cohort table; use one of: "
                            f"{', '.join(subjects[0].covariates) or 'none (the table has no covariates)'}.")
    part = args.num_parts is not None
    if not part:
        check_out_dir(outdir, [*TABLES, *(["subjects.png"] if args.png else [])], args.overwrite, sidecars=True,
                      note=" (maps made with the same settings are reused either way)")
    if args.atlas:
        if not 0.0 <= args.atlas_threshold <= 100.0:
            raise UserError(f"--atlas-threshold is a probability in percent (0-100), got {args.atlas_threshold:g}.")
        at.load_atlas(args.atlas, labels=args.labels)
    model = load_model_from(args)
    cfg = _run_config(args, model, method, params, outdir)
    (outdir / "maps").mkdir(parents=True, exist_ok=True)
    inputs = [str(Path(i).resolve()) for i in args.inputs]
    atomic_write_bytes(outdir / CONFIG, (to_json({"kind": "cohort-config", "inputs": inputs, "config": cfg.to_dict(),
                                                  "num_parts": args.num_parts}) + "\n").encode("utf-8"))
    todo = select_part(subjects, args.num_parts, args.part_id) if part else subjects
    progress = Progress(len(todo), args.quiet)
    run_rows(todo, cfg, args, model, progress)
    if part:
        print(f"part {args.part_id} of {args.num_parts}: {progress.done - progress.failed} of {len(todo)} subjects "
              f"explained in {time.perf_counter() - t0:.1f} s; when every part is done: napari-xai cohort-merge {outdir}")
        if progress.failed:
            raise UserError(f"{progress.failed} subject(s) of part {args.part_id} failed; see the lines above.")
        return 0
    return _finish(outdir, subjects, cfg, args, t0, model=model, method=method, params=params, png=args.png)


def _finish(outdir: Path, subjects, cfg, args, t0: float, model=None, method=None, params=None, png=False) -> int:
    """The tables (streaming reduction), the subjects sidecar, the optional figure, the summary lines and the exit code."""
    from ..core.cohort_run import reduce_cohort
    from ..core.provenance import package_versions, write_sidecar

    res = reduce_cohort(outdir, subjects, cfg)
    png_written = bool(png) and _subjects_png(args, _png_rows(outdir, subjects), subjects, outdir, outdir / "subjects.png")
    summary = {"kind": "cohort", "command": cfg.command, "settings": cfg.settings(),
               "method_params": method.parse(params) if method is not None else dict(cfg.params),
               "model": {"source": cfg.model, "name": getattr(model, "name", None), "sha256": cfg.model_sha256},
               "atlas": {"name": cfg.atlas, "threshold_percent": cfg.atlas_threshold} if cfg.atlas else None,
               **{k: res[k] for k in ("subjects", "ok", "failures", "mean_over", "mean_skipped_other_grid", "readouts")},
               "seconds_per_subject_median": res["seconds_per_subject"],
               "seconds": round(time.perf_counter() - t0, 2), "versions": package_versions()}
    write_sidecar(outdir / "subjects.csv", summary)
    corr = res["correlations"]
    n, nfail = len(subjects), len(res["failures"])
    print(f"{n - nfail} of {n} subjects explained ({res['reused']} reused) in "
          f"{time.perf_counter() - t0:.1f} s; mean map over {res['mean_over']}; wrote {outdir}/subjects.csv, failures.csv"
          + (", regions.csv" if res["regions"] else "") + (", correlations.csv" if corr else "")
          + (", subjects.png" if png_written else ""))
    for c in corr[:3]:
        print(f"  r = {c['r']:+.3f} (p = {c['p']:.2g}, n = {c['n']}): {c['measure']} in {c['region']} vs {c['covariate']}")
    for k, v in (summary["readouts"] or {}).items():
        print(f"  {k}: mean {v['mean']:.4g}, sd {v['sd']:.4g} (n = {v['n']})")
    if nfail:
        raise UserError(f"{nfail} subject(s) failed ({', '.join(f['id'] for f in res['failures'][:5])}); "
                        "see failures.csv; the same command again retries them and reuses the others.")
    return 0


def _png_rows(outdir: Path, subjects) -> list[dict]:
    from ..core.cohort_run import read_row

    rows = []
    for s in subjects:
        rec = read_row(outdir, s.id) or {}
        r = rec.get("row", {"status": "failed"})
        rows.append({"id": s.id, "status": r.get("status"), "map": r.get("map"), "predicted": r.get("predicted"),
                     "probability": float(r.get("probability") or float("nan")), **s.covariates})
    return rows


def cmd_merge(args: argparse.Namespace) -> int:
    """``napari-xai cohort-merge OUT_DIR``: the tables of a cohort run in parts."""
    import json

    from ..core.cohort import subjects_from_inputs
    from ..core.cohort_run import RunConfig

    t0 = time.perf_counter()
    outdir = Path(args.out_dir)
    if not (outdir / CONFIG).is_file():
        raise UserError(f"{outdir} has no {CONFIG}; give the --out-dir of a napari-xai cohort run.")
    check_out_dir(outdir, TABLES, args.overwrite, option="OUT_DIR", sidecars=True)
    try:
        rec = json.loads((outdir / CONFIG).read_text(encoding="utf-8"))
        cfg = RunConfig.from_dict(rec["config"])
        inputs = rec["inputs"]
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{outdir / CONFIG} is damaged ({exc}); run a part again to rewrite it.") from None
    subjects = subjects_from_inputs(inputs)
    args.png = False
    return _finish(outdir, subjects, cfg, args, t0)
