"""Command line: ``napari-xai explain | methods | demo | clusters | regions | atlases | lrp-layers | compare | flip | cohort | cohort-merge | embed | sanity | reproduce | dissect | robustness``.

Exit codes: 0 success, 2 user error (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from pathlib import Path

from .core.errors import Cancelled, UserError

PROG = "napari-xai"


def _parse_params(items: list[str] | None) -> dict[str, str]:
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


def _check_out(path: str, overwrite: bool) -> Path:
    from ._cli_common import check_out_file

    return check_out_file(path, overwrite, "nifti")


def cmd_explain(args: argparse.Namespace) -> int:
    from ._cli_common import input_space_kwargs

    # options first, before the heavy imports (torch): a typo fails in a fraction of a second
    out = _check_out(args.out, args.overwrite)
    params = _parse_params(args.param)
    space = input_space_kwargs(args)

    from .core.explain import explain
    from .core.models import load_model
    from .core.provenance import sidecar_path, write_sidecar
    from ._cli_lrp import explain_options, write_extras
    from .core.volumes import load_nifti, save_nifti, stack_channels, written_or_removed

    from ._cli_lrp import check_extras

    check_extras(args, out)
    from .core.methods.catalogue import get_method

    get_method(args.method)  # an unknown method fails before the model loads
    if getattr(args, "out_intermediate", False) and get_method(args.method).name not in ("lrp", "attention-gates"):
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
        from .core.provenance import file_hashes

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


def cmd_methods(args: argparse.Namespace) -> int:
    from .core.methods.catalogue import all_methods

    for m in all_methods():
        flags = []
        if m.needs_module:
            flags.append("needs eager nn.Module")
        flags.append("signed" if m.signed else "non-negative")
        print(f"{m.name:24s} [{m.family}] {m.summary} ({'; '.join(flags)})")
        for p in m.params:
            tname = "int,int,int" if p.type == "ints3" else getattr(p.type, "__name__", str(p.type))
            extra = []
            if p.choices:
                extra.append("one of " + "|".join(map(str, p.choices)))
            if p.minimum is not None or p.maximum is not None:
                extra.append(f"range [{'' if p.minimum is None else f'{p.minimum:g}'}, {'' if p.maximum is None else f'{p.maximum:g}'}]")
            default = "auto" if p.default is None else p.default
            print(f"    {p.name}={default} ({tname}{'; ' + '; '.join(extra) if extra else ''}): {p.help}")
    return 0


def has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def cmd_demo(args: argparse.Namespace) -> int:
    from . import _demo_app

    if args.headless:
        return _demo_app.run_headless(Path(args.headless), method=args.method, overwrite=args.overwrite)
    if not has_display():
        # the README's first command must work on a server: do the headless run by itself
        out = Path(_demo_app.AUTO_OUTDIR)
        print(f"napari-xai: no display, so the demo runs headless: relevance, sidecars and a 3D screenshot go to "
              f"{out}/ (open them with 'napari {out}/demo_brain.nii.gz {out}/demo_relevance.nii.gz').", file=sys.stderr)
        return _demo_app.run_headless(out, method=args.method, overwrite=args.overwrite, auto=True)
    return _demo_app.run_gui(method=args.method)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Explain 3D medical-imaging models (napari-xai).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("explain", help="explain a model's decision on NIfTI volume(s); writes NIfTI + JSON sidecar")
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
    from ._cli_common import add_input_space_options

    add_input_space_options(p)
    p.add_argument(
        "--trust-model",
        action="store_true",
        help="allow full unpickling, bundle code and TorchScript: this RUNS CODE from the model files; use only for files you trust",
    )
    p.add_argument("--out", required=True, metavar="OUT.nii.gz", help="output relevance NIfTI (a .json sidecar goes beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress lines (they are shown only on a terminal anyway)")
    from ._cli_lrp import add_explain_options

    add_explain_options(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("methods", help="list attribution methods and their parameters")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="open napari with the demo brain, model and a 3D explanation "
                                     "(without a display: the --headless run into ./demo-out)")
    p.add_argument("--headless", metavar="OUTDIR", help="write relevance NIfTI, sidecar and a 3D screenshot to OUTDIR, no window")
    p.add_argument("--method", default="integrated-gradients", help="attribution method for the demo")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in OUTDIR")
    p.set_defaults(func=cmd_demo)

    from ._cli_clusters import add_subcommand as add_clusters
    from ._cli_cohort import add_subcommand as add_cohort
    from ._cli_compare import add_subcommand as add_compare
    from ._cli_embed import add_subcommand as add_embed
    from ._cli_flip import add_subcommand as add_flip
    from ._cli_lrp import add_subcommand as add_lrp_layers
    from ._cli_regions import add_subcommand as add_regions
    from ._cli_dissect import add_subcommand as add_dissect
    from ._cli_reproduce import add_subcommand as add_reproduce
    from ._cli_robustness import add_subcommand as add_robustness
    from ._cli_sanity import add_subcommand as add_sanity

    add_clusters(sub)
    add_regions(sub)
    add_lrp_layers(sub)
    add_compare(sub)
    add_flip(sub)
    add_cohort(sub)
    add_embed(sub)
    add_sanity(sub)
    add_reproduce(sub)
    add_dissect(sub)
    add_robustness(sub)
    return parser


#: options that name what a command writes (everything else naming an existing file is an input)
OUTPUT_OPTIONS = frozenset({"out", "out_dir", "out_table", "out_labels", "out_filtered", "out_segmentation",
                            "headless", "write_config"})


def _note_inputs(args: argparse.Namespace) -> None:
    """Register every existing file (or folder) the command line names, except outputs, as an input of this run:
    no output may replace one of them, even with --overwrite (checked by resolved path and inode)."""
    from .core.outputs import note_inputs
    from .core.provenance import find_sidecar

    paths = []
    for key, value in vars(args).items():
        if key in OUTPUT_OPTIONS or key in ("func", "command"):
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not isinstance(v, (str, os.PathLike)) or not str(v):
                continue
            v = str(v)
            for cand in (v, v.rsplit(":", 1)[0] if ":" in v else None):
                try:
                    if cand and os.path.exists(cand):
                        paths.append(cand)
                        if os.path.isfile(cand):
                            paths.append(find_sidecar(cand))
                except (OSError, ValueError):
                    pass
    note_inputs(paths)


def _check_finite(args: argparse.Namespace) -> None:
    """NaN and Inf are refused for every float option (a NaN slips past every range check)."""
    import math

    for key, value in vars(args).items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"--{key.replace('_', '-')} must be a finite number, got {v}.")


def _sigterm_as_interrupt() -> None:
    """SIGTERM unwinds like Ctrl-C, so a killed run removes its temporary files and leaves nothing."""
    import signal

    def _raise(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _raise)
    except (ValueError, OSError):  # not the main thread
        pass


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the command as given (to this call, not to the Python process), for every output's provenance record
    args.command_line = shlex.join([PROG, *(sys.argv[1:] if argv is None else [str(a) for a in argv])])
    _sigterm_as_interrupt()
    if not sys.warnoptions:
        # library chatter (Captum, torch) is not for CLI users; our own warnings are printed explicitly
        import warnings

        warnings.simplefilter("ignore")
    try:
        _check_finite(args)
        _note_inputs(args)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"{PROG}: cancelled", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`: not an error
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse exits before this try; here it can only be a model's code
        print(f"{PROG}: error: the model's code called sys.exit({exc.code!r}); a model must not end the program.",
              file=sys.stderr)
        return 2
    except Exception:  # internal error: show everything
        traceback.print_exc()
        print(f"{PROG}: internal error; please report it with the traceback above.", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
