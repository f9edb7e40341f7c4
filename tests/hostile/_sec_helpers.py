"""Shared helpers for the hostile security/record suite (``test_hostile_sec_*.py``).

Every case runs the real ``napari-xai`` executable in a subprocess and checks the CLI contract: the exit code,
exactly one stderr line for an error, no traceback, and that no file outside the command's outputs changed
(every file under the test's folder is hashed before and after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: What the payloads write into the victim file when they run.
PWNED = b"PWNED\n"
VICTIM_TEXT = b"a user's precious file\n"


def exe() -> str:
    """The ``napari-xai`` executable of the running environment (CI's .venv or the shared one)."""
    here = os.path.join(os.path.dirname(sys.executable), "napari-xai")
    return here if os.path.exists(here) else (shutil.which("napari-xai") or here)


@dataclass
class Result:
    code: int | None  # None: killed after the timeout (the command hung)
    out: str
    err: str
    seconds: float


def run(*argv, cwd: Path | str | None = None, env: dict | None = None, timeout: float = 120) -> Result:
    """Run ``napari-xai ARGV`` (strings or paths); a hang is reported as ``code=None`` instead of raising."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    t0 = time.perf_counter()
    try:
        p = subprocess.run([exe(), *map(str, argv)], cwd=cwd, env=full_env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return Result(None, exc.stdout or "", exc.stderr or "", time.perf_counter() - t0)
    return Result(p.returncode, p.stdout, p.stderr, time.perf_counter() - t0)


def snapshot(folder: Path, skip=()) -> dict[str, str]:
    """relative path -> SHA-256 of every file under ``folder`` (``skip``: relative paths or folder prefixes)."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_dir() or any(rel == s or rel.startswith(s.rstrip("/") + "/") for s in skip):
            continue
        if "__pycache__" in rel:  # Python's own bytecode cache of a model file we imported on purpose
            continue
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def assert_user_error(res: Result, *needles: str, code: int = 2) -> None:
    """Exit ``code``, one stderr line containing every needle, no traceback."""
    assert res.code is not None, f"the command hung (killed after {res.seconds:.0f} s)"
    assert "Traceback" not in res.err, res.err[-2000:]
    lines = res.err.strip().splitlines()
    assert res.code == code, f"exit {res.code}, stderr: {res.err[-2000:]}"
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}: {res.err[-2000:]}"
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def nifti(path: Path, shape=(8, 8, 8), seed: int = 0) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    data = rng.normal(size=shape).astype(np.float32) + 2.0
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def victim(folder: Path) -> Path:
    """A user's file that a payload tries to overwrite (TorchScript maps it with torch.from_file(shared=True))."""
    p = folder / "victim.txt"
    p.write_bytes(VICTIM_TEXT)
    return p


def assert_untouched(victim_path: Path) -> None:
    assert victim_path.read_bytes() == VICTIM_TEXT, "the payload ran: the victim file was overwritten"
    assert not (victim_path.parent / "marker").exists(), "the payload ran: it left its marker"


TINY_PY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))
    """
)

#: A .py model that writes ``marker`` beside itself when imported.
EVIL_PY = TINY_PY + textwrap.dedent(
    """
    import pathlib
    pathlib.Path(__file__).with_name("marker").write_text("PWNED")
    """
)

EVIL_TS_SRC = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn


    class Evil(nn.Module):
        \"\"\"Writes PWNED into an existing file when called: torch.from_file(shared=True) maps it writable.\"\"\"

        def __init__(self, path: str):
            super().__init__()
            self.path = path
            self.conv = nn.Conv3d(1, 2, 3, padding=1)
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            t = torch.from_file(self.path, shared=True, size=6, dtype=torch.uint8)
            t.copy_(torch.tensor([80, 87, 78, 69, 68, 10], dtype=torch.uint8))
            y = self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3, 4)))
            return y + t[:1].float().sum() * 0.0  # keeps the write alive through TorchScript's dead-code pass


    if __name__ == "__main__":
        torch.jit.save(torch.jit.script(Evil(sys.argv[1])), sys.argv[2])
    """
)


def evil_torchscript(folder: Path, victim_path: Path, name: str = "evil.ts") -> Path:
    """A TorchScript file whose forward overwrites ``victim_path`` (TorchScript compiles from a real source file)."""
    import importlib.util
    import warnings

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "evil_ts_source.py"
    src.write_text(EVIL_TS_SRC)
    spec = importlib.util.spec_from_file_location(f"evil_ts_{abs(hash(str(folder)))}", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = folder / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(mod.Evil(str(victim_path))), str(out))
    src.unlink()
    return out


def write_py(folder: Path, text: str, name: str = "net.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


def tiny_weights(path: Path, seed: int = 0) -> Path:
    """A state_dict for :data:`TINY_PY`'s ``Tiny`` (same layer shapes, seeded values)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {"conv.weight": torch.randn(2, 1, 3, 3, 3, generator=g), "conv.bias": torch.randn(2, generator=g),
          "fc.weight": torch.randn(2, 2, generator=g), "fc.bias": torch.randn(2, generator=g)}
    torch.save(sd, path)
    return path


def bundle(folder: Path, network_def, extra: dict | None = None, weights: dict | None = None,
           yaml_text: str | None = None) -> Path:
    """A MONAI bundle folder; ``weights`` None writes a state_dict that matches nothing (the build comes first)."""
    import torch

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    if yaml_text is not None:
        (folder / "configs" / "inference.yaml").write_text(yaml_text)
    else:
        (folder / "configs" / "inference.json").write_text(json.dumps({"network_def": network_def, **(extra or {})}))
    torch.save(weights if weights is not None else {"unrelated.weight": torch.zeros(1)}, folder / "models" / "model.pt")
    return folder


SOCKET_SPY = textwrap.dedent(
    """
    # Loaded by Python at start-up (it is on PYTHONPATH): records and refuses every attempt to reach the network.
    import os
    import socket

    _LOG = os.environ["NAPARI_XAI_SOCKET_LOG"]


    def _refuse(what):
        def spy(*args, **kwargs):
            with open(_LOG, "a") as fh:
                fh.write(f"{what} {args[1:] if what == 'connect' else args[:1]}\\n")
            raise OSError(f"test: network is off ({what})")
        return spy


    socket.socket.connect = _refuse("connect")
    socket.socket.connect_ex = _refuse("connect_ex")
    socket.create_connection = _refuse("create_connection")
    socket.getaddrinfo = _refuse("getaddrinfo")
    """
)


def socket_spy_env(folder: Path) -> tuple[dict, Path]:
    """Environment for :func:`run` that logs every socket attempt to the returned file (and refuses it).

    Downloads would go to ``folder/cache`` (TORCH_HOME, HF_HOME), inside the hashed folder."""
    spy_dir = folder / "spy"
    spy_dir.mkdir(parents=True, exist_ok=True)
    (spy_dir / "sitecustomize.py").write_text(SOCKET_SPY)
    log = folder / "sockets.log"
    cache = folder / "cache"
    path = os.pathsep.join([str(spy_dir), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {"PYTHONPATH": path, "NAPARI_XAI_SOCKET_LOG": str(log), "TORCH_HOME": str(cache / "torch"),
           "HF_HOME": str(cache / "hf"), "HF_HUB_OFFLINE": "0"}
    return env, log
