"""Command line: ``napari-xai explain | methods | demo | clusters | regions | atlases | lrp-layers | compare | flip | cohort | cohort-merge | embed | sanity | reproduce | dissect | robustness``.

The parser and :func:`main`; each command lives in its own module of this package (``explain.py``, ``cohort.py``
...), the options they share in ``options.py``. Nothing imports back into this module.

Exit codes: 0 success, 2 user error (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback

from ..core.errors import Cancelled, UserError
from .options import PROG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Explain 3D medical-imaging models (napari-xai).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from .clusters import add_subcommand as add_clusters
    from .cohort import add_subcommand as add_cohort
    from .compare import add_subcommand as add_compare
    from .concepts import add_subcommand as add_concepts
    from .demo import add_subcommand as add_demo
    from .dissect import add_subcommand as add_dissect
    from .embed import add_subcommand as add_embed
    from .explain import add_subcommand as add_explain
    from .flip import add_subcommand as add_flip
    from .lrp import add_subcommand as add_lrp_layers
    from .methods import add_subcommand as add_methods
    from .regions import add_subcommand as add_regions
    from .reproduce import add_subcommand as add_reproduce
    from .robustness import add_subcommand as add_robustness
    from .sanity import add_subcommand as add_sanity

    add_explain(sub)
    add_methods(sub)
    add_demo(sub)
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
    add_concepts(sub)
    return parser


#: options that name what a command writes (everything else naming an existing file is an input)
OUTPUT_OPTIONS = frozenset({"out", "out_dir", "out_table", "out_labels", "out_filtered", "out_segmentation",
                            "headless", "write_config"})


def _note_inputs(args: argparse.Namespace) -> None:
    """Register every existing file (or folder) the command line names, except outputs, as an input of this run:
    no output may replace one of them, even with --overwrite (checked by resolved path and inode)."""
    from ..core.outputs import note_inputs
    from ..core.provenance import find_sidecar

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
