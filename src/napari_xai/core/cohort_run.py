"""Running a cohort: one pure per-subject task, executors (serial, process pool, Dask) and the streaming reduction.

The work of ``napari-xai cohort`` is split in two:

1. :func:`run_subject` explains one subject under a frozen :class:`RunConfig`
   and writes, atomically, ``maps/<id>.nii.gz`` (+ sidecar) and
   ``rows/<id>.json`` (its summary row: prediction, relevance sums, readouts,
   region vector, timings). It loads the model once per process (a cache keyed
   by the model part of the config), skips a subject whose row and map were
   made with the same settings and input files (resume), and turns any
   failure into a ``failed`` row with a one-line reason. Running it twice
   (a retried task) writes the same files again, so a retry is harmless.
2. :func:`reduce_cohort` reads those rows and maps in table order, one subject
   at a time, and writes the tables: the mean map, ``regions.csv``,
   ``correlations.csv``, ``subjects.csv`` and ``failures.csv``. Its memory is
   one map plus a few numbers per subject and region, whatever the cohort size.

Because the reduction always runs in table order over the files the tasks
wrote, the tables are identical whichever executor ran the tasks (serial,
:func:`iter_pool`, :func:`iter_dask`, or ``--num-parts`` halves merged).

No Qt here; Dask is imported only when asked for.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .cohort import RunningMean, Subject, correlations, summarize
from .errors import UserError

__all__ = ["RunConfig", "run_subject", "reduce_cohort", "iter_serial", "iter_pool", "iter_dask", "select_part",
           "worker_plan", "DASK_HINT", "require_dask"]

MEASURES = ("pos_sum", "sum", "mean", "neg_sum")
REGION_COLUMNS = ["id", "region", "voxels", "pos_sum", "neg_sum", "sum", "mean"]
DASK_HINT = ("--scheduler needs Dask: pip install 'napari-xai[dask]' (dask and distributed), "
             "or use --workers N for a local process pool.")


@dataclass(frozen=True)
class RunConfig:
    """Everything a subject's task needs, frozen (hashable, picklable: it travels to worker processes)."""

    model: str
    model_sha256: str
    method: str
    params: tuple[tuple[str, str], ...] = ()
    weights: str | None = None
    model_kwargs: str | None = None
    trust: bool = False
    device: str | None = None
    target: str | None = None
    normalization: str | None = None
    input_shape: str | None = None
    atlas: str | None = None
    labels: str | None = None
    atlas_threshold: float = 25.0
    measure: str = "pos_sum"
    flip: bool = False
    outdir: str = "."
    overwrite: bool = False
    command: str = "napari-xai cohort"
    torch_threads: int = 0  # 0: leave torch's thread count alone

    def settings(self) -> dict:
        """What makes a map: recorded in each map's sidecar as ``cohort_key`` (with the input hashes)."""
        return {"model_sha256": self.model_sha256, "method": self.method, "params": dict(self.params),
                "target": self.target, "normalization": self.normalization, "input_shape": self.input_shape}

    def row_settings(self) -> dict:
        """What makes a subject's row: the map's settings plus the atlas and readouts."""
        return {**self.settings(), "atlas": self.atlas, "labels": self.labels,
                "atlas_threshold": self.atlas_threshold, "flip": self.flip}

    def model_key(self) -> tuple:
        return (self.model, self.weights, self.model_kwargs, self.trust, self.device, self.model_sha256)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = [list(p) for p in self.params]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        d["params"] = tuple(tuple(p) for p in d.get("params", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ---------------------------------------------------------------- per-process caches (one model per worker)
_MODELS: dict = {}
_ATLASES: dict = {}
_GRIDS: dict = {}
MODEL_LOADS = [0]  # models loaded by this process (reported in each row's timings; tests check it is 1 per worker)


def cache_model(cfg: RunConfig, model) -> None:
    """Put an already loaded model into this process's cache (the serial driver loaded it to check the options)."""
    _MODELS[cfg.model_key()] = model


def cached_model(cfg: RunConfig):
    """The model of ``cfg``, loaded at most once per process."""
    key = cfg.model_key()
    if key not in _MODELS:
        from .models import load_model

        model = load_model(cfg.model, weights=cfg.weights, model_kwargs=cfg.model_kwargs, device=cfg.device,
                           trust=cfg.trust)
        MODEL_LOADS[0] += 1
        if model.sha256 != cfg.model_sha256:
            raise UserError(f"the model files of {cfg.model} changed since the cohort started (SHA-256 "
                            f"{model.sha256[:12]} instead of {cfg.model_sha256[:12]}); start the cohort again.")
        _MODELS[key] = model
    return _MODELS[key]


def _grid(cfg: RunConfig, shape, affine):
    from . import atlas as at

    akey = (cfg.atlas, cfg.labels)
    if akey not in _ATLASES:
        _ATLASES[akey] = at.load_atlas(cfg.atlas, labels=cfg.labels)
    gkey = (akey, cfg.atlas_threshold, tuple(shape), tuple(np.round(np.asarray(affine, float), 4).ravel()))
    if gkey not in _GRIDS:
        _GRIDS[gkey] = at.atlas_on_grid(_ATLASES[akey], shape, affine, threshold=cfg.atlas_threshold / 100.0)
    return _GRIDS[gkey]


# ---------------------------------------------------------------- the task
def map_path(outdir, sid: str) -> Path:
    return Path(outdir) / "maps" / f"{sid}.nii.gz"


def row_path(outdir, sid: str) -> Path:
    return Path(outdir) / "rows" / f"{sid}.json"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        return None  # a damaged row is redone


def read_row(outdir, sid: str) -> dict | None:
    """A subject's row record of a cohort run in ``outdir``, or None when missing or damaged."""
    return _read_json(row_path(outdir, sid))


def _write_row(outdir, sid: str, settings: dict, row: dict) -> None:
    from .provenance import to_json
    from .volumes import atomic_write_bytes

    atomic_write_bytes(row_path(outdir, sid), (to_json({"settings": settings, "row": row}) + "\n").encode("utf-8"))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


def run_subject(subject: Subject, cfg: RunConfig) -> dict:
    """Explain one subject; write its map and row atomically; return the row (``status`` ok, reused or failed).

    Never raises for a subject's own problem (a bad file, a model error): the
    row is ``failed`` with a one-line ``error``. ``KeyboardInterrupt`` passes.
    """
    from .provenance import read_sidecar, sha256_file, write_sidecar
    from .volumes import load_nifti, save_nifti, stack_channels

    t0 = time.perf_counter()
    timings: dict = {"pid": os.getpid()}
    if cfg.torch_threads > 0:
        import torch

        if torch.get_num_threads() != cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
    outdir = Path(cfg.outdir)
    rsettings = cfg.row_settings()
    try:
        key = {**cfg.settings(), "inputs": [sha256_file(p) for p in subject.paths]}
        truth_sha = sha256_file(subject.truth) if subject.truth is not None else None
        path = map_path(outdir, subject.id)
        side = read_sidecar(path) if path.exists() else None
        same_map = side is not None and side.get("cohort_key") == key
        old = _read_json(row_path(outdir, subject.id))
        if (same_map and old is not None and old.get("settings") == rsettings and old.get("row", {}).get("status") != "failed"
                and old["row"].get("inputs") == key["inputs"] and old["row"].get("truth_sha256") == truth_sha):
            row = {**old["row"], "status": "reused"}
            row["timings"] = {**timings, "total": time.perf_counter() - t0, "model_loads": MODEL_LOADS[0]}
            if old["row"].get("status") != "reused":
                _write_row(outdir, subject.id, rsettings, row)
            return row
        volume = None
        if same_map:
            rel_vol = load_nifti(path)
            data, affine = rel_vol.data[0], rel_vol.affine
            pred, target = side["prediction"], side["target"]
            status, warnings = "reused", []
        else:
            # a map with another sidecar was made with other settings; a map without one is our own interrupted write
            if side is not None and not cfg.overwrite:
                raise UserError(f"{path} was made with other settings; pass --overwrite to recompute it, or "
                                "choose another --out-dir.")
            from .explain import explain

            t = time.perf_counter()
            model = cached_model(cfg)
            timings["model"] = time.perf_counter() - t
            t = time.perf_counter()
            volume = stack_channels([load_nifti(p) for p in subject.paths])
            timings["load"] = time.perf_counter() - t
            t = time.perf_counter()
            rel = explain(volume, model, cfg.method, params=dict(cfg.params), target=cfg.target,
                          normalization=cfg.normalization, input_shape=cfg.input_shape)
            timings["explain"] = time.perf_counter() - t
            data = rel.data.sum(axis=0)
            affine = rel.affine
            pred, target = rel.provenance["prediction"], rel.provenance["target"]
            record = {**rel.provenance, "output": str(path), "command": cfg.command, "subject": subject.id,
                      "cohort_key": key}
            t = time.perf_counter()
            save_nifti(path, data, affine, header=volume.header)
            write_sidecar(path, record)  # after the map: a map without its sidecar is an interrupted write
            timings["write"] = time.perf_counter() - t
            status, warnings = "ok", list(rel.warnings)
        data = np.asarray(data, dtype=np.float64)
        t = time.perf_counter()
        readouts = _readouts(cfg, subject, data, target, volume)
        regions = []
        if cfg.atlas:
            from .atlas import region_table

            table = region_table(_grid(cfg, data.shape, affine), data, sort_by=None)
            regions = [[r["region"], int(r["voxels"]), float(r["pos_sum"]), float(r["neg_sum"]), float(r["sum"]),
                        float(r["mean"])] for r in table.rows]
        timings["readouts"] = time.perf_counter() - t
        prob = pred.get("probabilities", {}).get(pred.get("name"), float("nan")) if isinstance(pred, dict) else float("nan")
        row = {"id": subject.id, "status": status, "predicted": pred.get("name", ""), "probability": float(prob),
               "target": target.get("name", ""), "relevance_sum": float(data.sum()),
               "positive_sum": float(data[data > 0].sum()), "negative_sum": float(data[data < 0].sum()),
               "map": f"maps/{path.name}", "error": "", **readouts, "regions": regions, "warnings": warnings,
               "target_index": target.get("index"), "inputs": key["inputs"], "truth_sha256": truth_sha,
               "grid": [list(data.shape), np.asarray(affine, float).tolist()]}
    except UserError as exc:
        row = {"id": subject.id, "status": "failed", "error": _one_line(exc)}
    except Exception as exc:  # a model error in one subject must not stop the cohort; the reason is recorded
        row = {"id": subject.id, "status": "failed", "error": _one_line(exc)}
    timings.update(total=time.perf_counter() - t0, model_loads=MODEL_LOADS[0])
    row_file = {k: v for k, v in row.items() if k != "timings"}
    row_file["timings"] = timings
    _write_row(outdir, subject.id, rsettings, row_file)
    return row_file


def _readouts(cfg: RunConfig, subject: Subject, data, target, volume=None) -> dict:
    """Ground-truth readouts (``truth`` column) and flipping AOPC (``flip``) for one subject's map."""
    from .evaluation.metrics import MASK_READOUTS
    from .volumes import load_nifti, stack_channels

    out: dict = {}
    if subject.truth is None and not cfg.flip:
        return out
    if volume is None:
        volume = stack_channels([load_nifti(p) for p in subject.paths])
    if subject.truth is not None:
        from .evaluation.metrics import mask_report

        t = load_nifti(subject.truth)
        if t.channels != 1 or tuple(t.shape) != tuple(data.shape):
            raise UserError(f"truth mask {subject.truth.name} has shape {tuple(t.shape)} but the map has "
                            f"{tuple(data.shape)}; give the mask on the subject's grid.")
        rep = mask_report(data, t.data[0] != 0, image=volume.data)
        out.update({k: float(rep[k]) for k in MASK_READOUTS})
    if cfg.flip:
        from .evaluation.flipping import Scorer, aopc_readouts

        model = cached_model(cfg)
        scorer = Scorer(model, volume, int(target["index"]), normalization=cfg.normalization,
                        input_shape=cfg.input_shape)
        out.update(aopc_readouts(model, volume, data, scorer))
    return out


# ---------------------------------------------------------------- executors
def select_part(subjects: Sequence[Subject], num_parts: int, part_id: int) -> list[Subject]:
    """Every ``num_parts``-th subject starting at ``part_id`` (as nnU-Net's ``--num-parts/--part-id``)."""
    return list(subjects)[part_id::num_parts]


def worker_plan(n: int, gpus: int, cpus: int) -> list[dict]:
    """Per worker: the environment and torch threads. With GPUs, one worker per GPU (``CUDA_VISIBLE_DEVICES``;
    at most ``gpus`` workers); on CPU, ``n`` workers sharing the cores (``cpus // n`` threads each, at least 1)."""
    if gpus > 0:
        return [{"env": {"CUDA_VISIBLE_DEVICES": str(k)}, "threads": max(1, cpus // min(n, gpus))}
                for k in range(min(n, gpus))]
    return [{"env": {}, "threads": max(1, cpus // max(n, 1))} for _ in range(n)]


def iter_serial(subjects: Iterable[Subject], cfg: RunConfig) -> Iterator[dict]:
    for s in subjects:
        yield run_subject(s, cfg)


def _pool_init(queue, model_cached: bool) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops the pool cleanly
    plan = queue.get()
    os.environ.update(plan["env"])
    import torch

    torch.set_num_threads(plan["threads"])
    if not model_cached:
        _MODELS.clear()  # under fork a CUDA model must not be shared; spawn starts empty anyway
    MODEL_LOADS[0] = 0


def iter_pool(subjects: Sequence[Subject], cfg: RunConfig, workers: int, gpus: int = 0,
              stop: Callable[[], bool] | None = None, cuda: bool = False) -> Iterator[dict]:
    """Run the tasks on a local process pool; yields rows as they complete.

    On CPU the workers are forked from this process, so they inherit the model
    it loaded (no reload, no start-up import); with CUDA (``cuda`` or ``gpus``)
    they are spawned (CUDA cannot be forked) and each loads the model once, with
    ``gpus``: each on its own GPU.
    """
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    plan = worker_plan(workers, gpus, os.cpu_count() or 1)
    cuda = cuda or gpus > 0
    ctx = mp.get_context("spawn" if cuda or os.name != "posix" else "fork")
    queue = ctx.Queue()  # handed to each worker at its start (initargs): allowed for fork and spawn
    for p in plan:
        queue.put(p)
    cfg = _with_threads(cfg, plan[0]["threads"])
    ex = ProcessPoolExecutor(len(plan), mp_context=ctx, initializer=_pool_init, initargs=(queue, not cuda))
    pending = set()
    todo = iter(subjects)
    try:
        for s in todo:  # keep at most 2 tasks per worker queued: a Ctrl-C leaves little to cancel
            pending.add(ex.submit(run_subject, s, cfg))
            if len(pending) >= 2 * len(plan):
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
                if stop is None or not stop():
                    nxt = next(todo, None)
                    if nxt is not None:
                        pending.add(ex.submit(run_subject, nxt, cfg))
    finally:
        for f in pending:
            f.cancel()
        ex.shutdown(wait=True, cancel_futures=True)


def _with_threads(cfg: RunConfig, threads: int) -> RunConfig:
    from dataclasses import replace

    return replace(cfg, torch_threads=threads)


def require_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise UserError(DASK_HINT) from None
    return distributed


def start_dask(scheduler: str, gpus: int = 0, memory_limit: str | None = None):
    """(client, cluster or None) for ``--scheduler``: ``local:N`` starts a LocalCluster of N single-threaded
    worker processes (with GPUs: one per GPU, each with ``CUDA_VISIBLE_DEVICES`` and the resource ``GPU=1``);
    anything else is the address of a running scheduler."""
    distributed = require_dask()
    import dask

    if scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1])
        mem = memory_limit or "auto"
        # no dashboard here, so no statistical profiler (it samples the task thread every 10 ms and takes the GIL
        # that the Python-heavy attribution hooks need); slower event-loop ticks and system monitor for the same reason
        quiet = {"logging.distributed": "error", "distributed.worker.profile.enabled": False,
                 "distributed.admin.tick.interval": "1s", "distributed.admin.system-monitor.interval": "2s"}
        with dask.config.set(quiet):
            if gpus > 0:
                from distributed import Nanny, Scheduler, SpecCluster

                workers = {k: {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": mem,
                                                         "env": p["env"], "resources": {"GPU": 1}}}
                           for k, p in enumerate(worker_plan(n, gpus, os.cpu_count() or 1))}
                cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}},
                                      silence_logs=40)
            else:
                cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                   memory_limit=mem, dashboard_address=None, silence_logs=40)
        return distributed.Client(cluster), cluster
    try:
        client = distributed.Client(scheduler, timeout="20s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {_one_line(exc)}; start it first "
                        "(dask scheduler) or use --scheduler local:N.") from None
    return client, None


