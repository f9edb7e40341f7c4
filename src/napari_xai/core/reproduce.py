"""Make a relevance map again from its provenance record, and say whether it came out the same.

Every relevance file has a JSON sidecar (see :mod:`provenance`) that records
the input files (with their SHA-256), the model (source, weights, constructor
arguments, SHA-256 of its files), the method with every parameter (resolved
defaults included, such as the Grad-CAM layer), the target, the seed, the
model grid, the normalisation and, for segmentation networks, how the target
mask was made. :func:`reproduce` reads that record, checks that the input and
the model files are still the ones hashed in it, runs :func:`explain` with the
recorded settings and compares the new map with the recorded file.

What a record cannot hold has to be given again: a mask drawn in napari (no
file), or an input that was a napari layer without a file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import UserError

#: A map is "reproduced" when the largest voxel difference is at most this fraction of the recorded map's max |r|.
TOLERANCE = 1e-4

_DEMO = re.compile(r"^napari-xai demo seed=(-?\d+) condition=(True|False)$")


@dataclass
class Reproduction:
    """The new relevance, what was checked on the way, and how it compares with the recorded map."""

    relevance: Any  # napari_xai.core.explain.Relevance
    checks: list[str] = field(default_factory=list)
    #: ``max_abs_diff``, ``max_abs_recorded``, ``relative``, ``pearson`` and ``reproduced``; None without a recorded map.
    comparison: dict | None = None

    @property
    def reproduced(self) -> bool | None:
        return None if self.comparison is None else bool(self.comparison["reproduced"])


def _resolve(path: str, base: Path | None) -> Path | None:
    p = Path(os.path.expanduser(path))
    if p.exists():
        return p
    if base is not None and not p.is_absolute() and (base / p).exists():
        return base / p
    return None


def _inputs(record: dict, given: list[str] | None, base: Path | None, checks: list[str]):
    from .demo import demo_volume
    from .provenance import file_hashes
    from .volumes import load_nifti, stack_channels

    rec = record.get("input") or {}
    if given:
        checks.append(f"input: {', '.join(given)} (given; the record's files are not checked)")
        return stack_channels([load_nifti(p) for p in given])
    files = [str(f) for f in rec.get("files") or []]
    if len(files) == 1 and _DEMO.match(files[0]):
        seed, condition = _DEMO.match(files[0]).groups()
        checks.append(f"input: the demo brain, seed {seed}, condition {condition} (made again)")
        return demo_volume(int(seed), condition == "True")[0]
    if not files:
        raise UserError("the record names no input file (the input was a napari layer without a file); "
                        "give it with --input FILE.nii.gz.")
    absolute = [str(a) for a in rec.get("absolute") or []]
    paths = []
    for k, f in enumerate(files):
        p = _resolve(absolute[k], None) if k < len(absolute) else None
        p = p or _resolve(f, base)
        if p is None:
            raise UserError(f"input file {f} is not found; give the input with --input FILE.nii.gz.")
        paths.append(p)
    recorded = rec.get("sha256") or {}
    now = file_hashes([str(p) for p in paths])
    for f, p in zip(files, paths):
        want, have = recorded.get(f), now.get(str(p))
        if want is None:
            checks.append(f"input: {p} (the record has no hash for it; not checked)")
        elif want != have:
            raise UserError(f"input file {p} changed since the result was made (SHA-256 {have[:12]}… is not the "
                            f"recorded {want[:12]}…); give the original with --input.")
        else:
            checks.append(f"input: {p} (SHA-256 matches)")
    return stack_channels([load_nifti(p) for p in paths])


def _model_source(record: dict, source: str | None, weights: str | None, base: Path | None):
    """(source, weights, from_record) to load, every path found; nothing is loaded here."""
    from .models import source_file

    rec = record.get("model") or {}
    if source is None and (rec.get("kind") == "demo" or str(rec.get("source") or "").strip().lower() == "demo"):
        return "demo", None, True  # the built-in demo: never a file or folder that happens to be called "demo"
    absolute = str(rec.get("source_absolute") or "")
    src = source or (absolute if absolute and _resolve(source_file(absolute)[0], None) else None) or rec.get("source")
    if not src:
        raise UserError("the record names no model; give it with --model.")
    wts = weights or rec.get("weights")
    if source is None:
        path_part = source_file(src)[0]
        found = _resolve(path_part, base)
        if found is None:
            raise UserError(f"model {src} is not found; give it with --model (and --weights).")
        if found != Path(os.path.expanduser(path_part)):
            src = src.replace(path_part, str(found), 1)
    if wts and weights is None:
        found_w = _resolve(wts, base)
        if found_w is None:
            raise UserError(f"the model's weights file {wts} is not found; give it with --weights.")
        wts = str(found_w)
    return src, wts, source is None


def _check_model(record: dict, src: str, wts: str | None, from_record: bool, trust: bool,
                 allow_changed_model: bool, checks: list[str]) -> str | None:
    """Hash the model's files and refuse changed ones or code from a record without trust, before ANY loading.

    Returns the SHA-256 the files have now (None for the demo)."""
    from .models import TRUST_HINT, combined_sha256, model_files

    rec = record.get("model") or {}
    kind, files, runs_code = model_files(src, wts)
    if kind == "demo":
        checks.append("model: demo (built in)")
        return None
    have = combined_sha256(files)
    want = rec.get("sha256")
    if want and have != want:
        if not allow_changed_model:
            raise UserError(f"the model files changed since the result was made (SHA-256 {have[:12]}… is not "
                            f"the recorded {want[:12]}…); pass --allow-changed-model to explain the new model anyway.")
        checks.append(f"model: {src} CHANGED (SHA-256 {have[:12]}…, recorded {want[:12]}…)")
    else:
        checks.append(f"model: {src} (SHA-256 {'matches' if want else 'not recorded'})")
    if runs_code and from_record and not trust:
        what = "Python model file" if kind == "python" else "TorchScript model"
        raise UserError(f"the record asks to run the {what} {src}, which runs code from it (a sidecar may come from "
                        f"anyone, and matching hashes only say the file is the one recorded); {TRUST_HINT}.")
    return have


def _model(src: str, wts: str | None, record: dict, device: str | None, trust: bool, have: str | None):
    from .models import load_model

    rec = record.get("model") or {}
    model = load_model(src, weights=wts, model_kwargs=rec.get("model_kwargs") or None, device=device, trust=trust)
    if have is not None and model.sha256 != have:
        raise UserError(f"the model files of {src} changed while they were being loaded; run reproduce again.")
    return model


_STR_OR_NONE = (str, type(None))


def _field(record: dict, key: str, types, what: str, where: str = "") -> None:
    value = record.get(key)
    if value is not None and not isinstance(value, types) or isinstance(value, bool) and bool not in _as_tuple(types):
        names = " or ".join(t.__name__.replace("NoneType", "null").replace("dict", "object").replace("list", "array")
                            .replace("str", "string").replace("int", "integer") for t in _as_tuple(types))
        raise UserError(f"the record's {where}{key!r} must be {what or names}, not {type(value).__name__} "
                        f"{_shown(value)}; is the sidecar damaged or edited?")


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _ints(value: Any, n: int | None = None) -> bool:
    return (isinstance(value, list) and (n is None or len(value) == n)
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def _numbers(value: Any, n: int) -> bool:
    return (isinstance(value, list) and len(value) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def check_record(record: Any) -> None:
    """Refuse, in one line, a record whose fields have the wrong types (a damaged or edited sidecar)."""
    if not isinstance(record, dict):
        raise UserError(f"the record is a {type(record).__name__}, not a JSON object; give the .json beside a "
                        "relevance file.")
    for key in ("input", "model", "params", "grid", "target", "segmentation", "sanity"):
        _field(record, key, dict, "an object")
    for key in ("method", "kind", "output"):
        _field(record, key, str, "a string")
    for key in ("seed", "output_index"):
        _field(record, key, int, "an integer")
    if isinstance(record.get("output_index"), int) and record["output_index"] < 0:
        raise UserError(f"the record's 'output_index' must be 0 or more, not {record['output_index']}.")
    inp = record.get("input") or {}
    for key in ("files", "absolute"):
        _field(inp, key, list, "an array of file names", "input ")
        if any(not isinstance(f, str) for f in inp.get(key) or []):
            raise UserError(f"the record's input {key!r} must hold file names (strings); is the sidecar damaged?")
    _field(inp, "sha256", dict, "an object of file -> SHA-256", "input ")
    if any(not isinstance(v, str) for v in (inp.get("sha256") or {}).values()):
        raise UserError("the record's input 'sha256' must map file names to SHA-256 strings; is the sidecar damaged?")
    model = record.get("model") or {}
    for key in ("source", "source_absolute", "weights", "kind", "sha256", "normalization"):
        _field(model, key, str, "a string", "model ")
    _field(model, "model_kwargs", dict, "an object", "model ")
    grid = record.get("grid") or {}
    shape = grid.get("model_shape")
    if shape is not None and not (_ints(shape, 3) and min(shape) >= 1):
        raise UserError(f"the record's grid 'model_shape' must be three positive integers, not {_shown(shape)}.")
    target = record.get("target") or {}
    _field(target, "index", int, "a class index (integer)", "target ")
    seg = record.get("segmentation") or {}
    for key in ("mask", "mask_file", "mask_sha256"):
        _field(seg, key, str, "a string", "segmentation ")
    if seg.get("point") is not None and not _ints(seg["point"], 3):
        raise UserError(f"the record's segmentation 'point' must be three voxel indices, not {_shown(seg['point'])}.")
    ray = seg.get("ray")
    if ray is not None and not (isinstance(ray, dict) and _numbers(ray.get("origin"), 3)
                                and _numbers(ray.get("direction"), 3)):
        raise UserError("the record's segmentation 'ray' must have an 'origin' and a 'direction' of three numbers each.")
    sanity = record.get("sanity") or {}
    _field(sanity, "randomized_layers", list, "an array", "sanity ")


def relevance_record(record: dict) -> dict:
    """The relevance record itself: a map saved from napari wraps it as ``{"provenance": {...}, "file": ...}``."""
    inner = record.get("provenance")
    if "method" not in record and isinstance(inner, dict) and "method" in inner:
        out = dict(inner)
        if record.get("file"):
            out["output"] = record["file"]  # the saved file, beside its sidecar
        return out
    return record


def explain_arguments(record: dict) -> dict:
    """The :func:`explain` keyword arguments a record asks for (method, params, target, seed, grid, ...)."""
    from .methods.catalogue import get_method

    record = relevance_record(record)
    check_record(record)
    randomized = (record.get("sanity") or {}).get("randomized_layers")
    if randomized:
        raise UserError(f"this map comes from a sanity check with {len(randomized)} randomized layer(s); it cannot be "
                        "made again from the intact model. Run 'napari-xai sanity' with the recorded seed instead.")

    if record.get("kind") not in (None, "relevance"):
        kind = record.get("kind")
        hint = (" Clusters, filtered maps and tables are made again with 'napari-xai clusters --params-from'."
                if kind in ("clusters", "filtered_relevance", "cluster_table") else "")
        raise UserError(f"this record is a {kind!r} result, not a relevance map.{hint}")
    if "method" not in record:
        raise UserError("the record has no 'method'; is it the sidecar of a relevance file?")
    method = get_method(record["method"])
    known = {p.name for p in method.params}
    recorded = record.get("params") or {}
    params = {k: v for k, v in recorded.items() if k in known and v is not None}
    designer = method.name == "lrp" or (method.name == "crp" and recorded.get("rules") == "lrp")
    if designer and isinstance(recorded.get("configuration"), dict):
        from .lrp import LrpConfig

        # the whole configuration is in the record; the file it came from may be gone or edited since
        params["config"] = LrpConfig.from_dict(recorded["configuration"], "the recorded configuration")
        params.pop("configuration", None)
    elif isinstance(params.get("configuration"), dict):  # crp with a composite records the rules it resolved
        params.pop("configuration")
    grid = record.get("grid") or {}
    model = record.get("model") or {}
    target = record.get("target") or {}
    kwargs = {
        "method": method.name,
        "params": params,
        "target": target.get("index"),
        "seed": int(record.get("seed", 0) or 0),
        "normalization": model.get("normalization"),
        "input_shape": tuple(grid["model_shape"]) if grid.get("model_shape") else None,
        "output_index": int(record.get("output_index", 0) or 0),
    }
    applied = (record.get("input_space") or {}).get("applied")
    if isinstance(applied, dict):
        # the recorded input space: orientation and spacing as applied ("stored" when none), the declared shape
        kwargs["model_orientation"] = applied.get("orientation") or "stored"
        kwargs["model_spacing"] = tuple(applied["spacing_mm"]) if applied.get("spacing_mm") else "stored"
        kwargs["input_shape"] = tuple(applied["shape"]) if applied.get("shape") else None
        if kwargs["normalization"] not in ("none", "zscore", "minmax"):
            kwargs["normalization"] = None  # e.g. a bundle's ScaleIntensityRange: the model declares it again
    seg = record.get("segmentation")
    if seg:
        kwargs["segmentation"] = True
        if seg.get("ray"):
            from .segmentation import Ray

            kwargs["point"] = Ray(np.asarray(seg["ray"]["origin"], float), np.asarray(seg["ray"]["direction"], float))
        elif seg.get("point") is not None:
            kwargs["point"] = tuple(int(v) for v in seg["point"])
    return kwargs


def compare_maps(new: np.ndarray, recorded: np.ndarray, tolerance: float = TOLERANCE) -> dict:
    """Largest voxel difference (absolute and relative to the recorded max |r|) and Pearson r of two maps."""
    a = np.asarray(new, dtype=np.float64)
    b = np.asarray(recorded, dtype=np.float64)
    if a.shape != b.shape:
        raise UserError(f"the new map has shape {a.shape} but the recorded one {b.shape}; was the input resampled?")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
    if a.std() > 0 and b.std() > 0:
        r = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    else:
        r = 1.0 if diff == 0 else float("nan")
    return {"max_abs_diff": diff, "max_abs_recorded": scale, "relative": rel, "pearson": r,
            "reproduced": bool(rel <= tolerance), "tolerance": tolerance}


def reproduce(record: dict, *, sidecar: str | os.PathLike | None = None, inputs: list[str] | None = None,
              model: str | None = None, weights: str | None = None, mask: np.ndarray | None = None,
              device: str | None = None, trust: bool = False, allow_changed_model: bool = False,
              tolerance: float = TOLERANCE, progress: Callable[[float, str], None] | None = None) -> Reproduction:
    """Run :func:`explain` again as ``record`` says, after checking its input and model files.

    Parameters
    ----------
    record : dict
        A relevance sidecar (``OUT.json``) as written by ``napari-xai explain``,
        the widgets or ``compare``.
    sidecar : path-like, optional
        Where the record was read from: relative paths in it are also looked
        up beside it, and the recorded map (``output``) is compared.
    inputs, model, weights
        Replace the recorded input files / model (e.g. when they moved).
    mask : ndarray, optional
        The target mask of a segmentation result whose mask was not a file.
    allow_changed_model : bool
        Explain even when the model files' SHA-256 differs from the record.
    tolerance : float
        Largest voxel difference, as a fraction of the recorded max |r|, that
        still counts as reproduced.
    """
    from .explain import explain
    from .volumes import load_nifti

    base = Path(sidecar).resolve().parent if sidecar else None
    checks: list[str] = []
    if not isinstance(record, dict):
        check_record(record)
    record = relevance_record(record)
    kwargs = explain_arguments(record)
    # Every recorded file is found and hashed, and code from a record needs trust, before anything is loaded.
    src, wts, from_record = _model_source(record, model, weights, base)
    model_sha = _check_model(record, src, wts, from_record, trust, allow_changed_model, checks)
    seg = record.get("segmentation") or {}
    if seg.get("mask") == "mask":
        if mask is None and seg.get("mask_file"):
            p = _resolve(seg["mask_file"], base)
            if p is None:
                raise UserError(f"the target mask {seg['mask_file']} is not found; give it with --mask.")
            from .provenance import file_hashes

            want, have = seg.get("mask_sha256"), file_hashes([str(p)]).get(str(p))
            if want and have != want:
                raise UserError(f"the target mask {p} changed since the result was made (SHA-256 {have[:12]}… is not "
                                f"the recorded {want[:12]}…); give the original with --mask.")
            mask = load_nifti(p).data[0]
            checks.append(f"mask: {p} (SHA-256 {'matches' if want else 'not recorded'})")
        if mask is None:
            raise UserError("the result explained a mask drawn in napari (no file); save it and give it with --mask.")
        kwargs["mask"] = np.asarray(mask) != 0
    volume = _inputs(record, inputs, base, checks)
    loaded = _model(src, wts, record, device, trust, model_sha)
    method = kwargs.pop("method")
    rel = explain(volume, loaded, method, progress=progress, **kwargs)
    comparison = None
    out = record.get("output")
    if out:
        p = _resolve(str(out), base)
        if p is None and base is not None:
            p = _resolve(Path(str(out)).name, base)
        if p is not None:
            old = load_nifti(p).data
            new = rel.data
            if old.shape[0] == 1 and new.shape[0] > 1 and old.shape[1:] == new.shape[1:]:
                new = new.sum(axis=0, keepdims=True)  # the recorded map is the channel sum (cohort and compare maps)
                checks.append(f"the recorded map sums the {rel.data.shape[0]} channels; compared with the new sum")
            comparison = compare_maps(new, old, tolerance)
            comparison["recorded_file"] = str(p)
            checks.append(f"recorded map: {p}")
        else:
            checks.append(f"recorded map {out} not found: nothing to compare with")
    return Reproduction(rel, checks, comparison)
