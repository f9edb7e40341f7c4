"""``napari-xai robustness``: max-sensitivity and infidelity of attribution methods, headless.

For every ``--method`` the input is explained once; then the map is computed
again for ``--samples`` random perturbations of the input (uniform, L∞ radius
``--radius`` × the intensity range) and compared with the original
(max-sensitivity, mean sensitivity, rank stability), and its infidelity is
measured over ``--infidelity-samples`` perturbations (Gaussian noise of std
``--noise`` × the intensity range, or cubes set to a baseline), scored in
batched forward passes (:mod:`napari_xai.core.evaluation.robustness`, after Yeh et al.
2019). Every method explains the same class. ``--out results.json`` records
the values, the per-sample numbers, the settings, the seed, the model hash and
the command.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .options import (add_grid_options, add_model_options, add_output_flags, add_segmentation_options, check_out_file,
                          input_space_kwargs, load_model_from)
from ..core.errors import UserError

HELP = "measure how stable (max-sensitivity) and faithful (infidelity) attribution maps are"
DEFAULT_METHODS = ("saliency", "integrated-gradients")


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    from ..core.evaluation.flipping import BASELINES
    from ..core.evaluation.robustness import CUBE, INFIDELITY_KINDS, NOISE, RADIUS

    p = subparsers.add_parser("robustness", help=HELP, description=HELP + " (Yeh et al. 2019).")
    p.add_argument("volume", nargs="+", metavar="VOLUME", help="NIfTI file(s); several become channels in this order")
    add_model_options(p)
    p.add_argument("--method", action="append", metavar="NAME",
                   help=f"attribution method (see 'napari-xai methods'); repeatable (default: {', '.join(DEFAULT_METHODS)})")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="method parameter, given to every --method that has it; repeatable")
    p.add_argument("--target", help="class index or name, the same for every method (default: the predicted class)")
    p.add_argument("--samples", type=int, default=10, metavar="N",
                   help="perturbed inputs for the sensitivity, one explanation each (default 10)")
    p.add_argument("--radius", type=float, default=RADIUS, metavar="R",
                   help=f"L-infinity radius of the sensitivity perturbations, relative to the intensity range (default {RADIUS})")
    p.add_argument("--infidelity", choices=INFIDELITY_KINDS, default="gaussian",
                   help="infidelity perturbations: gaussian noise (default) or square (a cube set to --baseline)")
    p.add_argument("--noise", type=float, default=NOISE, metavar="S",
                   help=f"std of the gaussian perturbations, relative to the intensity range (default {NOISE})")
    p.add_argument("--cube", type=int, default=CUBE, metavar="VOXELS", help=f"edge of the removed cube (default {CUBE})")
    p.add_argument("--baseline", choices=BASELINES, default="zero", help="what a removed cube becomes (default zero)")
    p.add_argument("--infidelity-samples", type=int, default=64, metavar="N",
                   help="perturbations for the infidelity, forward passes only (default 64)")
    p.add_argument("--multiply-by-inputs", choices=("auto", "yes", "no"), default="auto",
                   help="square removal: compare contribution maps (IG, LRP, input x gradient, occlusion, ...) with the "
                        "perturbation divided by x - baseline, i.e. the relevance summed in the cube; auto (default) "
                        "does so for contribution maps only, yes for every method")
    p.add_argument("--no-normalize", action="store_true",
                   help="report the infidelity of the map as it is, not scaled by the best-fitting beta")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbations (and of stochastic methods)")
    add_grid_options(p)
    g = p.add_argument_group("segmentation models (as in 'explain')")
    add_segmentation_options(g)
    p.add_argument("--out", metavar="results.json", help="write the results, settings and provenance as JSON")
    add_output_flags(p, "replace --out if it exists")
    p.set_defaults(func=cmd_robustness)
    return p


def _check_args(args: argparse.Namespace) -> tuple[list[str], Path | None]:
    """Fail on bad options before any work; the method names and the output path."""
    from ..core.methods.catalogue import get_method

    methods = list(dict.fromkeys(get_method(m).name for m in (args.method or DEFAULT_METHODS)))
    if args.samples < 1:
        raise UserError(f"--samples must be at least 1, got {args.samples}.")
    if args.infidelity_samples < 1:
        raise UserError(f"--infidelity-samples must be at least 1, got {args.infidelity_samples}.")
    if not (math.isfinite(args.radius) and args.radius >= 0):
        raise UserError(f"--radius must be a non-negative number, got {args.radius}.")
    if not (math.isfinite(args.noise) and args.noise > 0):
        raise UserError(f"--noise must be a positive number, got {args.noise}.")
    if args.cube < 1:
        raise UserError(f"--cube must be at least 1 voxel, got {args.cube}.")
    if args.seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {args.seed}.")
    if args.multiply_by_inputs == "yes" and args.infidelity != "square":
        raise UserError("--multiply-by-inputs yes needs --infidelity square (gaussian noise divided by near-zero "
                        "intensities is meaningless).")
    if not args.out:
        return methods, None
    return methods, check_out_file(args.out, args.overwrite, ".json", sidecar=False)


def method_params(methods: list[str], raw: dict[str, str]) -> dict[str, dict]:
    """Each method's share of the ``--param`` values (the ones it has); a key no method has is an error."""
    from ..core.methods.catalogue import get_method

    out: dict[str, dict] = {}
    used: set[str] = set()
    for name in methods:
        known = {p.name for p in get_method(name).params}
        out[name] = {k: v for k, v in raw.items() if k in known}
        used |= set(out[name])
        get_method(name).parse(out[name])  # a bad value fails before any work
    unknown = sorted(set(raw) - used)
    if unknown:
        raise UserError(f"--param {', '.join(unknown)}: none of the methods ({', '.join(methods)}) has this parameter.")
    return out


