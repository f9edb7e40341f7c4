"""CLI pieces for LRP configurations and segmentation targets.

* ``napari-xai lrp-layers VOLUME... --model SOURCE``: the model's layers in
  execution order (the names LRP configurations use), with type, output shape
  and how LRP treats them; ``--write-config C.json`` writes the composite
  default (LRP-γ low, LRP-ε middle, LRP-0 top) as a starting point.
* :func:`add_explain_options` / :func:`explain_options` / :func:`write_extras`:
  the ``explain`` options ``--config``, ``--configuration``, ``--segmentation``,
  ``--mask``, ``--point``, ``--output-index``, ``--out-segmentation`` and ``--out-intermediate`` for
  ``cli/explain.py`` to wire into ``explain`` (three calls).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import UserError
from .options import add_grid_options, add_model_options, add_output_flags, parse_point

HELP = "list a model's layers in execution order (names for LRP configurations); optionally write a starting configuration"


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    """Register ``lrp-layers`` on an argparse sub-parsers object."""
    p = subparsers.add_parser("lrp-layers", help=HELP, description=HELP + ".")
    p.add_argument("volume", nargs="+", metavar="VOLUME", help="NIfTI file(s) the model explains (several = channels)")
    add_model_options(p, device=False, sources="demo | MONAI bundle folder | file.py:Class")
    add_grid_options(p, space=False, normalization=False)
    p.add_argument("--write-config", metavar="CONFIG.json", help="write the composite default configuration here")
    add_output_flags(p, "replace --write-config if it exists", quiet=None)
    p.set_defaults(func=cmd_lrp_layers)
    return p


def cmd_lrp_layers(args: argparse.Namespace) -> int:
    import numpy as np

    from ..core.explain import forward, prepare_input, prepare_target
    from ..core.lrp import default_config, list_layers, save_configs
    from ..core.models import load_model
    from ..core.methods.registry import RunContext
    from ..core.segmentation import is_segmentation_output, pick_output
    from ..core.volumes import load_nifti, stack_channels

    if args.write_config:
        from .options import check_out_file

        check_out_file(args.write_config, args.overwrite, ".json", option="--write-config", sidecar=False)
    from ..core.models import is_torchscript_file

    if Path(args.model).is_file() and is_torchscript_file(args.model):  # said before loading it (TorchScript is code)
        raise UserError("LRP needs an eager nn.Module, but the model is TorchScript; load it as file.py:Class with --weights.")
    volume = stack_channels([load_nifti(p) for p in args.volume])
    model = load_model(args.model, weights=args.weights, model_kwargs=args.model_kwargs, device="cpu",
                       trust=args.trust_model)
    if model.is_scripted:
        raise UserError("LRP needs an eager nn.Module, but the model is TorchScript; load it as file.py:Class with --weights.")
    x, *_ = prepare_input(volume, model, input_shape=args.input_shape)
    seg = is_segmentation_output(pick_output(forward(model.module, x)))
    module = prepare_target(model, x, volume, 0 if seg else None, seg,
                            np.ones(volume.shape, bool) if seg else None, None, 0, 26, RunContext()).module
    layers = list_layers(module, x)
    width = max(len(l.name) for l in layers)
    print(f"{'#':>4}  {'layer':{width}}  {'type':18}  {'output':18}  LRP")
    for l in layers:
        shape = "x".join(map(str, l.output_shape[1:])) if l.output_shape else "-"
        calls = f" (runs {l.calls}x)" if l.calls > 1 else ""
        print(f"{l.index:>4}  {l.name:{width}}  {l.type:18}  {shape:18}  {l.kind}{calls}")
    if args.write_config:
        path = save_configs(args.write_config, [default_config(layers, "composite")])
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- options for 'explain'


def add_explain_options(parser: argparse.ArgumentParser) -> None:
    """Add the LRP-configuration and segmentation options to the ``explain`` sub-parser."""
    g = parser.add_argument_group("LRP configurations and segmentation models")
    g.add_argument("--config", metavar="CONFIG.json", help="LRP configuration for --method lrp (from the LRP designer)")
    g.add_argument("--configuration", metavar="NAME", help="configuration name inside a --config library file")
    g.add_argument("--segmentation", action="store_true",
                   help="the model returns a logit map (N,C,D,H,W): explain the sum of the target class's logits "
                        "inside a mask (default: its predicted region)")
    g.add_argument("--mask", metavar="MASK.nii.gz", help="mask on the input grid (non-zero = inside); implies --segmentation")
    g.add_argument("--point", type=parse_point, metavar="I,J,K",
                   help="explain the connected predicted component at this voxel; implies --segmentation")
    g.add_argument("--output-index", type=int, default=0, metavar="N",
                   help="which output of a model returning a tuple (deep supervision) to explain (default 0)")
    g.add_argument("--out-segmentation", metavar="SEG.nii.gz", help="also write the predicted segmentation (uint16)")
    g.add_argument("--out-intermediate", action="store_true",
                   help="also write each intermediate map (LRP segment boundaries, attention gates) beside --out "
                        "as OUT.at-<point>.nii.gz with a sidecar")


def explain_options(args: argparse.Namespace, volume) -> tuple[dict, dict]:
    """(extra method params, extra :func:`explain` keyword arguments) from the options above."""
    from ..core.volumes import load_nifti

    params: dict = {}
    if getattr(args, "config", None):
        if args.method != "lrp":
            raise UserError(f"--config is for --method lrp, not {args.method!r}.")
        params["config"] = args.config
        if args.configuration:
            params["configuration"] = args.configuration
    kwargs: dict = {"output_index": int(getattr(args, "output_index", 0) or 0)}
    if getattr(args, "mask", None):
        m = load_nifti(args.mask)
        if m.channels != 1:
            raise UserError(f"--mask {args.mask} has {m.channels} channels; give one 3D mask.")
        kwargs["mask"] = m.data[0]
    if getattr(args, "point", None):
        kwargs["point"] = tuple(args.point)
    if getattr(args, "segmentation", False) or "mask" in kwargs or "point" in kwargs:
        kwargs["segmentation"] = True
    return params, kwargs


def intermediate_paths(out: Path, rel) -> dict[str, Path]:
    """``OUT.at-<point>.nii.gz`` beside ``out`` for each intermediate map of ``rel``."""
    from ..core.compare import slug

    stem = out.name[: -len(".nii.gz")] if out.name.lower().endswith(".nii.gz") else out.with_suffix("").name
    return {key: out.with_name(f"{stem}.at-{slug(key)}.nii.gz") for key in (rel.intermediate or {})}


def check_extras(args: argparse.Namespace, out: Path) -> None:
    """Before any work: ``--out-segmentation`` and the ``--out-intermediate`` maps (and their sidecars) are new
    files unless ``--overwrite``, never an input, and distinct from ``--out``."""
    from .options import check_out_dir, check_out_file
    from ..core.outputs import check_distinct
    from ..core.provenance import sidecar_path

    overwrite = getattr(args, "overwrite", False)
    seg_out = getattr(args, "out_segmentation", None)
    if seg_out:
        seg = check_out_file(seg_out, overwrite, "nifti", option="--out-segmentation")
        check_distinct([out, sidecar_path(out), seg, sidecar_path(seg)],
                       "--out-segmentation and --out name the same file; give each its own name.")
    if getattr(args, "out_intermediate", False):
        stem = out.name[: -len(".nii.gz")] if out.name.lower().endswith(".nii.gz") else out.with_suffix("").name
        check_out_dir(out.parent, [f"{stem}.at-*.nii.gz"], overwrite, option="--out", sidecars=True)


def write_extras(args: argparse.Namespace, rel, header=None, out: Path | None = None) -> list[Path]:
    """Write ``--out-segmentation`` and ``--out-intermediate`` (each with a sidecar) if asked; returns the written
    paths. Nothing is left behind when one of them fails."""
    import numpy as np

    from ..core.provenance import sidecar_path, write_sidecar
    from ..core.volumes import save_nifti, written_or_removed

    jobs: list[tuple[Path, np.ndarray, dict]] = []
    seg_out = getattr(args, "out_segmentation", None)
    if seg_out:
        if rel.segmentation is None:
            raise UserError("--out-segmentation needs a segmentation model (and --segmentation, --mask or --point).")
        path = Path(seg_out)
        if path.exists() and not getattr(args, "overwrite", False):
            raise UserError(f"{path} exists; choose another --out-segmentation or pass --overwrite.")
        jobs.append((path, np.asarray(rel.segmentation, dtype=np.uint16), {"kind": "segmentation"}))
    if getattr(args, "out_intermediate", False) and out is not None:
        paths = intermediate_paths(Path(out), rel)
        if not paths:
            raise UserError(f"method '{rel.method}' gave no intermediate maps; --out-intermediate applies to "
                            "--method lrp (segment boundaries) and attention-gates with two or more gates.")
        taken = [p for p in paths.values() if p.exists()]
        if taken and not getattr(args, "overwrite", False):
            raise UserError(f"{taken[0]} exists; choose another --out or pass --overwrite.")
        jobs += [(p, np.asarray(rel.intermediate[k], np.float32), {"kind": "intermediate", "point": k})
                 for k, p in paths.items()]
    with written_or_removed() as written:
        for path, data, extra in jobs:
            save_nifti(path, data, rel.affine, header=header)
            written.append(path)
            write_sidecar(path, {**rel.provenance, **extra, "output": str(path)})
            written.append(sidecar_path(path))
    return written


if __name__ == "__main__":  # pragma: no cover
    ap = argparse.ArgumentParser(prog="napari-xai")
    add_subcommand(ap.add_subparsers(dest="command", required=True))
    a = ap.parse_args()
    sys.exit(a.func(a))
