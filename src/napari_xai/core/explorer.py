"""A cached post-processing chain for live sliders.

:class:`Explorer` keeps the intermediate results of :mod:`napari_xai.core.postprocess`
and redoes only the steps a parameter change needs:

============================  ==========================================================
change                        recomputed from
============================  ==========================================================
min size / size unit          the cached labelling (lookup, no labelling)
threshold / connectivity      the cached filtered map (labelling + statistics)
scale / clip / filter / sign  the cached smoothed map
σ (smoothing)                 the raw relevance
============================  ==========================================================

The explorer is not thread-safe: use it from one thread at a time (the widget
runs it either on the GUI thread or in one worker, never both).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import geometry
from . import postprocess as pp
from .errors import UserError

STAGES = ("smooth", "filter", "label", "size")


@dataclass
class _FilterStage:
    filtered: np.ndarray
    divisor: float
    max_abs: float
    max_profiles: list
    profiles: list
    messages: list


@dataclass
class _LabelStage:
    labelling: pp.Labelling
    table: pp.ClusterTable
    histogram: pp.SizeHistogram


class Explorer:
    """Cached post-processing of one relevance volume.

    Parameters
    ----------
    relevance : ndarray
        3D relevance (i, j, k) (or (1, i, j, k)); NaN/Inf are treated as 0 with a message.
    affine : ndarray
        4x4 voxel -> world mm affine (voxel sizes for σ in mm and for mm³).
    params : PostParams, optional
        Initial parameters (defaults otherwise). Nothing is computed until :meth:`update`.
    provenance : dict, optional
        How the relevance was made; carried into saved sidecars.
    """

    def __init__(self, relevance: np.ndarray, affine: np.ndarray, params: pp.PostParams | None = None,
                 provenance: dict | None = None, name: str = "relevance"):
        self.raw, self.input_messages = pp.sanitize(relevance, name)
        self.affine = np.asarray(affine, dtype=float)
        if self.affine.shape != (4, 4):
            raise UserError(f"the affine must be 4x4, got shape {self.affine.shape}.")
        if not np.isfinite(self.affine).all() or geometry.voxel_volume_mm3(self.affine) <= 0:
            raise UserError("the affine is singular or not finite; the relevance needs a valid voxel-to-mm affine.")
        self.name = name
        self.provenance = provenance
        self.params = (params or pp.PostParams()).validated()
        self.voxel_mm3 = geometry.voxel_volume_mm3(self.affine)
        self.raw_all_zero = not bool(np.any(self.raw))
        self._smooth_key: Any = None
        self._smoothed: np.ndarray | None = None
        self._smooth_box: tuple | None = None
        self._filter_key: Any = None
        self._filter: _FilterStage | None = None
        self._label_key: Any = None
        self._label: _LabelStage | None = None
        self._size_key: Any = None
        self._result: pp.PostResult | None = None
        self._result_labelling: pp.Labelling | None = None
        self._result_k = 0
        self.counts = {s: 0 for s in STAGES}  # how often each stage ran (for tests and diagnostics)
        self.last_ran: tuple[str, ...] = ()
        self.last_seconds: dict[str, float] = {}

    # -- keys: which parameters each stage depends on -----------------------------------
    @staticmethod
    def _keys(p: pp.PostParams) -> dict[str, Any]:
        k_s = (p.sigma_mm,)
        k_f = k_s + (p.scale, p.percentile if p.scale == "percentile" else None,
                     p.scale_value if p.scale == "fixed" else None, p.clip, p.filter,
                     tuple(p.alpha) if p.filter != "none" else None, p.sign)
        k_l = k_f + (p.threshold, p.connectivity)
        k_z = k_l + (p.min_size, p.size_unit)
        return {"smooth": k_s, "filter": k_f, "label": k_l, "size": k_z}

    def stages_needed(self, params: pp.PostParams | None = None, **changes: Any) -> tuple[str, ...]:
        """The stages an update to these parameters would run (cheap; nothing is computed)."""
        p = (params or self.params).replace(**changes) if changes else (params or self.params)
        p = p.validated()
        keys = self._keys(p)
        cached = {"smooth": self._smooth_key, "filter": self._filter_key, "label": self._label_key, "size": self._size_key}
        for i, s in enumerate(STAGES):
            if keys[s] != cached[s]:
                return STAGES[i:]
        return ()

    def update(self, params: pp.PostParams | None = None, **changes: Any) -> pp.PostResult:
        """Apply new parameters (a full :class:`PostParams` and/or keyword changes) and return the result.

        Raises :class:`UserError` for invalid parameters or when more than 65,535
        clusters would remain; the explorer then keeps its previous parameters.
        """
        p = params if params is not None else self.params
        if changes:
            p = p.replace(**changes)
        p = p.validated()
        keys = self._keys(p)
        ran: list[str] = []
        secs: dict[str, float] = {}

        if keys["smooth"] != self._smooth_key or self._smoothed is None:
            t0 = time.perf_counter()
            self._smoothed = pp.smooth(self.raw, self.affine, p.sigma_mm)
            self._smooth_box = pp.support_box(self._smoothed)
            self._smooth_key = keys["smooth"]
            self._filter_key = self._label_key = self._size_key = None
            ran.append("smooth")
            secs["smooth"] = time.perf_counter() - t0

        if keys["filter"] != self._filter_key or self._filter is None:
            t0 = time.perf_counter()
            filt, divisor, msgs = pp.filter_map(self._smoothed, p, box=self._smooth_box)
            box = pp.support_box(filt)
            if box is None:
                mp = [np.zeros(n, np.float32) for n in filt.shape]
                prof = [(np.zeros(n), np.zeros(n)) for n in filt.shape]
            else:
                mp = pp.max_profiles(filt, box)
                prof = pp.slice_profiles(filt, box)
            max_abs = float(max((m.max() for m in mp if m.size), default=0.0))
            self._filter = _FilterStage(filt, divisor, max_abs, mp, prof, msgs)
            self._filter_key = keys["filter"]
            self._label_key = self._size_key = None
            ran.append("filter")
            secs["filter"] = time.perf_counter() - t0

        f = self._filter
        if keys["label"] != self._label_key or self._label is None:
            t0 = time.perf_counter()
            lab = pp.label_clusters(f.filtered, p.threshold, p.connectivity, profiles=f.max_profiles)
            table = pp.cluster_table(lab, f.filtered, self.affine, absolute=(p.sign == "absolute"))
            hist = pp.size_histogram(lab.sizes, self.voxel_mm3)
            self._label = _LabelStage(lab, table, hist)
            self._label_key = keys["label"]
            self._size_key = None
            ran.append("label")
            secs["label"] = time.perf_counter() - t0

        lst = self._label
        if keys["size"] != self._size_key or self._result is None:
            t0 = time.perf_counter()
            min_vox = pp.min_size_voxels(p.min_size, p.size_unit, self.affine)
            k = lst.labelling.n_kept(min_vox)
            if k > pp.MAX_LABEL:
                # keep the caches (they are valid) but not the parameters
                self.last_ran = tuple(ran)
                raise UserError(pp.too_many_clusters_message(k))
            prev = None
            if self._result is not None and "label" not in ran and self._result_labelling is lst.labelling:
                prev = (self._result.labels, self._result_k)
            labels = pp.keep_min_size(lst.labelling, min_vox, previous=prev)
            messages = list(self.input_messages)
            if self.raw_all_zero:
                messages.append("the relevance map is all zeros; there is nothing to cluster.")
            else:
                messages += f.messages
                messages += pp.empty_messages(p, f.max_abs, lst.labelling, k, min_vox, self.voxel_mm3)
            self._result = pp.PostResult(
                params=p,
                filtered=f.filtered,
                labels=labels,
                table=lst.table.head(k),
                histogram=lst.histogram,
                profiles=f.profiles,
                affine=self.affine,
                n_clusters_before_size=lst.labelling.n,
                min_voxels=min_vox,
                max_abs=f.max_abs,
                divisor=f.divisor,
                messages=list(dict.fromkeys(messages)),
                sizes_all=lst.labelling.sizes,
                box=lst.labelling.box,
                labelling=lst.labelling,
            )
            self._size_key = keys["size"]
            self._result_labelling = lst.labelling
            self._result_k = k
            ran.append("size")
            secs["size"] = time.perf_counter() - t0
        self.params = p
        for s in ran:
            self.counts[s] += 1
        self.last_ran = tuple(ran)
        self.last_seconds = secs
        return self._result

    @property
    def result(self) -> pp.PostResult | None:
        """The last result (None before the first :meth:`update`)."""
        return self._result

    @property
    def labelling(self) -> pp.Labelling | None:
        return self._label.labelling if self._label else None


def run(relevance: np.ndarray, affine: np.ndarray, params: pp.PostParams | None = None) -> pp.PostResult:
    """Run the whole chain once (what the ``clusters`` command does)."""
    return Explorer(relevance, affine, params).update()


# ---------------------------------------------------------------------------
# export with provenance
# ---------------------------------------------------------------------------


def source_provenance(sidecar: dict | None) -> dict | None:
    """The provenance of a relevance map from its sidecar (or layer metadata record).

    A record with a ``"provenance"`` dict (e.g. a layer saved by the writer)
    gives that dict; a record that is itself a provenance record (it has a
    ``"kind"``, like the sidecar of ``napari-xai explain``) is used whole.
    """
    if not isinstance(sidecar, dict):
        return None
    inner = sidecar.get("provenance")
    if isinstance(inner, dict):
        return inner
    return sidecar if sidecar.get("kind") else None


def export_record(result: pp.PostResult, kind: str, path, source: dict | None, provenance: dict | None,
                  extra: dict | None = None) -> dict:
    """The JSON sidecar of one exported file: every post-processing parameter + the source's provenance."""
    from .provenance import now_iso, package_versions

    rec = {
        "kind": kind,
        "created": now_iso(),
        "file": Path(path).name,
        "postprocess": result.params.to_dict(),
        "result": {
            "n_clusters": result.n_clusters,
            "n_clusters_before_size_filter": result.n_clusters_before_size,
            "min_size_voxels": result.min_voxels,
            "voxel_mm3": geometry.voxel_volume_mm3(result.affine),
            "scale_divisor": result.divisor,
            "max_abs_filtered": result.max_abs,
            "messages": list(result.messages),
        },
        "affine": np.asarray(result.affine).tolist(),
        "source_relevance": source or {},
        "provenance": provenance,
        "versions": package_versions(),
    }
    if extra:
        rec.update(extra)
    return rec


