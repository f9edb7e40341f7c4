"""Cohorts: one model and method over many subjects, region relevance per subject, group maps, correlations.

A cohort is a CSV with one row per subject: an ``id``, the ``path`` of its
NIfTI file (several co-registered channels separated by ``;``), optionally a
``truth`` mask (a lesion, a region the model should use), and any number of
numeric covariates (age, a hippocampus volume, a clinical score...).
Paths are relative to the CSV's folder unless absolute.

The pieces here are pure; ``napari-xai cohort`` (``cli/cohort.py``) runs them:

* :func:`read_subjects` reads and checks the whole table before any work;
* :class:`RunningMean` averages relevance maps that share one grid;
* :func:`correlations` correlates a region's relevance with each covariate
  over subjects (Pearson's r with its two-sided p-value), as Dyrba et al.
  correlated hippocampal relevance with hippocampus volume.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import UserError

__all__ = ["RunningMean", "Subject", "correlations", "pearson", "read_subjects", "subjects_from_paths", "summarize"]


@dataclass
class Subject:
    """One row of a cohort: its id, its image file(s) (channels) and numeric covariates."""

    id: str
    paths: list[Path]
    covariates: dict[str, float] = field(default_factory=dict)
    truth: Path | None = None  # ground-truth mask (e.g. a lesion) on the subject's grid


def _safe_id(text: str, where: str) -> str:
    sid = text.strip()
    if not sid:
        raise UserError(f"{where}: the id is empty; every subject needs an id.")
    bad = [c for c in sid if c in '/\\:*?"<>|' or ord(c) < 32]
    if bad:
        raise UserError(f"{where}: id {sid!r} contains {bad[0]!r}; ids become file names, use letters, digits, - and _.")
    return sid


def read_subjects(path: str | Path) -> list[Subject]:
    """Read a cohort CSV (columns ``id``, ``path`` and numeric covariates); every file must exist."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {p.name} as a UTF-8 CSV file: {exc}") from None
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(text.splitlines(), dialect=dialect)
    cols = [c.strip() for c in (reader.fieldnames or [])]
    if "id" not in cols or "path" not in cols:
        raise UserError(f"{p.name} needs the columns 'id' and 'path' (one row per subject); it has: {', '.join(cols) or 'none'}.")
    subjects: list[Subject] = []
    seen: set[str] = set()
    numeric: dict[str, bool] = {}
    rows = []
    for n, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not any(row.values()):
            continue
        rows.append((n, row))
    if not rows:
        raise UserError(f"{p.name} lists no subject; add one row per subject (id,path,...).")
    covariate_cols = [c for c in cols if c not in ("id", "path", "truth")]
    for c in covariate_cols:
        numeric[c] = all(_number(row.get(c, "")) is not None or row.get(c, "") == "" for _, row in rows)
    for n, row in rows:
        where = f"{p.name} line {n}"
        sid = _safe_id(row.get("id", ""), where)
        if sid in seen:
            raise UserError(f"{where}: id {sid!r} appears twice; ids must be unique.")
        seen.add(sid)
        paths = []
        for part in (row.get("path") or "").split(";"):
            if not part.strip():
                continue
            f = Path(part.strip()).expanduser()
            f = f if f.is_absolute() else p.parent / f
            if not f.exists():
                raise UserError(f"{where}: file not found: {f}")
            paths.append(f)
        if not paths:
            raise UserError(f"{where}: subject {sid!r} has no path; give its NIfTI file (channels separated by ';').")
        cov = {c: _number(row.get(c, "")) for c in covariate_cols if numeric[c]}
        truth = None
        if row.get("truth"):
            truth = Path(row["truth"]).expanduser()
            truth = truth if truth.is_absolute() else p.parent / truth
            if not truth.exists():
                raise UserError(f"{where}: truth mask not found: {truth}")
        subjects.append(Subject(sid, paths, {k: (float("nan") if v is None else v) for k, v in cov.items()}, truth))
    return subjects


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def subjects_from_paths(paths: Iterable[str | Path]) -> list[Subject]:
    """Subjects from plain NIfTI paths; the id is the file name without ``.nii``/``.nii.gz``."""
    out: list[Subject] = []
    seen: set[str] = set()
    for raw in paths:
        f = Path(raw)
        if not f.exists():
            raise UserError(f"file not found: {f}")
        name = f.name
        for suffix in (".nii.gz", ".nii"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        sid = _safe_id(name, str(f))
        if sid in seen:
            raise UserError(f"two files give the subject id {sid!r}; use a cohort CSV with unique ids.")
        seen.add(sid)
        out.append(Subject(sid, [f]))
    if not out:
        raise UserError("no subject given; pass NIfTI files or a cohort CSV.")
    return out


def subjects_from_inputs(inputs: Sequence[str]) -> list[Subject]:
    """The subjects of a command line: one cohort CSV/TSV (:func:`read_subjects`) or NIfTI files (one subject each)."""
    if len(inputs) == 1 and str(inputs[0]).lower().endswith((".csv", ".tsv")):
        return read_subjects(inputs[0])
    return subjects_from_paths(inputs)


class RunningMean:
    """Mean of maps on one grid (shape and affine), without keeping them all in memory."""

    def __init__(self) -> None:
        self.sum: np.ndarray | None = None
        self.affine: np.ndarray | None = None
        self.count = 0
        self.skipped: list[str] = []

    def add(self, data: np.ndarray, affine: np.ndarray, name: str = "") -> bool:
        """Add one map; a map on another grid is skipped (and named in :attr:`skipped`). Returns whether it counted."""
        data = np.asarray(data, dtype=np.float64)
        if self.sum is None:
            self.sum = np.zeros_like(data)
            self.affine = np.asarray(affine, dtype=float)
        elif data.shape != self.sum.shape or not np.allclose(affine, self.affine, atol=1e-3):
            self.skipped.append(name)
            return False
        self.sum += np.nan_to_num(data)
        self.count += 1
        return True

    @property
    def mean(self) -> np.ndarray | None:
        return None if self.sum is None or self.count == 0 else (self.sum / self.count).astype(np.float32)


def pearson(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int]:
    """Pearson's r, its two-sided p-value (t test, n - 2 degrees of freedom) and n, over pairs without NaN."""
    from scipy import stats

    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    n = int(a.size)
    if n < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan"), float("nan"), n
    r = float(np.corrcoef(a, b)[0, 1])
    r = max(-1.0, min(1.0, r))
    if abs(r) == 1.0:
        return r, 0.0, n
    t = r * math.sqrt((n - 2) / (1 - r * r))
    p = float(2 * stats.t.sf(abs(t), n - 2))
    return r, p, n


def correlations(values: dict[str, dict[str, float]], subjects: Sequence[Subject], measure: str = "pos_sum") -> list[dict]:
    """Correlate each region's relevance with each covariate over subjects.

    ``values[subject id][region]`` is the region's relevance measure for that
    subject. Returns one row per (region, covariate): ``region``, ``covariate``,
    ``measure``, ``n``, ``r``, ``p``, sorted by |r| (largest first; NaN last).
    """
    covs = sorted({c for s in subjects for c in s.covariates})
    regions = sorted({r for v in values.values() for r in v})
    out = []
    for region in regions:
        for c in covs:
            xs = [values.get(s.id, {}).get(region, float("nan")) for s in subjects]
            ys = [s.covariates.get(c, float("nan")) for s in subjects]
            r, p, n = pearson(xs, ys)
            out.append({"region": region, "covariate": c, "measure": measure, "n": n, "r": r, "p": p})
    out.sort(key=lambda row: (math.isnan(row["r"]), -abs(row["r"]) if not math.isnan(row["r"]) else 0.0))
    return out


def summarize(rows: Sequence[dict], keys: Sequence[str]) -> dict:
    """Mean, standard deviation (n - 1) and n of each key over the rows that have a finite value."""
    out = {}
    for k in keys:
        v = np.asarray([r[k] for r in rows if k in r and r[k] is not None and np.isfinite(r[k])], dtype=float)
        out[k] = {"mean": float(v.mean()) if v.size else float("nan"),
                  "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "n": int(v.size)}
    return out


def pick_subjects(rows: Sequence[dict], n: int, by: str | None = None) -> list[dict]:
    """Up to ``n`` rows to show side by side: the first ``n`` in table order, or, with ``by`` (a covariate),
    rows spread evenly over that covariate's sorted values (each group gets its share, as in a figure of
    patients and controls). Rows of failed subjects are never picked."""
    ok = [r for r in rows if r.get("status") != "failed"]
    n = max(int(n), 0)
    if by is None or len(ok) <= n:
        return ok[:n]
    if any(by not in r for r in ok):
        raise UserError(f"covariate {by!r} is not a column of the cohort table; use one of its columns.")

    def key(r):
        v = r[by]
        return (0, float(v), "") if isinstance(v, (int, float)) and v == v else (1, 0.0, str(v))

    ordered = sorted(ok, key=key)
    if n == 1:
        return [ordered[len(ordered) // 2]]
    picks = [round(i * (len(ordered) - 1) / (n - 1)) for i in range(n)]
    return [ordered[i] for i in picks]
