"""Start-up: how long the command line takes from the user's chair (issue 13).

Times whole processes (start to exit, imports included), warm: one run of each command is thrown away first,
then the commands run in turn ``--repeats`` times and the median is printed. References measured in the same run:

* ``python -c pass``: the interpreter's own start;
* ``python -c "import torch"``: the floor of any command that runs a model.

Commands: ``napari-xai --help``, ``methods``, ``atlases``, ``explain`` (the demo brain, demo model, saliency:
the cheapest method, so the time is start-up and pipeline) and ``demo --headless OUT`` (integrated gradients and
the 3D picture). Also prints the import time of ``napari_xai.cli.main`` and of the registry
(``python -X importtime``, cumulative microseconds of the top module).

Usage::

    .venv/bin/python benchmarks/bench_startup.py [--repeats 5] [--src PATH] [--json OUT.json]

``--src`` puts another checkout's ``src`` first on the import path (e.g. an export of an older commit), to
measure "before" with the same script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-1000:]}")
    return dt


def import_time_us(module: str, env: dict) -> int:
    """Cumulative import time of ``module`` from ``python -X importtime`` (median of 3 runs)."""
    values = []
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=env,
                              capture_output=True, text=True, check=True)
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*(\S+)$", line)
            if m and m.group(2) == module:
                values.append(int(m.group(1)))
    return int(statistics.median(values))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--src", help="import napari_xai from this src folder (default: the installed one)")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve()) + os.pathsep + env.get("PYTHONPATH", "")
    exe = shutil.which("napari-xai", path=os.path.dirname(sys.executable))
    if exe is None:
        raise SystemExit("the napari-xai executable is not installed beside this Python")
    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    try:
        # the demo brain as a NIfTI file, the input of `explain`
        subprocess.run([sys.executable, "-c",
                        "import sys; from napari_xai.core.demo import demo_volume; "
                        "from napari_xai.core.volumes import save_nifti; v, _ = demo_volume(0, True); "
                        "save_nifti(sys.argv[1], v.data[0], v.affine)", str(tmp / "brain.nii.gz")],
                       env=env, check=True)
        py = sys.executable
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "napari-xai --help": [exe, "--help"],
            "napari-xai methods": [exe, "methods"],
            "napari-xai atlases": [exe, "atlases"],
            "napari-xai explain (saliency)": [exe, "explain", str(tmp / "brain.nii.gz"), "--model", "demo",
                                              "--method", "saliency", "--out", str(tmp / "rel.nii.gz"),
                                              "--overwrite", "--quiet"],
            "napari-xai demo --headless": [exe, "demo", "--headless", str(tmp / "demo"), "--overwrite"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for cmd in commands.values():  # warm-up: page cache, byte code, the demo's disk cache
            run(cmd, env)
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                times[name].append(run(cmd, env))
        med = {k: statistics.median(v) for k, v in times.items()}
        base, torch_s = med["python -c pass"], med["python -c 'import torch'"]
        print(f"{'command':34s} {'median':>9s} {'min':>8s} {'max':>8s}  {'/ python':>9s} {'/ import torch':>15s}")
        rows = []
        for name in commands:
            v = times[name]
            print(f"{name:34s} {med[name]:8.3f}s {min(v):7.3f}s {max(v):7.3f}s  {med[name] / base:8.1f}x "
                  f"{med[name] / torch_s:14.2f}x")
            rows.append({"command": name, "median_s": med[name], "min_s": min(v), "max_s": max(v),
                         "vs_python": med[name] / base, "vs_import_torch": med[name] / torch_s})
        imports = {m: import_time_us(m, env) for m in ("napari_xai.cli.main", "napari_xai.core.methods.catalogue")}
        for m, us in imports.items():
            print(f"import {m}: {us / 1000:.0f} ms (python -X importtime, cumulative)")
        if args.json:
            Path(args.json).write_text(json.dumps({"commands": rows, "imports_us": imports}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
