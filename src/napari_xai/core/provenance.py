"""One provenance record per result: enough to redo it.

The record holds the model identity (file hash), the method and all its
parameters, the target, the prediction, the input and package versions. It is
saved as a JSON sidecar beside every exported file (``OUT.nii.gz`` ->
``OUT.nii.gz.xai.json``; older ``OUT.json`` sidecars are still read).
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from .outputs import SIDECAR_SUFFIX, sidecar_path  # noqa: F401  (the sidecar name is the output planner's)
from .volumes import atomic_write_bytes

PACKAGES = ("napari-xai", "torch", "captum", "zennit", "monai", "numpy", "scipy", "nibabel")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_hashes(paths) -> dict[str, str]:
    """SHA-256 of each existing file in ``paths`` (others are skipped), remembered per path, size and mtime."""
    out: dict[str, str] = {}
    for p in paths:
        try:
            st = os.stat(p)
        except (OSError, TypeError, ValueError):
            continue
        key = (os.path.abspath(p), st.st_size, st.st_mtime_ns)
        if key not in _FILE_HASHES:
            _FILE_HASHES[key] = sha256_file(p)
        out[str(p)] = _FILE_HASHES[key]
    return out


@functools.lru_cache(maxsize=1)
def _package_versions() -> tuple[tuple[str, str], ...]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return tuple(out.items())


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages that shape a result (read once per process)."""
    return dict(_package_versions())


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def legacy_sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar name of napari-xai before 0.x: ``out.nii.gz`` -> ``out.json`` (read, never written)."""
    p = Path(path)
    name = p.name
    for suffix in (".nii.gz", ".nii", ".csv", ".png"):
        if name.lower().endswith(suffix):
            return p.with_name(name[: -len(suffix)] + ".json")
    return p.with_name(name + ".json")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist()) if obj.dtype.kind == "f" else obj.tolist()
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None  # JSON has no NaN/Infinity: null
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def to_json(record: dict) -> str:
    return json.dumps(_jsonable(record), indent=2, sort_keys=False)


def write_sidecar(path: str | os.PathLike, record: dict) -> Path:
    """Write ``record`` as the JSON sidecar of ``path`` (atomically). Returns the sidecar path."""
    side = sidecar_path(path)
    atomic_write_bytes(side, (to_json(record) + "\n").encode("utf-8"))
    return side


def read_sidecar(path: str | os.PathLike) -> dict | None:
    """The sidecar of ``path`` (or ``path`` itself if it is a .json), or None when absent.

    Looks for ``path.xai.json`` first, then the older ``stem.json`` naming (only when it holds a napari-xai record:
    a JSON object with ``kind``, ``method`` or ``versions``; a BIDS sidecar of the same stem is not ours).
    """
    p = Path(path)
    if p.suffix.lower() == ".json":
        if not p.exists():
            return None
        return json.loads(p.read_text(encoding="utf-8"))
    side = sidecar_path(p)
    if side.exists():
        return json.loads(side.read_text(encoding="utf-8"))
    old = legacy_sidecar_path(p)
    if not old.exists():
        return None
    record = json.loads(old.read_text(encoding="utf-8"))
    return record if isinstance(record, dict) and {"kind", "method", "versions"} & set(record) else None


def find_sidecar(path: str | os.PathLike) -> Path:
    """The sidecar file of ``path``: ``path.xai.json`` if present, else an older ``stem.json``, else the new name."""
    p = Path(path)
    side = sidecar_path(p)
    if not side.exists() and legacy_sidecar_path(p).exists():
        return legacy_sidecar_path(p)
    return side
