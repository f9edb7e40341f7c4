"""What several ``napari-xai`` commands share: the model source and segmentation options, ``--param``,
the input-space options, output checks and CSV writing."""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path

from ..core.errors import UserError

PROG = "napari-xai"


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``--param KEY=VALUE`` (repeatable) as a dict; a dash in a key becomes an underscore."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--param {item!r} must be KEY=VALUE, e.g. --param steps=64.")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise UserError(f"--param {item!r} has an empty key.")
        out[key] = value.strip()
    return out


def parse_point(text: str) -> tuple[int, int, int]:
    """The argparse type of ``--point I,J,K``."""
    try:
        vals = tuple(int(v) for v in text.replace(";", ",").split(",") if v.strip())
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"--point {text!r} must be three voxel indices I,J,K, e.g. 40,52,30")
    return vals  # type: ignore[return-value]


def csv_bytes(header: list[str], rows: list[list]) -> bytes:
    """A CSV file's bytes: ``header`` then ``rows``, newline-terminated, UTF-8."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue().encode("utf-8")


def fmt(v) -> str:
    """One CSV cell: floats with 8 significant digits, NaN and None empty."""
    if isinstance(v, float):
        return "" if v != v else f"{v:.8g}"
    return "" if v is None else str(v)

TRUST_HELP = ("allow full unpickling, bundle code and TorchScript: this RUNS CODE from the model files; "
              "use only for files you trust")


def add_model_options(p: argparse.ArgumentParser, device: bool = True,
                      sources: str = "demo | MONAI bundle folder | file.py:Class | TorchScript file") -> None:
    """``--model``, ``--weights``, ``--model-kwargs``, ``--trust-model`` (and ``--device``)."""
    p.add_argument("--model", required=True, metavar="SOURCE", help=sources)
    p.add_argument("--weights", help="state_dict checkpoint for a file.py:Class model")
    p.add_argument("--model-kwargs", metavar="JSON", help="constructor keyword arguments as JSON for file.py:Class")
    p.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    if device:
        p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def add_segmentation_options(g) -> None:
    """``--segmentation``, ``--mask``, ``--point``, ``--output-index`` (read by ``cli.lrp.explain_options``)."""
    g.add_argument("--segmentation", action="store_true", help="the model returns a logit map: explain the masked sum")
    g.add_argument("--mask", metavar="MASK.nii.gz", help="target mask on the input grid; implies --segmentation")
    g.add_argument("--point", type=parse_point, metavar="I,J,K", help="the predicted component at this voxel; implies --segmentation")
    g.add_argument("--output-index", type=int, default=0, metavar="N", help="output of a tuple-returning model (default 0)")


def load_model_from(args: argparse.Namespace):
    """The model the options above name."""
    from ..core.models import load_model

    return load_model(args.model, weights=args.weights, model_kwargs=args.model_kwargs,
                      device=getattr(args, "device", None), trust=args.trust_model)


def check_out_dir(path, names=(), overwrite: bool = False, option: str = "--out-dir", note: str = "",
                  sidecars: bool = False) -> Path:
    """An output folder: refuse a file in its place or in its path, a folder that takes no new files and, without
    ``--overwrite``, any of ``names`` already in it; never any input of the command (even with ``--overwrite``).

    ``names`` are file names or glob patterns (``"[0-9][0-9]_*.nii.gz"``); the first existing one is named,
    literal names in the given order, then each pattern's matches sorted. ``note`` ends the message. With
    ``sidecars``, each name's provenance sidecar is checked too.
    """
    from ..core.outputs import check_folder, input_named
    from ..core.provenance import sidecar_path

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"{option} {out} is a file; give a folder.")
    check_folder(out, option, create=True)
    if out.is_dir():
        for name in names:
            found = sorted(out.glob(name)) if any(c in name for c in "*?[") else [out / name] if os.path.lexists(out / name) else []
            if sidecars:
                found += [s for s in map(sidecar_path, found) if os.path.lexists(s)]
                lit = out / name
                if not any(c in name for c in "*?[") and os.path.lexists(sidecar_path(lit)):
                    found.append(sidecar_path(lit))
            for f in found:
                if input_named(f):
                    raise UserError(f"{f} is an input of this command; choose another {option} "
                                    "(--overwrite never replaces a file being read).")
            if found and not overwrite:
                raise UserError(f"{found[0]} exists; choose another {option} or pass --overwrite{note}.")
    return out


def check_out_file(path, overwrite: bool, suffix: str, option: str = "--out", sidecar: bool = True) -> Path:
    """An output file: ``suffix`` (".csv", ".json", or "nifti" for .nii/.nii.gz), not there yet unless
    ``overwrite`` (nor its provenance sidecar, with ``sidecar``), never an input, and its folder exists and takes
    new files."""
    from ..core.outputs import check_output
    from ..core.volumes import is_nifti_path

    out = Path(path)
    if suffix == "nifti":
        if not is_nifti_path(out):
            raise UserError(f"{option} {path} must end in .nii or .nii.gz.")
    elif out.suffix.lower() != suffix:
        raise UserError(f"{option} {path} must end in {suffix}.")
    return check_output(out, overwrite, option, sidecar=sidecar)


def add_grid_options(p: argparse.ArgumentParser, space: bool = True, normalization: bool = True,
                     whose: str = "the model's", when: str = "the model does not declare one") -> None:
    """``--normalization`` (overrides ``whose`` declared one), ``--input-shape`` (the model grid ``when``) and, with
    ``space``, the input-space options (:func:`add_input_space_options`)."""
    if normalization:
        p.add_argument("--normalization", choices=("none", "zscore", "minmax"),
                       help=f"override {whose} intensity normalisation")
    p.add_argument("--input-shape", metavar="D,H,W", help=f"model grid when {when}")
    if space:
        add_input_space_options(p)


def add_output_flags(p: argparse.ArgumentParser, overwrite: str, quiet: str | None = "no progress lines") -> None:
    """``--overwrite`` (its help: what it replaces) and, unless ``quiet`` is None, ``--quiet``."""
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    if quiet is not None:
        p.add_argument("--quiet", action="store_true", help=quiet)


def add_input_space_options(p: argparse.ArgumentParser) -> None:
    """``--model-orientation`` and ``--model-spacing`` (checked by :func:`input_space_kwargs` before any work)."""
    p.add_argument("--model-orientation", metavar="AXCODES",
                   help="voxel order the model was trained on, e.g. RAS or LAS: the input is reoriented to it (MONAI "
                        "Orientation) and the relevance back; 'stored' feeds it as stored (default: the model's "
                        "declaration, else as stored with a warning)")
    p.add_argument("--model-spacing", metavar="MM",
                   help="voxel size in mm the model was trained on, one number or three (e.g. 2 or 1,1,2.5): the input "
                        "is resampled to it (MONAI Spacing) and the relevance back; 'stored' keeps the input's own "
                        "(default: the model's declaration, else as stored)")


def input_space_kwargs(args: argparse.Namespace) -> dict:
    """``model_orientation`` / ``model_spacing`` for :func:`explain`, checked (UserError on a bad value)."""
    from ..core.input_space import AS_STORED, parse_orientation, parse_spacing

    out: dict = {}
    for key, parse in (("model_orientation", parse_orientation), ("model_spacing", parse_spacing)):
        value = getattr(args, key, None)
        if value is None:
            continue
        text = value.strip()
        try:
            out[key] = AS_STORED if text.lower() == AS_STORED else parse(text)
        except UserError as exc:
            raise UserError(f"--{key.replace('_', '-')}: {exc}") from None
    return out
