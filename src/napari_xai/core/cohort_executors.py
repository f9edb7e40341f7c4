"""Executors of the cohort tasks: serially, on a local process pool, or as Dask futures; each yields rows.

Every executor runs :func:`~napari_xai.core.cohort_task.run_subject`, whose writes are atomic, so a retried
task is harmless and the tables do not depend on the executor (docs/cohort.md).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, Iterator, Sequence

from .cohort import Subject
from .cohort_task import MODEL_LOADS, RunConfig, forget_models, one_line, run_subject, write_row
from .errors import UserError

DASK_HINT = ("--scheduler needs Dask: pip install 'napari-xai[dask]' (dask and distributed), "
             "or use --workers N for a local process pool.")


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
        forget_models()  # under fork a CUDA model must not be shared; spawn starts empty anyway
    else:
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
        raise UserError(f"cannot reach the Dask scheduler at {scheduler}: {one_line(exc)}; start it first "
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
    # a key of its own (hash=False): a content-hashed key is shared with an earlier run's scatter of the same
    # settings, whose release then cancels this run's tasks ("lost dependencies")
    cfg_future = client.scatter(cfg, broadcast=True, hash=False)
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
                row = {"id": sid, "status": "failed", "error": f"worker lost after {retries} retries: {one_line(exc)}"}
                write_row(cfg.outdir, sid, cfg.row_settings(), row)  # so failures.csv gives this reason
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
