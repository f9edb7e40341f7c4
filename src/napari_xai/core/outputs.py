"""Outputs: every file a command writes is checked before work starts, and written all at once at the end.

Two halves, one place:

* :func:`check_output` (and :func:`check_folder`) run before any work. Each planned path (an output and its
  sidecar) must not exist unless ``overwrite``, must never be one of the command's inputs (compared by resolved
  path and by device+inode, so symlinks and hard links are caught even with ``overwrite``), and its folder must
  exist (or be creatable, for output folders), be a folder all the way up, and accept a new file.
* :func:`transaction` stages writes: inside it, :func:`napari_xai.core.volumes.atomic_write_bytes` writes each file
  to a hidden temporary name beside its target; on success all are renamed into place at the end; on any
  exception (including Ctrl-C and SIGTERM, which the CLI turns into ``KeyboardInterrupt``) only the temporary files
  are removed, so a failed run never touches the files that were there before.

Inputs are registered once per command with :func:`note_inputs` (the CLI registers every existing file named on the
command line before the command runs).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
from pathlib import Path

from .errors import UserError

SIDECAR_SUFFIX = ".xai.json"


def sidecar_path(path: str | os.PathLike) -> Path:
    """``out.nii.gz`` -> ``out.nii.gz.xai.json``; ``table.csv`` -> ``table.csv.xai.json``.

    The whole file name is kept, so two outputs never share a sidecar (``rel.nii.gz`` and ``rel.csv``), and the
    ``.xai.json`` ending cannot be a BIDS sidecar (``sub-01_T1w.json``), so writing one never replaces a file
    napari-xai did not make.
    """
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


# (resolved path, (st_dev, st_ino)) of each input of the running command
_INPUTS: contextvars.ContextVar[tuple] = contextvars.ContextVar("napari_xai_inputs", default=())
# the open transaction: a list of (temporary file, final path), or None
_STAGED: contextvars.ContextVar[list | None] = contextvars.ContextVar("napari_xai_staged", default=None)

#: largest number of files registered from one input folder (a bundle, a cohort folder)
MAX_FOLDER_FILES = 20000


def _identity(path) -> tuple[str, tuple[int, int] | None]:
    p = Path(path)
    try:
        resolved = str(p.resolve())
    except (OSError, RuntimeError):
        resolved = os.path.abspath(p)
    try:
        st = os.stat(p)
        ino = (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        ino = None
    return resolved, ino


def note_inputs(paths) -> None:
    """Register files (or folders: their files, two levels deep) that the running command reads."""
    known = list(_INPUTS.get())
    for path in paths:
        if path is None:
            continue
        p = Path(path)
        try:
            if p.is_dir():
                n = 0
                for root, dirs, files in os.walk(p):
                    depth = len(Path(root).relative_to(p).parts)
                    if depth >= 2:
                        dirs[:] = []
                    for f in files:
                        known.append(_identity(Path(root) / f))
                        n += 1
                    if n > MAX_FOLDER_FILES:
                        break
            elif p.exists():
                known.append(_identity(p))
        except (OSError, ValueError):
            continue
    _INPUTS.set(tuple(known))


def clear_inputs() -> None:
    _INPUTS.set(())


def input_named(path) -> bool:
    """True when ``path`` is (by resolved path, or by device and inode) one of the registered inputs."""
    inputs = _INPUTS.get()
    if not inputs:
        return False
    resolved, ino = _identity(path)
    return any(resolved == r or (ino is not None and ino == i) for r, i in inputs)


def _nearest_existing(folder: Path) -> Path:
    p = folder
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_folder(folder, option: str, create: bool = False) -> Path:
    """A folder that outputs go into: it exists (or, with ``create``, can be made), is a folder all the way up,
    and accepts new files. One :class:`UserError` line otherwise."""
    folder = Path(folder) if str(folder) else Path(".")
    anc = _nearest_existing(folder.absolute())
    if not anc.is_dir():
        raise UserError(f"{option}: {anc} is a file, not a folder; choose an output path whose folders are folders.")
    if anc != folder.absolute() and not create:
        raise UserError(f"the folder of {option} does not exist: {folder}; create it first.")
    try:
        fd, probe = tempfile.mkstemp(prefix=".napari-xai-probe-", dir=str(anc))
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"cannot write to the folder {anc} for {option} ({exc.strerror or type(exc).__name__}); "
                        "choose a writable folder.") from None
    return folder


def check_output(path, overwrite: bool, option: str = "--out", sidecar: bool = False, what: str = "") -> Path:
    """One output file (and, with ``sidecar``, its provenance sidecar), checked before any work.

    Refuses: a folder in its place; an existing file unless ``overwrite``; any registered input (always); a folder
    that does not exist, a file where a folder should be, a folder that takes no new files.
    """
    p = Path(path)
    check_folder(p.parent, option)
    targets = [p]
    if sidecar:
        targets.append(sidecar_path(p))
    for t in targets:
        label = f"{t} ({what or 'the sidecar of ' + option})" if t is not p else str(t)
        if input_named(t):
            raise UserError(f"{label} is an input of this command; choose another {option} "
                            "(--overwrite never replaces a file being read).")
        if os.path.isdir(t):
            raise UserError(f"{option} {t} is a folder; give a file name.")
        if os.path.lexists(t) and not overwrite:
            raise UserError(f"{label} exists; choose another {option} or pass --overwrite.")
    return p


def check_distinct(paths, message: str = "the output files (or their sidecars) collide; give each output its own name.") -> None:
    """Refuse two planned outputs that are one file."""
    seen = set()
    for p in paths:
        r = _identity(p)[0]
        if r in seen:
            raise UserError(message)
        seen.add(r)


# ---------------------------------------------------------------------------------------------- staged writes


def staging() -> list | None:
    """The open transaction's list of (temporary, final) pairs, or None outside a transaction."""
    return _STAGED.get()


def _temp_beside(final: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=str(final.parent))
    os.close(fd)
    return tmp


def stage(final: Path) -> str | None:
    """Inside a transaction: a temporary file beside ``final``, renamed onto it at commit. Outside: None."""
    staged = _STAGED.get()
    if staged is None:
        return None
    for i, (tmp, dest) in enumerate(staged):
        if dest == final:  # written twice in one transaction: the later bytes win
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            staged.pop(i)
            break
    tmp = _temp_beside(final)
    staged.append((tmp, final))
    return tmp


def refuse_input(final) -> None:
    """Last line of defence at write time: never replace a registered input."""
    if input_named(final):
        raise UserError(f"{final} is an input of this command; it is not replaced (choose another output name).")


@contextlib.contextmanager
def transaction():
    """Stage every write inside; rename all into place at the end, or remove the temporaries on failure.

    Nested transactions join the outer one (only the outermost commits).
    """
    if _STAGED.get() is not None:
        yield _STAGED.get()
        return
    staged: list = []
    token = _STAGED.set(staged)
    try:
        try:
            yield staged
        except BaseException:
            for tmp, _ in staged:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise
        for _, final in staged:
            refuse_input(final)
        for tmp, final in staged:
            os.replace(tmp, final)
    finally:
        _STAGED.reset(token)
        for tmp, _ in staged:  # whatever a failed rename left
            with contextlib.suppress(OSError):
                os.unlink(tmp)
