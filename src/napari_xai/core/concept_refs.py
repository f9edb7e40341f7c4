"""Relevance maximisation over a cohort: the subjects and places where one concept (a channel) matters most.

CRP (Achtibat et al. 2023) shows what a concept means by the inputs where it
carries the most *relevance* for the decision (relevance maximisation), not
where it merely fires (activation maximisation): a channel can fire strongly
where the class does not use it. Here, for one channel of one layer:

1. every subject of a cohort is explained with the ``crp`` method conditioned
   on that channel, through the cohort executor
   (:mod:`napari_xai.core.cohort_run`: serially, on a process pool or on Dask;
   resumable), which writes ``maps/<id>.nii.gz`` and a sidecar recording the
   channel's relevance at the layer, its largest value (``peak_relevance``)
   and where it lies (``peak_mm``, world mm);
2. :func:`rank_references` orders the subjects by ``peak_relevance`` and takes the top ``n``;
3. :func:`write_references` cuts a cube of ``size_mm`` around each peak from
   the subject's scan and from the conditional map (NIfTI with sidecars, the
   cube's affine keeps its place in the world) and draws a PNG montage.

Pure: no Qt; matplotlib's Agg canvas draws the montage.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import UserError

__all__ = ["DEFAULT_CROP_MM", "Reference", "crp_run_config", "montage_png", "rank_references",
           "reference_names", "relevance_maximisation", "write_references"]

#: Side of the reference cubes in mm (a little more than the receptive field of the demo's last layer, ~30 mm).
DEFAULT_CROP_MM = 40.0


@dataclass
class Reference:
    """One reference of a concept: a subject, the concept's peak relevance in it and where."""

    rank: int
    id: str
    peak_relevance: float
    peak_mm: tuple[float, float, float]
    concept_relevance: float
    concept_share: float
    map: Path
    paths: list[Path]


def crp_run_config(base, layer: str, channel: int, rules: str, extra: dict | None = None):
    """The cohort :class:`~napari_xai.core.cohort_run.RunConfig` of ``crp`` on one channel (from ``base``'s
    model, target, input space and executor settings)."""
    from dataclasses import replace

    params = {"layer": layer, "channels": str(int(channel)), "rules": rules, **(extra or {})}
    return replace(base, method="crp", params=tuple(sorted((k, str(v)) for k, v in params.items() if v is not None)))


def relevance_maximisation(model, subjects: Sequence, layer: str, channel: int, out_dir: str | Path, n: int = 4,
                           size_mm: float = DEFAULT_CROP_MM, rules: str = "lrp-epsilon-plus", target: str | None = None,
                           workers: int = 1, overwrite: bool = False, on_row=None, should_stop=None,
                           montage: bool = True) -> list[Reference]:
    """Relevance maximisation for one channel, in one call (for widgets and scripts; the CLI adds Dask).

    Explains every subject with ``crp`` on ``channel`` of ``layer`` through
    :func:`~napari_xai.core.cohort_run.run_local` (serially, or on a process pool of ``workers``; resumable:
    maps made with the same settings are reused) into ``out_dir/maps``, ranks the subjects by the channel's peak
    relevance and writes the top ``n`` reference cubes (``size_mm``) and ``montage.png`` into ``out_dir/refs``.
    ``on_row`` sees each finished subject; ``should_stop`` cancels between subjects.

    Parameters
    ----------
    model : LoadedModel
        From :func:`~napari_xai.core.models.load_model` (its source is reloaded by pool workers).
    subjects : sequence of Subject
        From :func:`~napari_xai.core.cohort.read_subjects`.
    """
    from .cohort_run import RunConfig, run_local
    from .outputs import transaction
    from .provenance import package_versions

    import json

    out = Path(out_dir)
    kwargs = getattr(model, "model_kwargs", None)
    base = RunConfig(model=str(model.source), model_sha256=model.sha256, method="crp", target=target,
                     weights=getattr(model, "weights", None), model_kwargs=json.dumps(kwargs) if kwargs else None,
                     outdir=str(out.resolve()), overwrite=bool(overwrite),
                     command="napari_xai.core.concept_refs.relevance_maximisation")
    cfg = crp_run_config(base, layer, channel, rules)
    run_local(list(subjects), cfg, model, workers=workers, on_row=on_row, should_stop=should_stop)
    refs = rank_references(out, subjects, n)
    if not refs:
        raise UserError(f"no subject gave a conditional map for channel {channel} of {layer}; see the cohort's "
                        "failures.csv.")
    record = {"kind": "concept references", "layer": layer, "channel": int(channel), "method": rules,
              "target": target or "predicted", "model": {"source": str(model.source), "sha256": model.sha256},
              "title": f"{layer} channel {channel}: top {len(refs)} of {len(subjects)} subjects by relevance",
              "versions": package_versions()}
    with transaction():
        write_references(refs, out / "refs", size_mm, record, montage=montage)
    return refs