def iter_dask(subjects: Sequence[Subject], cfg: RunConfig, client, gpus: int = 0, retries: int = 1,
              stop: Callable[[], bool] | None = None, local: bool = True) -> Iterator[dict]:
    """Run the tasks as Dask futures (``submit``, ``as_completed``, ``retries``); yields rows as they complete.

    A task that loses its worker (killed, out of memory) is retried ``retries``
    times; since every write is atomic, a retry is harmless. When the workers
    offer the resource ``GPU`` (or this machine has GPUs), each task asks for
    ``GPU=1``, so one task runs per GPU. ``local``: the workers run on this
    machine (``local:N``), so its cores are divided among them.
    """
    from distributed import as_completed

    workers = client.scheduler_info().get("workers", {})
    nworkers = max(1, len(workers))
    # on this machine the cores are divided among the workers; elsewhere torch's default (set OMP_NUM_THREADS there)
    cfg = _with_threads(cfg, max(1, (os.cpu_count() or 1) // nworkers) if local and not gpus else 0)
    cfg_future = client.scatter(cfg, broadcast=True)
    # one task per GPU: ask for GPU=1 when this machine has GPUs or any worker offers the resource (--resources GPU=1)
    gpu_workers = any("GPU" in (w.get("resources") or {}) for w in workers.values())
    extra = {"resources": {"GPU": 1}} if gpus or gpu_workers else {}
    token = f"{os.getpid()}-{time.time_ns()}"
    todo = iter(subjects)

    def submit(s):
        return client.submit(run_subject, s, cfg_future, key=f"napari-xai-subject-{s.id}-{token}",
                             retries=retries, pure=False, **extra)

    first = [submit(s) for _, s in zip(range(4 * nworkers), todo)]
    ac = as_completed(first)
    live = set(first)
    try:
        for f in ac:
            live.discard(f)
            try:
                row = f.result()
            except Exception as exc:  # the worker died on every retry
                sid = f.key.split("napari-xai-subject-", 1)[1].rsplit(f"-{token}", 1)[0]
                row = {"id": sid, "status": "failed", "error": f"worker lost after {retries} retries: {_one_line(exc)}"}
                _write_row(cfg.outdir, sid, cfg.row_settings(), row)  # so failures.csv gives this reason
            yield row
            if stop is None or not stop():
                nxt = next(todo, None)
                if nxt is not None:
                    g = submit(nxt)
                    live.add(g)
                    ac.add(g)
    finally:
        if live:
            client.cancel(list(live))


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
            rec = _read_json(row_path(out, s.id))
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
