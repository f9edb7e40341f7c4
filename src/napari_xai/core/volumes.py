"""Volumes: NIfTI loading with checks, channel stacking, atomic saving.

A :class:`Volume` is float data (C, i, j, k) with its 4x4 affine (voxel -> world mm).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass
class Volume:
    """Image data (C, i, j, k) with its affine and, when read from a file, its header."""

    data: np.ndarray
    affine: np.ndarray
    header: object | None = None  # a nibabel header, kept so geometry survives a round trip
    name: str = "volume"
    source: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    def model_copy(self) -> np.ndarray:
        """float32 copy for the model, with NaN/Inf replaced by 0 (the volume itself is untouched)."""
        out = np.asarray(self.data, dtype=np.float32).copy()
        bad = ~np.isfinite(out)
        if bad.any():
            out[bad] = 0.0
        return out


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def check_nifti_path(p: Path, what: str = "file", give: str = "a .nii or .nii.gz file",
                     reads: str = "napari-xai reads .nii and .nii.gz") -> None:
    """A one-line :class:`UserError` unless ``p`` is an existing file with a NIfTI name (``what`` names it)."""
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; give {give}.")
    if not is_nifti_path(p):
        raise UserError(f"{p.name} is not a NIfTI file; {reads}.")


def check_array(data: np.ndarray, name: str) -> tuple[np.ndarray, list[str]]:
    """Bring spatial data to (C, i, j, k) and collect warnings; raise :class:`UserError` if unusable.

    3D data becomes one channel; 4D data is (i, j, k, C) as in NIfTI and
    becomes channels first.
    """
    arr = np.asarray(data)
    warnings: list[str] = []
    if arr.ndim < 3:
        raise UserError(f"{name} is {arr.ndim}D with shape {arr.shape}; napari-xai needs a 3D volume (or 4D with channels).")
    if arr.ndim > 4:
        raise UserError(f"{name} is {arr.ndim}D with shape {arr.shape}; only 3D volumes or 4D (x, y, z, channels) are supported.")
    if min(arr.shape[:3]) < 2:
        raise UserError(f"{name} has shape {arr.shape}, which is a 2D image; napari-xai needs a 3D volume.")
    if arr.ndim == 3:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr, -1, 0)
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise UserError(f"{name} has data type {arr.dtype}; a real-valued numeric volume is needed.")
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize > 4 and arr.size:
        with np.errstate(invalid="ignore"):
            big = float(np.nanmax(np.abs(np.where(np.isfinite(arr), arr, 0))))
        if big > float(np.finfo(np.float32).max):
            raise UserError(f"{name} has values up to {big:.3g}, beyond float32 (max {np.finfo(np.float32).max:.3g}) "
                            "that the model computes in; rescale the image (e.g. to its physical units) first.")
    if np.issubdtype(arr.dtype, np.floating):
        nbad = int(np.count_nonzero(~np.isfinite(arr)))
        if nbad:
            warnings.append(
                f"{name} has {nbad} NaN/Inf voxels; they are set to 0 in the copy given to the model (the volume is unchanged)."
            )
    else:
        warnings.append(f"{name} has integer type {arr.dtype}; it is converted to float32 for the model.")
    finite = arr[np.isfinite(arr)] if np.issubdtype(arr.dtype, np.floating) else arr
    if finite.size == 0 or not np.any(finite):
        warnings.append(f"{name} is all zeros; the explanation will show only what the model does on an empty input.")
    return arr, warnings


def load_nifti(path: str | os.PathLike) -> Volume:
    """Read a .nii or .nii.gz file as a :class:`Volume`, with clear errors for bad files."""
    import nibabel as nib

    p = Path(path)
    check_nifti_path(p)
    try:
        img = nib.load(str(p))
        check_header(img, p)
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UserError(f"{p.name} is truncated or corrupt ({type(exc).__name__}); re-export or re-download it.") from None
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{p.name} does not fit in memory; use a smaller image (crop or downsample it).") from None
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, ValueError, OSError,
            OverflowError) as exc:
        if p.name.lower().endswith(".gz") and not _gzip_complete(p):
            raise UserError(f"{p.name} is truncated or corrupt (incomplete gzip stream); re-export or re-download it.") from None
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{p.name} could not be read as NIfTI: {msg}") from None
    name = p.name[: -len(".nii.gz")] if p.name.lower().endswith(".nii.gz") else p.stem
    arr, warnings = check_array(data, p.name)
    affine = np.asarray(img.affine, dtype=float)
    return Volume(data=arr, affine=affine, header=img.header, name=name, source=str(p), warnings=warnings)


def available_memory() -> int:
    """Bytes this process may still allocate: MemAvailable, capped by a cgroup limit (0 if unknown)."""
    avail = 0
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
            if text.isdigit() and int(text) < (1 << 60):
                avail = min(avail, int(text)) if avail else int(text)
        except OSError:
            continue
    return avail


#: below this many bytes an allocation is not checked: reading /proc and the cgroup files costs more (about 0.1 ms,
#: up to 1 ms on a busy machine) than such an array, and a process with less free memory fails anyway
CHECK_FITS_FROM = 64 * 2**20


def check_fits(nbytes: float, what: str, hint: str = "use a smaller image (crop or downsample it)") -> None:
    """Refuse, before allocating, an array of ``nbytes`` that cannot fit in the memory still available."""
    if nbytes < CHECK_FITS_FROM:
        return
    avail = available_memory()
    if avail and nbytes > avail:
        raise UserError(f"{what} would need {nbytes / 2**30:.1f} GiB, more than the {avail / 2**30:.1f} GiB of "
                        f"memory available; {hint}.")


def check_header(img, p: Path) -> None:
    """Header sanity before any voxel is read: dimensions, the bytes the file holds, memory, the affine."""
    shape = tuple(int(d) for d in img.header.get_data_shape())
    if any(d < 0 for d in shape):
        raise UserError(f"{p.name} has a negative dimension in its header (shape {shape}); the file is corrupt.")
    if any(d == 0 for d in shape):
        raise UserError(f"{p.name} has an empty dimension in its header (shape {shape}); the file holds no image.")
    itemsize = int(np.dtype(img.header.get_data_dtype()).itemsize)
    nbytes = float(np.prod([float(d) for d in shape])) * itemsize
    offset = int(getattr(img.dataobj, "offset", 0) or img.header.get("vox_offset", 0) or 0)
    if p.name.lower().endswith(".gz"):
        size = _gzip_isize(p)
        if size is not None and nbytes + offset < 2**32 and size < nbytes + offset:
            raise UserError(f"{p.name}: its header claims {shape} voxels ({nbytes:.0f} bytes) but the file holds "
                            f"only {max(size - offset, 0)} bytes of data; it is truncated or its header is wrong.")
    else:
        size = p.stat().st_size
        if size < nbytes + offset:
            raise UserError(f"{p.name}: its header claims {shape} voxels ({nbytes:.0f} bytes) but the file holds "
                            f"only {max(size - offset, 0)} bytes of data; it is truncated or its header is wrong.")
    # the voxels as stored, plus the float32 copy the model gets
    check_fits(nbytes + float(np.prod([float(d) for d in shape])) * 4, f"{p.name} (shape {shape})")
    check_affine(np.asarray(img.affine, dtype=float), p.name)


def check_affine(affine: np.ndarray, name: str) -> None:
    """A usable voxel-to-world affine: finite, and its 3x3 part of full rank (not singular)."""
    aff = np.asarray(affine, dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)):
        raise UserError(f"{name} has an affine with NaN or Inf entries; fix its header (sform/qform) first.")
    lin = aff[:3, :3]
    sv = np.linalg.svd(lin, compute_uv=False)
    if sv[0] <= 0 or sv[-1] <= sv[0] * 1e-8:
        raise UserError(f"{name} has a singular affine (its voxel axes do not span 3D space, rank "
                        f"{int(np.linalg.matrix_rank(lin))}); fix its header (sform/qform) first.")


def _gzip_isize(path: Path) -> int | None:
    """The uncompressed size a gzip file records in its last 4 bytes (modulo 2**32), or None."""
    try:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            return int.from_bytes(fh.read(4), "little")
    except OSError:
        return None


def _gzip_complete(path: Path) -> bool:
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
        return True
    except (EOFError, OSError, zlib.error):
        return False


def stack_channels(volumes: list[Volume]) -> Volume:
    """Several single- or multi-channel volumes of one grid become one multi-channel volume."""
    if not volumes:
        raise UserError("no volume given.")
    if len(volumes) == 1:
        return volumes[0]
    first = volumes[0]
    for v in volumes[1:]:
        if v.shape != first.shape:
            raise UserError(f"{v.name} has shape {v.shape} but {first.name} has {first.shape}; channels must share one grid.")
        if not np.allclose(v.affine, first.affine, atol=1e-3):
            raise UserError(f"{v.name} and {first.name} have different affines; resample them to one grid first.")
    data = np.concatenate([np.asarray(v.data, dtype=np.float32) for v in volumes], axis=0)
    warnings = [w for v in volumes for w in v.warnings]
    return Volume(
        data=data,
        affine=first.affine,
        header=first.header,
        name="+".join(v.name for v in volumes),
        source=";".join(str(v.source) for v in volumes),
        warnings=warnings,
    )


def remove_files(paths) -> None:
    """Delete files a failed export already wrote; missing ones are fine."""
    for path in paths:
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def written_or_removed(*paths: str | os.PathLike):
    """An export as one transaction (:func:`napari_xai.core.outputs.transaction`): every file written inside goes
    to a temporary name and is renamed into place at the end; on any exception only those temporaries are removed,
    so files that existed before (``paths``, e.g. an output and its sidecar being replaced) are left as they were.

    Yields a list that starts with ``paths``; callers may append what they wrote (kept for their own reporting).
    """
    from .outputs import transaction

    written: list = list(paths)
    with transaction():
        yield written


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write bytes to ``path`` through a temporary file in the same folder, then rename (at the end of the open
    transaction, if any). Never replaces a registered input of the running command."""
    from .outputs import refuse_input, stage

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    refuse_input(p)
    staged = stage(p)
    if staged is not None:  # inside a transaction: renamed onto ``p`` when the whole export succeeded
        with open(staged, "wb") as fh:
            fh.write(payload)
        os.chmod(staged, 0o666 & ~current_umask())
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=str(p.parent))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, p)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_nifti(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray, header: object | None = None) -> Path:
    """Save (i, j, k) or (C, i, j, k) data as NIfTI atomically; channels go to the 4th axis.

    The given header (e.g. from the source file) is reused so that geometry
    (qform/sform codes, units) survives a round trip; data type follows ``data``.
    """
    import nibabel as nib

    p = Path(path)
    if not is_nifti_path(p):
        raise UserError(f"{p.name}: output must end in .nii or .nii.gz.")
    arr = np.asarray(data)
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 0, -1)
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
    hdr = header.copy() if header is not None and hasattr(header, "copy") else None
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=float), header=hdr)
    img.set_data_dtype(arr.dtype)
    if hdr is not None:
        # keep the source's qform/sform codes as they were (a qform the source did not have is not invented);
        # only when it had neither is the sform marked, so that the affine is not lost
        scode, qcode = int(hdr["sform_code"]), int(hdr["qform_code"])
        img.set_sform(np.asarray(affine, dtype=float), code=scode if (scode or qcode) else 2)
        img.set_qform(np.asarray(affine, dtype=float), code=qcode)
    atomic_write_bytes(p, img.to_bytes() if not p.name.lower().endswith(".gz") else gzip.compress(img.to_bytes(), 6))
    return p
