"""Shared helpers of the hostile no-file-lost / one-line-error suite (tests/hostile/test_hostile_io_*.py).

Every case runs the ``napari-xai`` executable in a subprocess (the user's path) and checks the promises of the
README: exit code 2, exactly one line on stderr, no traceback, and no file outside the output changed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

EXE = os.path.join(os.path.dirname(sys.executable), "napari-xai")


def env() -> dict:
    e = dict(os.environ)  # PYTHONPATH (a worktree's src) passes through
    e.setdefault("OMP_NUM_THREADS", "1")
    return e


def cli(*args, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = EXE if os.path.exists(EXE) else shutil.which("napari-xai")
    return subprocess.run([exe, *map(str, args)], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def python(code: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def tree(folder) -> dict[str, str]:
    """Every entry under ``folder`` (hidden temporaries included): file -> SHA-256, symlink -> its target."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[rel] = "dir"
    return out


def one_line_error(res: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, exactly one stderr line starting 'napari-xai: error:', no traceback; returns that line."""
    err = res.stderr.strip()
    lines = err.splitlines()
    assert res.returncode == 2, f"exit {res.returncode}; stderr:\n{err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1, f"{len(lines)} stderr lines:\n{err[-2000:]}"
    assert lines[0].startswith("napari-xai: error: "), lines[0]
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in {lines[0]!r}"
    return lines[0]


def refused_and_unchanged(folder, *args, words=(), cwd=None) -> str:
    """Run; expect a one-line user error and a folder left exactly as it was."""
    before = tree(folder)
    res = cli(*args, cwd=cwd)
    line = one_line_error(res, *words)
    assert tree(folder) == before, f"the folder changed: {sorted(set(tree(folder).items()) ^ set(before.items()))}"
    return line


def nifti(path, data=None, affine=None, shape=(12, 12, 12), seed=0) -> Path:
    import nibabel as nib

    if data is None:
        data = np.random.default_rng(seed).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else np.asarray(affine, float)), str(path))
    return Path(path)


def raw_nifti(path, dims=None, sform=None, gz=False, shape=(8, 8, 8)) -> Path:
    """A NIfTI whose header fields were edited after the fact (dims, sform rows), as a broken writer leaves it."""
    import nibabel as nib

    img = nib.Nifti1Image(np.random.default_rng(1).random(shape).astype(np.float32), np.eye(4))
    blob = img.to_bytes()
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(blob))
    for i, d in (dims or {}).items():
        hdr["dim"][i] = d
    if sform is not None:
        sform = np.asarray(sform, dtype=float)
        hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
        hdr["sform_code"] = 1
        hdr["qform_code"] = 0
    out = hdr.binaryblock + blob[348:]
    Path(path).write_bytes(gzip.compress(out) if gz else out)
    return Path(path)


def sidecar_of(path) -> Path:
    """The sidecar a napari-xai run wrote beside ``path`` (whatever its naming: NAME.xai.json or stem.json)."""
    p = Path(path)
    for cand in (p.with_name(p.name + ".xai.json"),
                 p.with_name(p.name[: -len(".nii.gz")] + ".json") if p.name.endswith(".nii.gz") else p.with_suffix(".json")):
        if cand.exists():
            return cand
    raise AssertionError(f"no sidecar beside {p}")


MODELS = '''
import os
import time

import torch
from torch import nn


class Base(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # the same weights in every process (no weights file)
        self.conv = nn.Conv3d(1, 2, 3, padding=1)
        self.fc = nn.Linear(2, 2)

    def head(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3, 4)))


class Fine(Base):
    def forward(self, x):
        return self.head(x)


class Slow(Base):
    def forward(self, x):
        marker = os.environ.get("HOSTILE_MARKER")  # tells a test that the work has started
        if marker:
            open(marker, "a").close()
        time.sleep(0.05)
        return self.head(x)


class Raises(Base):
    def forward(self, x):
        raise ValueError("this network needs an even number of voxels")


class Asserts(Base):
    def forward(self, x):
        assert x.shape[-1] == 96, "spatial size must be 96"
        return self.head(x)


class Divisible(Base):
    def forward(self, x):
        if any(s % 8 for s in x.shape[2:]):
            raise ValueError(f"spatial dims of input must be divisible by 8, got {tuple(x.shape[2:])}")
        return self.head(x)


class KeyErr(Base):
    def forward(self, x):
        return self.head({"a": x}["b"])


class Detached(Base):
    def forward(self, x):
        return self.head(x.detach())


class Inplace(Base):
    def forward(self, x):
        x.mul_(2.0)
        return self.head(x)
'''


def models_file(folder) -> Path:
    p = Path(folder) / "hostile_models.py"
    p.write_text(MODELS)
    return p
