"""Running a cohort: the per-subject task (``cohort_task``), its executors (``cohort_executors``: serial, process
pool, Dask) and, here, the streaming reduction (:func:`reduce_cohort`) and :func:`run_local`.

The reduction reads the rows and maps the tasks wrote, in table order, so the tables do not depend on the executor;
docs/cohort.md ("How a cohort runs") has the whole design. No Qt here; Dask is imported only when asked for.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .cohort import RunningMean, Subject, correlations, summarize
from .cohort_executors import DASK_HINT, iter_dask, iter_pool, iter_serial, require_dask, select_part, start_dask, worker_plan
from .cohort_task import MEASURES, RunConfig, cache_model, map_path, read_row, row_path, run_subject

__all__ = ["RunConfig", "run_subject", "reduce_cohort", "iter_serial", "iter_pool", "iter_dask", "select_part",
           "worker_plan", "DASK_HINT", "require_dask", "start_dask", "cache_model", "read_row", "map_path", "row_path",
           "MEASURES", "run_local"]

REGION_COLUMNS = ["id", "region", "voxels", "pos_sum", "neg_sum", "sum", "mean"]


# ---------------------------------------------------------------- the reduction
def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if v != v else f"{v:.8g}"
    return "" if v is None else str(v)


class _CsvOut:
    """A CSV written row by row to a temporary file beside ``path``, renamed into place by :meth:`commit`."""

    def __init__(self, path: Path, header: list[str]):
        import csv
        import tempfile

        self.path = Path(path)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=str(self.path.parent))
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="")
        self.w = csv.writer(self.fh, lineterminator="\n")
        self.w.writerow(header)
        self.rows = 0

    def write(self, row) -> None:
        self.w.writerow([_fmt(v) for v in row])
        self.rows += 1

    def commit(self) -> None:
        self.fh.close()
        from .volumes import current_umask

        os.chmod(self.tmp, 0o666 & ~current_umask())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.fh.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def reduce_cohort(outdir, subjects: Sequence[Subject], cfg: RunConfig) -> dict:
    """Build the tables from the per-subject rows and maps, in table order, one subject at a time.

    Writes ``subjects.csv``, ``failures.csv``, ``mean_relevance.nii.gz``
    (+ sidecar) and, with an atlas, ``regions.csv`` and ``correlations.csv``.
    A subject without a row made with these settings counts as failed ("not
    run"). Returns a summary dict (counts, readout statistics, timings).
    """
    from .evaluation.metrics import MASK_READOUTS
    from .provenance import write_sidecar
    from .volumes import load_nifti, save_nifti

    readout_keys = [k for k in (*MASK_READOUTS, "aopc_morf", "aopc_random")]
    out = Path(outdir)
    rsettings = cfg.row_settings()
    covariates = list(subjects[0].covariates) if subjects else []
    has_truth = any(s.truth is not None for s in subjects)
    metrics = [k for k in readout_keys if (k in MASK_READOUTS and has_truth) or (k.startswith("aopc") and cfg.flip)]
    header = ["id", "status", "predicted", "probability", "target", "relevance_sum", "positive_sum", "negative_sum",
              "map", "error", *metrics, *covariates]
    tables = {n: out / n for n in ("subjects.csv", "failures.csv", "regions.csv", "correlations.csv")}
    subj = _CsvOut(tables["subjects.csv"], header)
    fails = _CsvOut(tables["failures.csv"], ["id", "reason"])
    regions = _CsvOut(tables["regions.csv"], REGION_COLUMNS) if cfg.atlas else None
    mean = RunningMean()
    values: dict[str, dict[str, float]] = {}
    done_rows = []  # readouts + status only (a few numbers per subject) for the summary
    failures, seconds = [], []
    mcol = REGION_COLUMNS.index(cfg.measure) - 1
    try:
        for s in subjects:
            rec = read_row(out, s.id)
            if rec is None or rec.get("settings") != rsettings:
                row = {"id": s.id, "status": "failed",
                       "error": "not run with these settings (run its --part-id, or the cohort again, to resume)"}
            else:
                row = rec["row"]
            if row.get("status") == "failed":
                failures.append({"id": s.id, "error": row.get("error", "")})
                fails.write([s.id, row.get("error", "")])
                subj.write([row.get(h, "") if h in ("id", "status", "error") else s.covariates.get(h, "")
                            for h in header])
                continue
            seconds.append(float(row.get("timings", {}).get("total", float("nan"))))
            vol = load_nifti(out / row["map"])
            mean.add(vol.data[0], vol.affine, s.id)
            del vol
            if regions is not None:
                for r in row.get("regions", []):
                    regions.write([s.id, *r])
                values[s.id] = {r[0]: float(r[mcol]) for r in row.get("regions", [])}
            subj.write([s.covariates.get(h, "") if h in covariates else row.get(h, "") for h in header])
            done_rows.append({"status": row["status"], **{k: row[k] for k in metrics if k in row}})
        corr = []
        if regions is not None:
            regions.commit()
            if covariates and values:
                corr = correlations(values, [s for s in subjects if s.id in values], cfg.measure)
                c = _CsvOut(tables["correlations.csv"], ["region", "covariate", "measure", "n", "r", "p"])
                for row in corr:
                    c.write([row["region"], row["covariate"], row["measure"], row["n"], row["r"], row["p"]])
                c.commit()
        subj.commit()
        fails.commit()
    except BaseException:
        for w in (subj, fails, regions):
            if w is not None and os.path.exists(w.tmp):
                w.discard()
        raise
    mpath = out / "mean_relevance.nii.gz"
    if mean.mean is not None:
        save_nifti(mpath, mean.mean, mean.affine)
        write_sidecar(mpath, {"kind": "cohort-mean-relevance", "subjects": mean.count,
                              "skipped_other_grid": mean.skipped, "settings": cfg.settings(), "command": cfg.command})
    sec = np.asarray([x for x in seconds if math.isfinite(x)], float)
    return {"subjects": len(subjects), "ok": len(subjects) - len(failures), "failures": failures,
            "reused": sum(1 for r in done_rows if r["status"] == "reused"),
            "mean_over": mean.count, "mean_skipped_other_grid": mean.skipped,
            "readouts": summarize(done_rows, metrics) if metrics else None, "metrics": metrics,
            "correlations": corr, "regions": cfg.atlas is not None,
            "seconds_per_subject": float(np.median(sec)) if sec.size else float("nan")}


def run_local(subjects: Sequence[Subject], cfg: RunConfig, model, workers: int = 1,
              on_row: Callable[[dict], None] | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Run every subject on this machine (serially or on a process pool of ``workers``) and reduce the tables.

    ``on_row`` sees each finished row; ``should_stop`` is polled after each
    subject and stops the run with :class:`~napari_xai.core.errors.Cancelled`
    (finished subjects are kept: the same call again resumes). For widgets.
    """
    from .errors import Cancelled

    Path(cfg.outdir, "maps").mkdir(parents=True, exist_ok=True)
    cache_model(cfg, model)
    rows = iter_pool(subjects, cfg, workers, stop=should_stop) if workers > 1 and len(subjects) > 1 \
        else iter_serial(subjects, cfg)
    try:
        for row in rows:
            if on_row is not None:
                on_row(row)
            if should_stop is not None and should_stop():
                raise Cancelled("cancelled by the user; finished subjects are kept")
    finally:
        rows.close()
    return reduce_cohort(cfg.outdir, subjects, cfg)
