"""``napari-xai methods``: the attribution methods and their parameters, from the registry."""

from __future__ import annotations

import argparse


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("methods", help="list attribution methods and their parameters")
    p.set_defaults(func=cmd_methods)
    return p


def cmd_methods(args: argparse.Namespace) -> int:
    from ..core.methods.catalogue import all_methods

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
