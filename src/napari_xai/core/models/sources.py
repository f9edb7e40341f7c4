"""What a model source names, found and hashed without loading anything."""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path

from ..errors import UserError


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def combined_sha256(files: dict[str, str]) -> str:
    """:attr:`LoadedModel.sha256` from its per-file hashes: one hash for several files, the SHA-256 of the
    ``sha256sum`` listing sorted by name (a single file's own hash; ``docs/models.md``, Hashes)."""
    if len(files) == 1:
        return next(iter(files.values()))
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def hash_files(paths: list[Path]) -> dict[str, str]:
    """Per-file SHA-256, keyed by file name (``configs/...``/``models/...`` inside a bundle)."""
    out = {}
    for p in paths:
        key = f"{p.parent.name}/{p.name}" if p.parent.name in ("configs", "models") else p.name
        out[key] = file_sha256(p)
    return out


def existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"{what} {p} not found.")
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder, expected a file.")
    return p


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a TorchScript archive (a zip with ``constants.pkl`` or ``code/``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    for name in names:
        parts = name.split("/")
        if parts[-1] == "constants.pkl" or "code" in parts[:-1]:
            return True
    return False


def looks_like_torch_save(path: Path) -> bool:
    """Cheap check: a ``torch.save`` zip (with ``data.pkl``) or a legacy pickle stream."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return any(n.split("/")[-1] == "data.pkl" for n in zf.namelist())
        with open(path, "rb") as fh:
            head = fh.read(2)
    except (OSError, zipfile.BadZipFile):
        return False
    # Legacy (non-zip) torch.save starts with a pickle protocol >= 2 opcode.
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def split_python_source(source: str) -> tuple[str, str] | None:
    if ":" not in source:
        return None
    left, _, right = source.rpartition(":")
    if left.lower().endswith(".py") and right and re.fullmatch(r"[A-Za-z_][\w.]*", right):
        return left, right
    return None


def source_file(source: str) -> tuple[str, str]:
    """(the file or folder a model source names, what follows it): ``net.py:Net`` -> (``net.py``, ``:Net``);
    a bundle folder or a file -> (itself, "")."""
    py = split_python_source(source)
    return (py[0], ":" + py[1]) if py else (source, "")


def model_files(source: str | os.PathLike, weights: str | os.PathLike | None = None) -> tuple[str, dict[str, str], bool]:
    """What :func:`load_model` would load for ``source``, found and hashed WITHOUT loading (importing,
    unpickling) anything: a record's hashes are checked with it before any code could run.

    Returns
    -------
    kind : str
        ``"demo"``, ``"python"``, ``"bundle"``, ``"torchscript"`` or ``"pickled"``.
    files : dict
        Each file's SHA-256, keyed as :attr:`LoadedModel.files` keys them (``{}`` for the demo, which ships
        with napari-xai); :func:`combined_sha256` of it is :attr:`LoadedModel.sha256`.
    runs_code : bool
        True when loading or running it runs code from the files: a Python file or TorchScript (also a
        bundle whose model is ``models/model.ts``).
    """
    text = os.fspath(source).strip() if source is not None else ""
    if text.lower() == "demo":
        return "demo", {}, False
    py = split_python_source(text)
    if py is not None:
        paths = [existing_file(py[0], "model file")]
        if weights is not None:
            paths.append(existing_file(weights, "weights"))
        return "python", hash_files(paths), True
    path = Path(os.path.expanduser(text))
    if not path.exists():
        raise UserError(f"model source {text} not found.")
    if path.is_dir():
        configs = path / "configs"
        cfg = next((configs / n for n in ("inference.json", "inference.yaml", "inference.yml")
                    if (configs / n).is_file()), None)
        if cfg is None:
            raise UserError(f"{path} is a folder but not a MONAI bundle: configs/inference.json not found.")
        if weights is not None:
            return "bundle", hash_files([existing_file(weights, "weights"), cfg]), False
        wpath, ts_path, meta = path / "models" / "model.pt", path / "models" / "model.ts", configs / "metadata.json"
        if not wpath.is_file() and ts_path.is_file():
            return "bundle", hash_files([ts_path, meta] if meta.is_file() else [ts_path]), True
        return "bundle", hash_files([wpath, cfg] if wpath.is_file() else [cfg]), False
    if is_torchscript_file(path):
        return "torchscript", hash_files([path]), True
    return "pickled", hash_files([path]), False


