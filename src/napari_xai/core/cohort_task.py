"""One subject of a cohort: the frozen :class:`RunConfig`, the per-process caches and :func:`run_subject`.

The task explains one subject and writes, atomically, its map (+ sidecar) and its row; see
:mod:`napari_xai.core.cohort_run` for how the tasks are run and reduced, and docs/cohort.md.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .cohort import Subject
from .errors import UserError

MEASURES = ("pos_sum", "sum", "mean", "neg_sum")


@dataclass(frozen=True)
class RunConfig:
    """Everything a subject's task needs, frozen (hashable, picklable: it travels to worker processes)."""

    model: str
    model_sha256: str
    method: str
    params: tuple[tuple[str, str], ...] = ()
    weights: str | None = None
    model_kwargs: str | None = None
    trust: bool = False
    device: str | None = None
    target: str | None = None
    normalization: str | None = None
    input_shape: str | None = None
    atlas: str | None = None
    labels: str | None = None
    atlas_threshold: float = 25.0
    measure: str = "pos_sum"
    flip: bool = False
    outdir: str = "."
    overwrite: bool = False
    command: str = "napari-xai cohort"
    torch_threads: int = 0  # 0: leave torch's thread count alone

    def settings(self) -> dict:
        """What makes a map: recorded in each map's sidecar as ``cohort_key`` (with the input hashes)."""
        return {"model_sha256": self.model_sha256, "method": self.method, "params": dict(self.params),
                "target": self.target, "normalization": self.normalization, "input_shape": self.input_shape}

    def row_settings(self) -> dict:
        """What makes a subject's row: the map's settings plus the atlas and readouts."""
        return {**self.settings(), "atlas": self.atlas, "labels": self.labels,
                "atlas_threshold": self.atlas_threshold, "flip": self.flip}

    def model_key(self) -> tuple:
        return (self.model, self.weights, self.model_kwargs, self.trust, self.device, self.model_sha256)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params"] = [list(p) for p in self.params]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        d = dict(d)
        d["params"] = tuple(tuple(p) for p in d.get("params", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ---------------------------------------------------------------- per-process caches (one model per worker)
_MODELS: dict = {}
_ATLASES: dict = {}
_GRIDS: dict = {}
MODEL_LOADS = [0]  # models loaded by this process (reported in each row's timings; tests check it is 1 per worker)


def forget_models() -> None:
    """Empty this process's model cache and its load count (a new pool worker)."""
    _MODELS.clear()
    MODEL_LOADS[0] = 0


def cache_model(cfg: RunConfig, model) -> None:
    """Put an already loaded model into this process's cache (the serial driver loaded it to check the options)."""
    _MODELS[cfg.model_key()] = model


def cached_model(cfg: RunConfig):
    """The model of ``cfg``, loaded at most once per process."""
    key = cfg.model_key()
    if key not in _MODELS:
        from .models import load_model

        model = load_model(cfg.model, weights=cfg.weights, model_kwargs=cfg.model_kwargs, device=cfg.device,
                           trust=cfg.trust)
        MODEL_LOADS[0] += 1
        if model.sha256 != cfg.model_sha256:
            raise UserError(f"the model files of {cfg.model} changed since the cohort started (SHA-256 "
                            f"{model.sha256[:12]} instead of {cfg.model_sha256[:12]}); start the cohort again.")
        _MODELS[key] = model
    return _MODELS[key]


def _grid(cfg: RunConfig, shape, affine):
    from . import atlas as at

    akey = (cfg.atlas, cfg.labels)
    if akey not in _ATLASES:
        _ATLASES[akey] = at.load_atlas(cfg.atlas, labels=cfg.labels)
    gkey = (akey, cfg.atlas_threshold, tuple(shape), tuple(np.round(np.asarray(affine, float), 4).ravel()))
    if gkey not in _GRIDS:
        _GRIDS[gkey] = at.atlas_on_grid(_ATLASES[akey], shape, affine, threshold=cfg.atlas_threshold / 100.0)
    return _GRIDS[gkey]


# ---------------------------------------------------------------- the task
def map_path(outdir, sid: str) -> Path:
    return Path(outdir) / "maps" / f"{sid}.nii.gz"


def row_path(outdir, sid: str) -> Path:
    return Path(outdir) / "rows" / f"{sid}.json"


def read_json_or_none(path: Path) -> dict | None:
    """A JSON file's content, or None when it is missing or damaged (a damaged row is redone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
    except (OSError, ValueError):
        return None


def read_row(outdir, sid: str) -> dict | None:
    """A subject's row record of a cohort run in ``outdir``, or None when missing or damaged."""
    return read_json_or_none(row_path(outdir, sid))


def write_row(outdir, sid: str, settings: dict, row: dict) -> None:
    from .provenance import to_json
    from .volumes import atomic_write_bytes

    atomic_write_bytes(row_path(outdir, sid), (to_json({"settings": settings, "row": row}) + "\n").encode("utf-8"))


def one_line(exc: BaseException) -> str:
    """An exception as one line: a UserError's text, else its type and text."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"


def run_subject(subject: Subject, cfg: RunConfig) -> dict:
    """Explain one subject; write its map and row atomically; return the row (``status`` ok, reused or failed).

    Never raises for a subject's own problem (a bad file, a model error): the
    row is ``failed`` with a one-line ``error``. ``KeyboardInterrupt`` passes.
    """
    from .provenance import read_sidecar, sha256_file

    t0 = time.perf_counter()
    timings: dict = {"pid": os.getpid()}
    if cfg.torch_threads > 0:
        import torch

        if torch.get_num_threads() != cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
    outdir = Path(cfg.outdir)
    rsettings = cfg.row_settings()
    try:
        key = {**cfg.settings(), "inputs": [sha256_file(p) for p in subject.paths]}
        truth_sha = sha256_file(subject.truth) if subject.truth is not None else None
        path = map_path(outdir, subject.id)
        side = read_sidecar(path) if path.exists() else None
        same_map = side is not None and side.get("cohort_key") == key
        old = read_json_or_none(row_path(outdir, subject.id))
        if (same_map and old is not None and old.get("settings") == rsettings and old.get("row", {}).get("status") != "failed"
                and old["row"].get("inputs") == key["inputs"] and old["row"].get("truth_sha256") == truth_sha):
            row = {**old["row"], "status": "reused"}
            row["timings"] = {**timings, "total": time.perf_counter() - t0, "model_loads": MODEL_LOADS[0]}
            if old["row"].get("status") != "reused":
                write_row(outdir, subject.id, rsettings, row)
            return row
        row = _subject_row(subject, cfg, path, side, same_map, key, truth_sha, timings)
    except UserError as exc:
        row = {"id": subject.id, "status": "failed", "error": one_line(exc)}
    except Exception as exc:  # a model error in one subject must not stop the cohort; the reason is recorded
        row = {"id": subject.id, "status": "failed", "error": one_line(exc)}
    timings.update(total=time.perf_counter() - t0, model_loads=MODEL_LOADS[0])
    row_file = {k: v for k, v in row.items() if k != "timings"}
    row_file["timings"] = timings
    write_row(outdir, subject.id, rsettings, row_file)
    return row_file


def _subject_row(subject: Subject, cfg: RunConfig, path: Path, side: dict | None, same_map: bool, key: dict,
                 truth_sha: str | None, timings: dict) -> dict:
    """The row of a subject whose map (sidecar ``side``) is reused when ``same_map``, else made now (refused over a
    map made with other settings unless ``--overwrite``); readouts and regions added; ``timings`` filled in."""
    from .provenance import write_sidecar
    from .volumes import load_nifti, save_nifti, stack_channels

    volume = None
    if same_map:
        rel_vol = load_nifti(path)
        data, affine = rel_vol.data[0], rel_vol.affine
        pred, target = side["prediction"], side["target"]
        status, warnings = "reused", []
    else:
        # a map with another sidecar was made with other settings; a map without one is our own interrupted write
        if side is not None and not cfg.overwrite:
            raise UserError(f"{path} was made with other settings; pass --overwrite to recompute it, or "
                            "choose another --out-dir.")
        from .explain import explain

        t = time.perf_counter()
        model = cached_model(cfg)
        timings["model"] = time.perf_counter() - t
        t = time.perf_counter()
        volume = stack_channels([load_nifti(p) for p in subject.paths])
        timings["load"] = time.perf_counter() - t
        t = time.perf_counter()
        rel = explain(volume, model, cfg.method, params=dict(cfg.params), target=cfg.target,
                      normalization=cfg.normalization, input_shape=cfg.input_shape)
        timings["explain"] = time.perf_counter() - t
        data = rel.data.sum(axis=0)
        affine = rel.affine
        pred, target = rel.provenance["prediction"], rel.provenance["target"]
        record = {**rel.provenance, "output": str(path), "command": cfg.command, "subject": subject.id,
                  "cohort_key": key}
        t = time.perf_counter()
        save_nifti(path, data, affine, header=volume.header)
        write_sidecar(path, record)  # after the map: a map without its sidecar is an interrupted write
        timings["write"] = time.perf_counter() - t
        status, warnings = "ok", list(rel.warnings)
    data = np.asarray(data, dtype=np.float64)
    t = time.perf_counter()
    readouts = _readouts(cfg, subject, data, target, volume)
    regions = []
    if cfg.atlas:
        from .atlas import region_table

        table = region_table(_grid(cfg, data.shape, affine), data, sort_by=None)
        regions = [[r["region"], int(r["voxels"]), float(r["pos_sum"]), float(r["neg_sum"]), float(r["sum"]),
                    float(r["mean"])] for r in table.rows]
    timings["readouts"] = time.perf_counter() - t
    prob = pred.get("probabilities", {}).get(pred.get("name"), float("nan")) if isinstance(pred, dict) else float("nan")
    return {"id": subject.id, "status": status, "predicted": pred.get("name", ""), "probability": float(prob),
            "target": target.get("name", ""), "relevance_sum": float(data.sum()),
            "positive_sum": float(data[data > 0].sum()), "negative_sum": float(data[data < 0].sum()),
            "map": f"maps/{path.name}", "error": "", **readouts, "regions": regions, "warnings": warnings,
            "target_index": target.get("index"), "inputs": key["inputs"], "truth_sha256": truth_sha,
            "grid": [list(data.shape), np.asarray(affine, float).tolist()]}


def _readouts(cfg: RunConfig, subject: Subject, data, target, volume=None) -> dict:
    """Ground-truth readouts (``truth`` column) and flipping AOPC (``flip``) for one subject's map."""
    from .evaluation.metrics import MASK_READOUTS
    from .volumes import load_nifti, stack_channels

    out: dict = {}
    if subject.truth is None and not cfg.flip:
        return out
    if volume is None:
        volume = stack_channels([load_nifti(p) for p in subject.paths])
    if subject.truth is not None:
        from .evaluation.metrics import mask_report

        t = load_nifti(subject.truth)
        if t.channels != 1 or tuple(t.shape) != tuple(data.shape):
            raise UserError(f"truth mask {subject.truth.name} has shape {tuple(t.shape)} but the map has "
                            f"{tuple(data.shape)}; give the mask on the subject's grid.")
        rep = mask_report(data, t.data[0] != 0, image=volume.data)
        out.update({k: float(rep[k]) for k in MASK_READOUTS})
    if cfg.flip:
        from .evaluation.flipping import Scorer, aopc_readouts

        model = cached_model(cfg)
        scorer = Scorer(model, volume, int(target["index"]), normalization=cfg.normalization,
                        input_shape=cfg.input_shape)
        out.update(aopc_readouts(model, volume, data, scorer))
    return out
