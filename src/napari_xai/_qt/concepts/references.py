"""A concept's reference crops from a cohort run folder, side by side in napari's grid.

The folder is what ``napari-xai concepts SUBJECTS.csv --refs N --out-dir DIR`` writes (docs/concepts.md):
``references.csv`` (channel, rank, id, peak relevance and place, peak region, ``scan_cube``) with a sidecar
naming the layer, and per channel ``channel_C/refs/NN_<id>.nii.gz`` (the scan's cube) beside
``NN_<id>_relevance.nii.gz`` (the conditional map's cube). Each reference becomes one grid cell: its scan cube
and its map as ± relevance layers at the cube's own world place, all cells at one colour scale. Paths in the
CSV must stay inside the folder (it is an untrusted file).
"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ...core.errors import UserError

INDEX = "references.csv"
RELEVANCE_SUFFIX = "_relevance.nii.gz"


def read_cubes(root: Path) -> tuple[list[dict], str | None]:
    """Rows from the cubes' own sidecars, for a folder without ``references.csv``: a ``refs`` folder (also the
    output of ``core.concept_refs.relevance_maximisation``), its parent or a run's ``channel_C`` folders."""
    from ...core.provenance import read_sidecar

    rows, layer = [], None
    for pattern in ("[0-9][0-9]_*.nii.gz", "refs/[0-9][0-9]_*.nii.gz", "channel_*/refs/[0-9][0-9]_*.nii.gz"):
        for scan in sorted(root.glob(pattern)):
            if scan.name.endswith(RELEVANCE_SUFFIX):
                continue
            try:
                side = read_sidecar(scan) or {}
                row = {"channel": int(side["channel"]), "rank": int(side["rank"]), "id": str(side["subject"]),
                       "peak_relevance": side.get("peak_relevance"), "scan_cube": str(scan.relative_to(root))}
            except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
                continue  # not a reference cube with its sidecar
            rows.append(row)
            layer = layer or side.get("layer")
    if not rows:
        raise UserError(f"{root} has no {INDEX} and no reference cubes (NN_<id>.nii.gz with sidecars); choose the "
                        "--out-dir of 'napari-xai concepts SUBJECTS.csv --refs N'.")
    return rows, layer


def read_index(folder: str | Path) -> tuple[list[dict], str | None]:
    """The rows of ``folder/references.csv`` (else of the cubes' sidecars) with their files checked, and the
    layer the run names."""
    from ...core.provenance import read_sidecar

    root = Path(folder).expanduser().resolve()
    index = root / INDEX
    if not index.is_file():
        rows, layer = read_cubes(root)
        return [checked(root, row, root) for row in rows], layer
    try:
        with index.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        side = read_sidecar(index) or {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{index} could not be read ({exc}).") from None
    return [checked(root, row, index) for row in rows], side.get("layer") if isinstance(side, dict) else None


def checked(root: Path, row: dict, index: Path) -> dict:
    """A row with its cube files resolved inside ``root`` and present."""
    try:
        scan = (root / str(row["scan_cube"])).resolve()
        channel, rank = int(row["channel"]), int(row["rank"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{index} is not a references table (columns channel, rank, id, scan_cube).") from None
    if root not in scan.parents:
        raise UserError(f"{index} names a file outside its folder ({row['scan_cube']}); refusing to open it.")
    relevance = scan.with_name(scan.name[: -len(".nii.gz")] + RELEVANCE_SUFFIX)
    if not scan.is_file() or not relevance.is_file():
        raise UserError(f"the reference cube {scan.name} (or its _relevance map) is missing in {scan.parent}.")
    return {**row, "channel": channel, "rank": rank, "scan": scan, "relevance": relevance}


def choose_channel(rows: list[dict], wanted: list[int]) -> int:
    """The channel to open: the first of ``wanted`` (selected rows) with references, else the only one there is."""
    have = sorted({r["channel"] for r in rows})
    for c in wanted:
        if c in have:
            return c
    if len(have) == 1:
        return have[0]
    asked = f" (selected: {', '.join(map(str, wanted))})" if wanted else ""
    raise UserError(f"the run has references for channels {', '.join(map(str, have))}{asked}; select one of them "
                    "in the table.")


def reference_tuples(rows: list[dict], channel: int) -> tuple[list[tuple], float]:
    """Grid layer tuples (scan cube, ± relevance per reference, by rank) at one colour limit, and the limit."""
    from ..._layers import comparison_layer_data
    from ...core.compare import common_limit
    from ...core.volumes import load_nifti
    from .view import META_KEY

    refs = sorted((r for r in rows if r["channel"] == channel), key=lambda r: r["rank"])
    scans, cells = [], []
    for r in refs:
        scan, rel = load_nifti(r["scan"]), load_nifti(r["relevance"])
        if scan.shape != rel.shape or not np.allclose(scan.affine, rel.affine, atol=1e-3):
            raise UserError(f"{r['scan'].name} and its relevance cube are not on one grid.")
        label = f"{r.get('id', '?')} · peak {float(r.get('peak_relevance') or 'nan'):.3g}"
        if r.get("peak_region"):
            label += f" · {r['peak_region']}"
        scans.append(scan.data[0])
        cells.append((label, SimpleNamespace(data=rel.data[:1], affine=rel.affine, header=rel.header,
                                             provenance={"kind": "concept reference", "channel": channel,
                                                         "rank": r["rank"], "subject": r.get("id"),
                                                         "file": str(r["relevance"])},
                                             warnings=list(rel.warnings))))
    limit = common_limit([c.data[0] for _, c in cells])
    tuples = comparison_layer_data(scans, cells, limit, meta_key=META_KEY)
    for _, kw, _ in tuples:
        kw["metadata"][META_KEY]["kind"] = "compare"
    return tuples, limit


def open_references(widget, folder: str | Path | None = None, channel: int | None = None) -> list:
    """Ask for the run folder (unless given) and show the references of ``channel`` (default: the selected
    concept) in the Concepts dock's grid."""
    if folder is None:
        from qtpy.QtWidgets import QFileDialog

        folder = QFileDialog.getExistingDirectory(widget.native, "Cohort run folder (napari-xai concepts … --refs N)")
        if not folder:
            return []
    try:
        rows, layer = read_index(folder)
        wanted = [channel] if channel is not None else widget.table.selected_channels()
        c = choose_channel(rows, wanted)
        tuples, limit = reference_tuples(rows, c)
    except UserError as exc:
        widget._fail(str(exc))
        return []
    layers = widget.grid.enter(tuples)
    widget.exit_btn.enabled = True
    text = f"references of channel {c}" + (f" of {layer}" if layer else "")
    current = getattr(widget.result, "layer", None)
    if layer and current and layer != current:
        text += f" (⚠ the table shows {current})"
    widget._set_status(f"{text}: {len(tuples) // 3} subjects by peak relevance, colour limit 0…{limit:.3g} "
                       "for all; 'Exit grid' goes back.")
    return layers