def save_outputs(
    result: pp.PostResult,
    *,
    labels_path=None,
    filtered_path=None,
    table_path=None,
    source: dict | None = None,
    provenance: dict | None = None,
    header: object | None = None,
    mask_filtered: bool = False,
    overwrite: bool = True,
    extra: dict | None = None,
) -> list[Path]:
    """Write clusters (uint16 NIfTI), filtered relevance (float32 NIfTI) and the table (CSV).

    Every file is written atomically with the result's affine and gets a JSON
    sidecar (``OUT.nii.gz`` -> ``OUT.nii.gz.xai.json``, ``T.csv`` -> ``T.csv.xai.json``) holding all
    post-processing parameters and the source relevance's ``provenance``. If a
    write fails, the files written so far are removed. Returns the written paths.
    """
    from .provenance import sidecar_path, write_sidecar
    from .volumes import atomic_write_bytes, is_nifti_path, save_nifti, written_or_removed

    jobs = []
    if labels_path is not None:
        jobs.append(("clusters", Path(labels_path)))
    if filtered_path is not None:
        jobs.append(("filtered_relevance", Path(filtered_path)))
    if table_path is not None:
        jobs.append(("cluster_table", Path(table_path)))
    if not jobs:
        raise UserError("nothing to save: give an output for the labels, the filtered relevance or the table.")
    names = [p.resolve() for _, p in jobs]
    if len(set(names)) != len(names) or len({sidecar_path(p).resolve() for _, p in jobs}) != len(jobs):
        raise UserError("the output files (or their .json sidecars) collide; give each output its own name.")
    for kind, p in jobs:
        if kind == "cluster_table":
            if not p.name.lower().endswith(".csv"):
                raise UserError(f"{p.name}: the cluster table must be a .csv file.")
        elif not is_nifti_path(p):
            raise UserError(f"{p.name}: {kind.replace('_', ' ')} must be saved as .nii or .nii.gz.")
        if not p.parent.exists():
            raise UserError(f"the folder of {p} does not exist.")
        if not overwrite and (p.exists() or sidecar_path(p).exists()):
            raise UserError(f"{p} (or its .json sidecar) exists; choose another name or allow overwriting.")
    with written_or_removed() as written:
        for kind, p in jobs:
            if kind == "clusters":
                save_nifti(p, result.labels.astype(np.uint16, copy=False), result.affine, header=header)
                ex = {"label_order": "1 = largest cluster; ties: positive first, then raster order of the first voxel"}
            elif kind == "filtered_relevance":
                data = result.masked() if mask_filtered else result.filtered
                save_nifti(p, np.asarray(data, dtype=np.float32), result.affine, header=header)
                ex = {"filtered_relevance": "masked to the kept clusters" if mask_filtered else "whole map"}
            else:
                atomic_write_bytes(p, result.table.to_csv().encode("utf-8"))
                ex = {"columns": list(pp.TABLE_COLUMNS)}
            written.append(p)
            record = export_record(result, kind, p, source, provenance, {**ex, **(extra or {})})
            written.append(write_sidecar(p, record))
    return written


def params_from_sidecar(path) -> pp.PostParams:
    """Post-processing parameters recorded in a sidecar (or any JSON with a ``"postprocess"`` object)."""
    import json

    p = Path(path)
    if not p.exists():
        raise UserError(f"parameter file not found: {p}")
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{p.name} is not valid JSON ({exc.__class__.__name__}).") from None
    if isinstance(rec, dict) and isinstance(rec.get("postprocess"), dict):
        rec = rec["postprocess"]
    elif not (isinstance(rec, dict) and set(rec) <= {f for f in pp.PostParams.__dataclass_fields__}):
        raise UserError(f"{p.name} holds no post-processing parameters (no 'postprocess' object).")
    return pp.PostParams.from_dict(rec)
