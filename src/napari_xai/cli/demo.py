"""``napari-xai demo``: the demo brain, model and a 3D explanation in napari, or headless without a display
(the application itself is :mod:`napari_xai._demo_app`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="open napari with the demo brain, model and a 3D explanation "
                                            "(without a display: the --headless run into ./demo-out)")
    p.add_argument("--headless", metavar="OUTDIR", help="write relevance NIfTI, sidecar and a 3D screenshot to OUTDIR, no window")
    p.add_argument("--method", default="integrated-gradients", help="attribution method for the demo")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in OUTDIR")
    p.set_defaults(func=cmd_demo)
    return p


def has_display() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def cmd_demo(args: argparse.Namespace) -> int:
    from .. import _demo_app

    if args.headless:
        return _demo_app.run_headless(Path(args.headless), method=args.method, overwrite=args.overwrite)
    if not has_display():
        # the README's first command must work on a server: do the headless run by itself
        out = Path(_demo_app.AUTO_OUTDIR)
        print(f"napari-xai: no display, so the demo runs headless: relevance, sidecars and a 3D screenshot go to "
              f"{out}/ (open them with 'napari {out}/demo_brain.nii.gz {out}/demo_relevance.nii.gz').", file=sys.stderr)
        return _demo_app.run_headless(out, method=args.method, overwrite=args.overwrite, auto=True)
    return _demo_app.run_gui(method=args.method)
