"""``napari-xai explain``: one model's decision on NIfTI volume(s), written as a relevance NIfTI and its
provenance sidecar (the LRP and segmentation options come from :mod:`napari_xai.cli.lrp`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import UserError
from .options import PROG


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("explain", help="explain a model's decision on NIfTI volume(s); writes NIfTI + JSON sidecar")
    p.add_argument("volume", nargs="+", metavar="VOLUME", help="NIfTI file(s); several become channels in this order")
    p.add_argument("--model", required=True, metavar="SOURCE", help="demo | MONAI bundle folder | file.py:Class | TorchScript file")
    p.add_argument("--weights", help="state_dict checkpoint for a file.py:Class model")
    p.add_argument("--model-kwargs", metavar="JSON", help="constructor keyword arguments as JSON for file.py:Class")
    p.add_argument("--method", default="integrated-gradients", help="attribution method (see 'napari-xai methods')")
    p.add_argument("--target", help="class index or name to explain (default: the predicted class)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="method parameter; repeatable")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--normalization", choices=("none", "zscore", "minmax"), help="override the model's intensity normalisation")
    p.add_argument("--input-shape", metavar="D,H,W", help="model grid when the model does not declare one (input is resampled to it)")
    from .options import add_input_space_options

    add_input_space_options(p)
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow full unpickling, bundle code and TorchScript: this RUNS CODE from the model files; use only for files you trust",
    )
    p.add_argument("--out", required=True, metavar="OUT.nii.gz", help="output relevance NIfTI (a .json sidecar goes beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress lines (they are shown only on a terminal anyway)")
    from .lrp import add_explain_options

    add_explain_options(p)
    p.set_defaults(func=cmd_explain)
    return p


def cmd_explain(args: argparse.Namespace) -> int:
    from .options import check_out_file, input_space_kwargs, parse_params

    # options first, before the heavy imports (torch): a typo fails in a fraction of a second
    out = check_out_file(args.out, args.overwrite, "nifti")
    params = parse_params(args.param)
    space = input_space_kwargs(args)

    from ..core.explain import explain
    from ..core.models import load_model
    from ..core.provenance import sidecar_path, write_sidecar
    from .lrp import explain_options, write_extras
    from ..core.volumes import load_nifti, save_nifti, stack_channels, written_or_removed

    from .lrp import check_extras

    check_extras(args, out)
    from ..core.methods.catalogue import get_method

    get_method(args.method)  # an unknown method fails before the model loads
    if getattr(args, "out_intermediate", False) and not get_method(args.method).has_intermediate:
        raise UserError(f"--out-intermediate needs a method with intermediate maps (lrp: segment boundaries; "
                        f"attention-gates: one map per gate), not {args.method!r}.")
    volume = stack_channels([load_nifti(p) for p in args.volume])
    model = load_model(args.model, weights=args.weights, model_kwargs=args.model_kwargs, device=args.device, trust=args.trust_model)
    extra_params, extra_kwargs = explain_options(args, volume)
    params.update(extra_params)
    last = [-1.0]

    def progress(frac: float, msg: str) -> None:
        if args.quiet or not sys.stderr.isatty():
            return
        if frac - last[0] >= 0.1 or (frac >= 1.0 > last[0]):
            last[0] = frac
            print(f"[{frac * 100:5.1f}%] {msg}", file=sys.stderr)

    rel = explain(volume, model, args.method, params=params, target=args.target, normalization=args.normalization,
                  input_shape=args.input_shape, progress=progress, **space, **extra_kwargs)
    data = rel.data[0] if rel.data.shape[0] == 1 else rel.data
    record = dict(rel.provenance)
    record["output"] = str(out)
    record["command"] = args.command_line
    if getattr(args, "mask", None) and "segmentation" in record:
        from ..core.provenance import file_hashes

        record["segmentation"] = {**record["segmentation"], "mask_file": str(Path(args.mask).resolve()),
                                  "mask_sha256": file_hashes([args.mask]).get(args.mask)}
    with written_or_removed(out, sidecar_path(out)):
        save_nifti(out, data, rel.affine, header=volume.header)
        write_sidecar(out, record)
        extras = write_extras(args, rel, header=volume.header, out=out)
    for w in rel.warnings:  # after the files are written: a refused export shows its one error line only
        print(f"{PROG}: warning: {w}", file=sys.stderr)
    probs = ", ".join(f"{k}={v:.3f}" for k, v in rel.probabilities.items())
    print(f"predicted: {rel.provenance['prediction']['name']} ({probs}); explained: {rel.target_name}")
    print(f"wrote {out} and {sidecar_path(out)}" + (f" (+ {len(extras) // 2} more maps)" if extras else ""))
    return 0