def rank_references(outdir: str | Path, subjects: Sequence, n: int) -> list[Reference]:
    """The ``n`` subjects whose conditional maps (in ``outdir/maps``) record the largest peak relevance.

    Subjects without a finished map (failed) are left out. Ties keep the cohort order.
    """
    from .cohort_run import map_path
    from .provenance import read_sidecar

    found = []
    for order, s in enumerate(subjects):
        path = map_path(outdir, s.id)
        side = read_sidecar(path) if path.exists() else None
        params = (side or {}).get("params") or {}
        if "peak_relevance" not in params or "peak_mm" not in params:
            continue
        found.append((-float(params["peak_relevance"]), order, s, params, path))
    found.sort(key=lambda t: (t[0], t[1]))
    out = []
    for rank, (neg, _, s, params, path) in enumerate(found[: max(int(n), 0)]):
        out.append(Reference(rank=rank, id=s.id, peak_relevance=-neg, peak_mm=tuple(float(v) for v in params["peak_mm"]),
                             concept_relevance=float(params.get("concept_relevance", float("nan"))),
                             concept_share=float(params.get("concept_share", float("nan"))), map=path,
                             paths=list(s.paths)))
    return out


def reference_names(rank: int, sid: str) -> tuple[str, str]:
    """File names of a reference: the scan's cube and the conditional map's cube."""
    return f"{rank + 1:02d}_{sid}.nii.gz", f"{rank + 1:02d}_{sid}_relevance.nii.gz"


def write_references(refs: Sequence[Reference], out_dir: str | Path, size_mm: float, record: dict,
                     montage: bool = True) -> list[Path]:
    """Write each reference's cubes (scan and conditional map, NIfTI + sidecar) and ``montage.png``.

    Call inside an output transaction (every write is staged and renamed at the end). Returns the paths written.
    """
    from .geometry import crop_cube
    from .provenance import write_sidecar
    from .volumes import atomic_write_bytes, load_nifti, save_nifti, stack_channels

    out = Path(out_dir)
    written: list[Path] = []
    tiles = []
    for r in refs:
        vol = stack_channels([load_nifti(p) for p in r.paths])
        rel = load_nifti(r.map)
        scan, aff = crop_cube(vol.data, vol.affine, r.peak_mm, size_mm)
        rmap, raff = crop_cube(rel.data[0], rel.affine, r.peak_mm, size_mm)
        name_scan, name_rel = reference_names(r.rank, r.id)
        rec = {**record, "kind": "concept reference", "rank": r.rank + 1, "subject": r.id,
               "peak_relevance": r.peak_relevance, "peak_mm": list(r.peak_mm), "cube_mm": float(size_mm),
               "concept_relevance": r.concept_relevance, "concept_share": r.concept_share,
               "source": [str(p) for p in r.paths], "map": str(r.map)}
        for name, data, a, what in ((name_scan, scan, aff, "scan"), (name_rel, rmap, raff, "conditional relevance")):
            path = out / name
            save_nifti(path, data[0] if data.ndim == 4 and data.shape[0] == 1 else data, a, header=None)
            write_sidecar(path, {**rec, "content": what, "output": str(path)})
            written += [path, Path(str(path) + ".xai.json")]
        tiles.append((r, scan[0] if scan.ndim == 4 else scan, rmap, aff))
    if montage and tiles:
        path = out / "montage.png"
        atomic_write_bytes(path, montage_png(tiles, record.get("title", "")))
        written.append(path)
    return written


def _ras(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``data`` (i, j, k) in the closest RAS voxel order (for display only)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(np.asarray(affine, float))
    return nib.orientations.apply_orientation(data, ornt)


def montage_png(tiles, title: str = "") -> bytes:
    """PNG bytes: one row per reference, three planes through the cube's centre (sagittal, coronal, axial, RAS
    display: anterior/superior up, left on the left), the scan in grey with the positive conditional relevance
    in hot colours (one colour scale for all rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vmax = max((float(np.max(t[2])) for t in tiles), default=1.0) or 1.0
    fig = Figure(figsize=(6.6, 2.2 * len(tiles) + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for row, (r, scan, rmap, aff) in enumerate(tiles):
        s, m = _ras(scan, aff), _ras(rmap, aff)
        c = [n // 2 for n in s.shape]
        planes = [(s[c[0]].T, m[c[0]].T, "sagittal"), (s[:, c[1]].T, m[:, c[1]].T, "coronal"),
                  (s[:, :, c[2]].T, m[:, :, c[2]].T, "axial")]
        for col, (img, rel, name) in enumerate(planes):
            ax = fig.add_subplot(len(tiles), 3, 3 * row + col + 1)
            ax.imshow(img, cmap="gray", origin="lower", interpolation="nearest")
            pos = np.ma.masked_less_equal(rel, 0.15 * vmax)
            ax.imshow(pos, cmap="hot", origin="lower", vmin=0, vmax=vmax, alpha=0.7, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f"#{r.rank + 1} {r.id}\n{r.peak_relevance:.3g}", fontsize=7)
            if row == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
