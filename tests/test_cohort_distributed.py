"""Cohorts beyond one process: the per-subject task, the process pool, Dask, job-array parts and their merge.

Facts checked: the per-subject maps of every executor are bitwise equal to the
serial run's (same task, same model, one torch thread per task), and the tables
(mean map, regions, correlations, subjects, failures) are byte-for-byte equal,
since the reduction always reads the per-subject outputs in table order.

Dask tests need the extra ``napari-xai[dask]``: ``scripts/setup.sh`` installs it,
so CI runs them. Without Dask they skip with a reason shown by ``-ra``, except
when the environment variable ``CI`` is set: there a missing Dask fails.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from model_factory import python_source
from model_factory import run_cli as run

SHAPE = (12, 12, 12)
AFF = np.diag([2.0, 2.0, 2.0, 1.0])
N = 5


def need_dask():
    try:
        import distributed  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI installs napari-xai[dask] (scripts/setup.sh), but distributed does not import")
        pytest.skip("needs the dask extra (pip install -e '.[dask]'); CI installs it and runs this test")


def exe() -> str:
    return os.path.join(os.path.dirname(sys.executable), "napari-xai")


def run_exe(*argv, timeout=600, env=None):
    e = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([exe(), *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=e)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cohort")
    source, weights, kwargs = python_source(tmp / "model", seed=3)
    rng = np.random.default_rng(5)
    lines = ["id,path,age"]
    for k in range(N):
        nib.save(nib.Nifti1Image(rng.random(SHAPE).astype(np.float32), AFF), str(tmp / f"s{k}.nii.gz"))
        lines.append(f"s{k},s{k}.nii.gz,{60 + 7 * k % 11}")
    (tmp / "bad.nii.gz").write_bytes(b"this is not a NIfTI file")
    (tmp / "cohort.csv").write_text("\n".join(lines) + "\n")
    (tmp / "with_bad.csv").write_text("\n".join(lines[:3] + ["bad,bad.nii.gz,70"] + lines[3:]) + "\n")
    atlas = np.zeros(SHAPE, np.int16)
    atlas[:6] = 1
    atlas[6:] = 2
    nib.save(nib.Nifti1Image(atlas, AFF), str(tmp / "atlas.nii.gz"))
    (tmp / "atlas.csv").write_text("index,name\n1,left\n2,right\n")
    model = ["--model", source, "--weights", weights, "--method", "saliency", "--target", "1",
             "--atlas", tmp / "atlas.nii.gz", "--labels", tmp / "atlas.csv", "--quiet"]
    return tmp, model


def maps(out: Path) -> dict[str, bytes]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj).tobytes() for p in sorted((out / "maps").glob("*.nii.gz"))}


def same_tables(a: Path, b: Path) -> None:
    for name in ("subjects.csv", "regions.csv", "correlations.csv", "failures.csv"):
        assert filecmp.cmp(a / name, b / name, shallow=False), name
    ma, mb = (np.asarray(nib.load(str(o / "mean_relevance.nii.gz")).dataobj) for o in (a, b))
    assert ma.tobytes() == mb.tobytes()


def test_worker_plan_and_parts():
    from napari_xai.core.cohort import Subject
    from napari_xai.core.cohort_run import select_part, worker_plan

    assert worker_plan(2, 0, 2) == [{"env": {}, "threads": 1}] * 2
    assert [p["threads"] for p in worker_plan(3, 0, 16)] == [5, 5, 5]
    assert [p["threads"] for p in worker_plan(4, 0, 2)] == [1] * 4  # never 0 threads
    gpu = worker_plan(8, 2, 16)  # one worker per GPU, each seeing only its own
    assert [p["env"]["CUDA_VISIBLE_DEVICES"] for p in gpu] == ["0", "1"] and gpu[0]["threads"] == 8
    subjects = [Subject(f"s{k}", []) for k in range(7)]
    parts = [[s.id for s in select_part(subjects, 3, i)] for i in range(3)]
    assert parts == [["s0", "s3", "s6"], ["s1", "s4"], ["s2", "s5"]]
    assert sorted(sum(parts, [])) == sorted(s.id for s in subjects)


def test_pool_and_parts_match_serial_bitwise_and_merge(cohort, capsys):
    tmp, model = cohort
    serial = tmp / "serial"
    code, out, err = run(capsys, "cohort", tmp / "cohort.csv", *model, "--out-dir", serial)
    assert code == 0, err
    assert len(maps(serial)) == N
    # correlations.csv uses --measure (default pos_sum) of each region: Pearson's r from regions.csv's column
    regions = list(csv.DictReader((serial / "regions.csv").open()))
    ages = {r["id"]: float(r["age"]) for r in csv.DictReader((tmp / "cohort.csv").open())}
    corr = {(r["region"], r["covariate"]): r for r in csv.DictReader((serial / "correlations.csv").open())}
    for region in ("left", "right"):
        rows = [r for r in regions if r["region"] == region]
        x, y = [float(r["pos_sum"]) for r in rows], [ages[r["id"]] for r in rows]
        assert corr[(region, "age")]["measure"] == "pos_sum"
        assert float(corr[(region, "age")]["r"]) == pytest.approx(float(np.corrcoef(x, y)[0, 1]), abs=1e-6)
    # two halves, as two array jobs would run them; no tables until the merge
    halves = tmp / "halves"
    for i in (0, 1):
        code, out, err = run(capsys, "cohort", tmp / "cohort.csv", *model, "--out-dir", halves,
                             "--num-parts", "2", "--part-id", i)
        assert code == 0, err
        assert f"part {i} of 2: {len(range(i, N, 2))} of {len(range(i, N, 2))} subjects" in out
    assert not (halves / "subjects.csv").exists()
    code, out, err = run(capsys, "cohort-merge", halves)
    assert code == 0, err
    assert maps(halves) == maps(serial)
    same_tables(serial, halves)
    # a merge with a missing part names the subjects that were not run, exit 2
    one = tmp / "one_half"
    assert run(capsys, "cohort", tmp / "cohort.csv", *model, "--out-dir", one, "--num-parts", "2", "--part-id", "1")[0] == 0
    code, out, err = run(capsys, "cohort-merge", one)
    assert code == 2 and "3 subject(s) failed (s0, s2, s4)" in err
    assert [r["id"] for r in csv.DictReader((one / "failures.csv").open())] == ["s0", "s2", "s4"]
    # the local process pool, through the executable
    pool = tmp / "pool"
    res = run_exe("cohort", tmp / "cohort.csv", *model, "--out-dir", pool, "--workers", "2")
    assert res.returncode == 0, res.stderr
    assert maps(pool) == maps(serial)
    same_tables(serial, pool)
    pids = {json.loads((pool / "rows" / f"s{k}.json").read_text())["row"]["timings"]["pid"] for k in range(N)}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes did the work


def test_failing_subject_goes_to_failures_csv_and_the_rest_runs(cohort, capsys):
    tmp, model = cohort
    out = tmp / "with_bad"
    code, stdout, err = run(capsys, "cohort", tmp / "with_bad.csv", *model, "--out-dir", out)
    assert code == 2 and "subject bad:" in err and "1 subject(s) failed (bad)" in err and "failures.csv" in err
    fails = list(csv.DictReader((out / "failures.csv").open()))
    assert [f["id"] for f in fails] == ["bad"] and "\n" not in fails[0]["reason"] and fails[0]["reason"]
    status = {r["id"]: r["status"] for r in csv.DictReader((out / "subjects.csv").open())}
    assert status == {"s0": "ok", "s1": "ok", "bad": "failed", "s2": "ok", "s3": "ok", "s4": "ok"}
    assert "5 of 6 subjects explained" in stdout


def test_option_checks_are_one_line_exit_2(cohort, capsys):
    tmp, model = cohort
    cases = [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--num-parts", "2"], "--num-parts K and --part-id I together"),
        (["--num-parts", "2", "--part-id", "2"], "--part-id must be 0 to 1"),
        (["--workers", "2", "--scheduler", "local:2"], "either --workers"),
        (["--memory-limit", "2GB"], "--memory-limit is for --scheduler local:N"),
    ]
    for extra, message in cases:
        code, _, err = run(capsys, "cohort", tmp / "cohort.csv", *model, "--out-dir", tmp / "never", *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not (tmp / "never").exists()
    code, _, err = run(capsys, "cohort-merge", tmp / "never")
    assert code == 2 and "has no cohort.json" in err


def test_scheduler_without_dask_is_a_one_line_hint(cohort, tmp_path):
    """A plain install (no dask extra): a ``distributed`` that cannot be imported stands in for the missing extra."""
    tmp, model = cohort
    block = tmp_path / "block"
    (block / "distributed").mkdir(parents=True)
    (block / "distributed" / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    path = os.pathsep.join([str(block), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]])
    res = run_exe("cohort", tmp / "cohort.csv", *model, "--out-dir", tmp_path / "o", "--scheduler", "local:2",
                  env={"PYTHONPATH": path})
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == ("napari-xai: error: --scheduler needs Dask: pip install 'napari-xai[dask]' (dask "
                                  "and distributed), or use --workers N for a local process pool.")
    assert not (tmp_path / "o").exists()


def test_dask_local_cluster_cli_bitwise_equal_to_serial_and_one_model_load_per_worker(cohort, capsys):
    need_dask()
    tmp, model = cohort
    serial = tmp / "serial_d"
    assert run(capsys, "cohort", tmp / "with_bad.csv", *model, "--out-dir", serial)[0] == 2
    # napari-xai cohort --scheduler local:2 starts LocalCluster(n_workers=2, processes=True, threads_per_worker=1)
    out = tmp / "dask"
    res = run_exe("cohort", tmp / "with_bad.csv", *model, "--out-dir", out, "--scheduler", "local:2")
    assert res.returncode == 2 and "1 subject(s) failed (bad)" in res.stderr, res.stderr
    assert maps(out) == maps(serial) and len(maps(out)) == N
    same_tables(serial, out)
    rows = [json.loads((out / "rows" / f"s{k}.json").read_text())["row"]["timings"] for k in range(N)]
    per_worker: dict[int, list[int]] = {}
    for t in rows:
        per_worker.setdefault(t["pid"], []).append(t["model_loads"])
    assert len(per_worker) == 2 and all(max(v) == 1 for v in per_worker.values()), per_worker  # once per worker


def test_dask_futures_in_process_with_a_real_local_cluster(cohort):
    """The core executor against a LocalCluster(n_workers=2, processes=True) started here."""
    need_dask()
    from distributed import Client, LocalCluster

    from napari_xai.core.cohort import read_subjects
    from napari_xai.core.cohort_run import RunConfig, iter_dask, iter_serial, reduce_cohort
    from napari_xai.core.models import load_model

    tmp, model = cohort
    m = load_model(model[1], weights=model[3])
    subjects = read_subjects(tmp / "cohort.csv")
    rows = {}
    for name in ("a", "b"):
        cfg = RunConfig(model=model[1], weights=str(model[3]), model_sha256=m.sha256, method="saliency", target="1",
                        outdir=str(tmp / f"core_{name}"), torch_threads=1)
        if name == "a":
            rows[name] = {r["id"]: r for r in iter_serial(subjects, cfg)}
        else:
            with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
                    Client(cluster) as client:
                rows[name] = {r["id"]: r for r in iter_dask(subjects, cfg, client, retries=1)}
                # a rerun resumes: every finished subject is skipped by the hash of its inputs and settings
                again = list(iter_dask(subjects, cfg, client, retries=1))
                assert sorted(r["id"] for r in again) == sorted(rows[name]) and {r["status"] for r in again} == {"reused"}, \
                    [(r["id"], r["status"], r.get("error")) for r in again]
                # the recipe of docs/cohort.md: a cluster started elsewhere (here a LocalCluster standing in for
                # dask-jobqueue's SLURMCluster), the CLI given its address
                res = run_exe("cohort", tmp / "cohort.csv", *model, "--out-dir", tmp / "by_address",
                              "--scheduler", cluster.scheduler_address)
                assert res.returncode == 0, res.stderr
        reduce_cohort(tmp / f"core_{name}", subjects, cfg)
    assert set(rows["a"]) == set(rows["b"]) == {s.id for s in subjects}
    for sid in rows["a"]:
        assert rows["a"][sid]["relevance_sum"] == rows["b"][sid]["relevance_sum"]
    assert maps(tmp / "core_a") == maps(tmp / "core_b")
    assert maps(tmp / "by_address") == maps(tmp / "core_a")  # same map settings (the CLI adds only an atlas)
    assert len(list(csv.DictReader((tmp / "by_address" / "regions.csv").open()))) == 2 * N
    ma, mb = (np.asarray(nib.load(str(tmp / f"core_{n}" / "mean_relevance.nii.gz")).dataobj) for n in "ab")
    assert ma.tobytes() == mb.tobytes()


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(cohort, tmp_path):
    tmp, model = cohort
    lines = ["id,path"] + [f"r{k},{tmp / f's{k % N}.nii.gz'}" for k in range(80)]
    (tmp_path / "many.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "o"
    args = [exe(), "cohort", tmp_path / "many.csv", *[a for a in model if a != "--quiet"], "--out-dir", out, "--workers", "2"]
    proc = subprocess.Popen(list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    t0 = time.time()
    while time.time() - t0 < 300 and len(list((out / "rows").glob("*.json")) if (out / "rows").exists() else []) < 2:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "stopping after" in stderr and "Traceback" not in stderr, stderr
    done = len(list((out / "rows").glob("*.json")))
    assert 2 <= done < 80 and not list((out / "maps").glob(".*.tmp")) and not (out / "subjects.csv").exists()
    res = run_exe(*args[1:])
    assert res.returncode == 0, res.stderr
    assert f"80 of 80 subjects explained ({done} reused)" in res.stdout


def test_spawned_pool_as_with_cuda_loads_the_model_once_per_worker(cohort):
    """The GPU path of --workers spawns its workers (CUDA cannot be forked): each loads the model exactly once."""
    from napari_xai.core.cohort import read_subjects
    from napari_xai.core.cohort_run import RunConfig, iter_pool
    from napari_xai.core.models import load_model

    tmp, model = cohort
    m = load_model(model[1], weights=model[3])
    cfg = RunConfig(model=model[1], weights=str(model[3]), model_sha256=m.sha256, method="saliency", target="1",
                    outdir=str(tmp / "spawned"))
    (tmp / "spawned" / "maps").mkdir(parents=True)
    rows = list(iter_pool(read_subjects(tmp / "cohort.csv"), cfg, 2, cuda=True))
    assert {r["status"] for r in rows} == {"ok"} and len(rows) == N
    assert {r["timings"]["model_loads"] for r in rows} == {1} and len({r["timings"]["pid"] for r in rows}) == 2
    from dataclasses import replace

    from napari_xai.core.cohort_run import iter_serial

    (tmp / "spawned_ref" / "maps").mkdir(parents=True)
    assert {r["status"] for r in iter_serial(read_subjects(tmp / "cohort.csv"), replace(cfg, outdir=str(tmp / "spawned_ref")))} == {"ok"}
    assert maps(tmp / "spawned") == maps(tmp / "spawned_ref")