def cmd_robustness(args: argparse.Namespace) -> int:
    from .lrp import explain_options
    from .options import parse_params
    from ..core.provenance import file_hashes, now_iso, package_versions, to_json
    from ..core.evaluation.robustness import REFERENCE, evaluate
    from ..core.volumes import atomic_write_bytes, load_nifti, stack_channels

    methods, out = _check_args(args)
    space = input_space_kwargs(args)
    params = method_params(methods, parse_params(args.param))
    volume = stack_channels([load_nifti(p) for p in args.volume])
    _, kwargs = explain_options(args, volume)
    kwargs.update(normalization=args.normalization, input_shape=args.input_shape, **space)
    model = load_model_from(args)
    last = [""]

    def reporter(label: str):
        def progress(frac: float, msg: str) -> None:
            # one line per stage (original, perturbation k/N, infidelity) of each method
            stage = f"{label}: " + ": ".join(msg.split(": ")[:2])
            if args.quiet or not sys.stderr.isatty() or stage == last[0]:
                return
            last[0] = stage
            print(f"[{frac * 100:5.1f}%] {stage}", file=sys.stderr)
        return progress

    target = args.target
    scorer = None
    results, rows = [], []
    t_all = time.perf_counter()
    for name in methods:
        t0 = time.perf_counter()
        res = evaluate(volume, model, name, params[name], target, radius=args.radius, samples=args.samples,
                       kind=args.infidelity, noise=args.noise, cube=args.cube, baseline=args.baseline,
                       infidelity_samples=args.infidelity_samples, normalize=not args.no_normalize,
                       multiply_by_inputs={"yes": True, "no": False}.get(args.multiply_by_inputs, "auto"), seed=args.seed,
                       scorer=scorer, progress=reporter(name), **kwargs)
        seconds = time.perf_counter() - t0
        rel, sens, infd, scorer = res["relevance"], res["sensitivity"], res["infidelity"], res["scorer"]
        target = rel.target  # every later method explains the same class
        for w in rel.warnings + sens.notes + infd.notes:
            print(f"napari-xai: warning: {name}: {w}", file=sys.stderr)
        results.append({"method": name, "params": rel.provenance["params"], "seconds": round(seconds, 2),
                        "sensitivity": sens.record(), "infidelity": infd.record()})
        rows.append((name, sens, infd, seconds))
    first = rel.provenance  # the last method's record: model, target and prediction are the same for all
    if out is not None:
        record = {
            "kind": "robustness",
            "created": now_iso(),
            "reference": REFERENCE,
            "command": getattr(args, "command_line", "napari-xai robustness"),
            "volumes": [str(p) for p in args.volume],
            "input": {"sha256": file_hashes([str(p) for p in args.volume]), "shape": list(volume.shape),
                      "channels": volume.channels},
            "model": {k: first["model"][k] for k in ("name", "source", "kind", "sha256", "input_shape", "normalization")},
            "methods": methods,
            "params": {r["method"]: r["params"] for r in results},
            "target": first["target"],
            "prediction": first["prediction"],
            "seed": args.seed,
            "settings": {"samples": args.samples, "radius": args.radius, "radius_relative_to": "intensity range per channel",
                         "infidelity": args.infidelity,
                         **({"noise": args.noise} if args.infidelity == "gaussian" else
                            {"cube": args.cube, "baseline": args.baseline}),
                         "infidelity_samples": args.infidelity_samples, "normalize": not args.no_normalize,
                         "multiply_by_inputs": args.multiply_by_inputs},
            "results": results,
            "seconds": round(time.perf_counter() - t_all, 2),
            "versions": package_versions(),
        }
        atomic_write_bytes(out, (to_json(record) + "\n").encode("utf-8"))
    print_table(rows, first, args)
    if out is not None:
        print(f"wrote {out}")
    return 0


def _f(v: float, width: int, spec: str = ".4g") -> str:
    return f"{v:{width}{spec}}" if math.isfinite(v) else f"{'n/a':>{width}}"


def print_table(rows, prov: dict, args: argparse.Namespace) -> None:
    """One row per method; ``*`` marks contribution maps scored with I / (x − baseline)."""
    target = (prov.get("target") or {}).get("name", "")
    infd = "infidelity" + ("" if args.no_normalize else " (β-scaled)")
    how = (f"noise {args.noise:g} × intensity range" if args.infidelity == "gaussian"
           else f"cubes of {args.cube} voxels set to {args.baseline}")
    print(f"target '{target}' ({prov['model'].get('name', 'model')}); sensitivity: {args.samples} perturbations, "
          f"radius {args.radius:g} × intensity range; infidelity: {args.infidelity_samples} {args.infidelity} "
          f"perturbations ({how}); seed {args.seed}")
    names = [name + ("*" if inf.multiply_by_inputs else "") for name, _, inf, _ in rows]
    width = max([len("method")] + [len(n) for n in names])
    wi = max(12, len(infd))
    print(f"{'method':{width}}  {'max-sens':>9}  {'mean-sens':>9}  {'rank-stab':>9}  {infd:>{wi}}  "
          f"{'β':>9}  {'unexpl.':>7}  {'seconds':>7}")
    for name, (_, sens, inf, seconds) in zip(names, rows):
        print(f"{name:{width}}  {_f(sens.max, 9)}  {_f(sens.mean, 9)}  {_f(sens.rank_stability, 9, '.3f')}  "
              f"{_f(inf.value, wi)}  {_f(inf.beta, 9)}  {_f(inf.unexplained, 7, '.3f')}  {seconds:7.1f}")
    if any(n.endswith("*") for n in names):
        print("* contribution map: I·Φ is the relevance summed in the removed cube (perturbation / (x − baseline))")
