"""Loading atlases from files or built-in names, with memory and disk caches."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .atlas import Atlas, prob_regions
from .catalogue import (
    BUILTIN_ATLASES,
    builtin_atlas_names,
    builtin_paths,
    read_labels_file,
    resolve_atlas_name,
)

# --------------------------------------------------------------------------------------
# loading with caches


_CACHE_VERSION = 2
_ATLAS_CACHE: "OrderedDict[Any, Atlas]" = OrderedDict()
_ATLAS_CACHE_SIZE = 4
_CACHE_LOCK = threading.Lock()


def clear_atlas_cache() -> None:
    """Forget the atlases loaded into memory (the disk cache stays)."""
    with _CACHE_LOCK:
        _ATLAS_CACHE.clear()


def cache_dir() -> Path | None:
    """Disk cache for the compact form of probabilistic atlases, or None when disabled.

    ``NAPARI_XAI_CACHE`` sets the folder ("0" or "off" disables it); else
    ``$XDG_CACHE_HOME/napari-xai`` or ``~/.cache/napari-xai``.
    """
    env = os.environ.get("NAPARI_XAI_CACHE")
    if env is not None:
        if env.strip().lower() in ("", "0", "off", "no", "false"):
            return None
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "napari-xai"


def _file_token(*paths: Path | None) -> str:
    h = hashlib.sha1(str(_CACHE_VERSION).encode())
    for p in paths:
        if p is None:
            continue
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _load_sparse_cache(token: str) -> dict[str, np.ndarray] | None:
    d = cache_dir()
    if d is None:
        return None
    f = d / f"prob-atlas-{token}.npz"
    if not f.exists():
        return None
    try:
        with np.load(f, allow_pickle=False) as z:
            out = {k: z[k] for k in ("vox", "ptr", "reg", "prob", "maxprob", "argmax", "shape")}
        return out
    except Exception:  # a broken cache file is rebuilt
        return None


def _save_sparse_cache(token: str, sparse: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    d = cache_dir()
    if d is None:
        return
    try:
        from ..volumes import atomic_write_bytes

        buf = io.BytesIO()
        np.savez(buf, shape=np.asarray(shape, dtype=np.int64), **sparse)
        atomic_write_bytes(d / f"prob-atlas-{token}.npz", buf.getvalue())
    except OSError:  # read-only home etc.: just no cache
        pass


def _read_image(path: Path, what: str):
    import nibabel as nib

    from ..volumes import check_nifti_path

    check_nifti_path(path, what, "the atlas label image (.nii or .nii.gz)", "an atlas image must be .nii or .nii.gz")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types
        raise UserError(f"{path.name} could not be read as NIfTI: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _build_atlas(image: Path, labels: Path | None, *, name: str) -> Atlas:
    img = _read_image(image, "atlas image")
    table = read_labels_file(labels) if labels is not None else None
    names = table.names if table else None
    colors = table.colors if table else None
    ndim = len(img.shape)
    is4d = ndim == 4 and img.shape[3] > 1
    key = ("file", _file_token(image, labels))
    if is4d:
        token = _file_token(image, labels)
        cached = _load_sparse_cache(token)
        if cached is not None and tuple(cached["shape"][:3]) == tuple(img.shape[:3]):
            shape = tuple(int(s) for s in img.shape[:3])
            atlas = Atlas(name, "probabilistic", img.affine, shape, {}, sparse={k: v for k, v in cached.items() if k != "shape"}, source=str(image), key=key)
            # names are cheap: rebuild the regions exactly as from_arrays would
            atlas.regions, atlas.warnings = prob_regions(int(img.shape[3]), names, colors, name)
            return atlas
        try:
            data = np.asanyarray(img.dataobj)
        except Exception as exc:
            raise UserError(f"{image.name} is truncated or corrupt ({type(exc).__name__}); re-download it.") from None
        atlas = Atlas.from_arrays(data, img.affine, names, name=name, colors=colors, source=str(image), key=key)
        del data
        if atlas.sparse is not None:
            _save_sparse_cache(token, atlas.sparse, img.shape)
        return atlas
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise UserError(f"{image.name} is truncated or corrupt ({type(exc).__name__}); re-download it.") from None
    fsl_offset = bool(table is not None and table.fmt == "fsl-xml" and table.fsl_kind != "probabilistic")
    return Atlas.from_arrays(data, img.affine, names, name=name, colors=colors, fsl_label_offset=fsl_offset, source=str(image), key=key)


def load_atlas(name_or_path: str | os.PathLike, labels: str | os.PathLike | None = None) -> Atlas:
    """Load a built-in atlas by name, or a user atlas from a label NIfTI and a labels file.

    Parameters
    ----------
    name_or_path
        A built-in name (see :func:`builtin_atlas_names`, e.g. ``"aal"``,
        ``"harvard-oxford"``) or a path to a 3D label / 4D probability NIfTI.
    labels
        Labels file for a user atlas: CSV (index,name), FreeSurfer colour LUT or
        FSL atlas XML. Without it, regions are named "label N".

    Loaded atlases are kept in memory (a few most recent ones); the compact
    form of 4D probabilistic atlases is also cached on disk (see
    :func:`cache_dir`), so the second load takes well under a second.
    """
    key_name = resolve_atlas_name(str(name_or_path)) if labels is None else None
    if key_name is not None and not Path(str(name_or_path)).exists():
        image, csv_path = builtin_paths(key_name)
        title = BUILTIN_ATLASES[key_name].title
    else:
        image = Path(name_or_path)
        csv_path = Path(labels) if labels is not None else None
        if not image.exists():
            known = ", ".join(builtin_atlas_names())
            raise UserError(f"atlas {str(name_or_path)!r} is neither a built-in atlas ({known}) nor an existing file.")
        nm = image.name
        title = nm[: -len(".nii.gz")] if nm.lower().endswith(".nii.gz") else Path(nm).stem
        if csv_path is not None and not csv_path.exists():
            raise UserError(f"labels file not found: {csv_path}")
    ckey = (str(image.resolve()), str(csv_path.resolve()) if csv_path else None, _file_token(image, csv_path))
    with _CACHE_LOCK:
        if ckey in _ATLAS_CACHE:
            _ATLAS_CACHE.move_to_end(ckey)
            return _ATLAS_CACHE[ckey]
    atlas = _build_atlas(image, csv_path, name=title)
    atlas.key = ckey
    with _CACHE_LOCK:
        _ATLAS_CACHE[ckey] = atlas
        while len(_ATLAS_CACHE) > _ATLAS_CACHE_SIZE:
            _ATLAS_CACHE.popitem(last=False)
    return atlas
