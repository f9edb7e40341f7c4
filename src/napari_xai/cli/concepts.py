"""``napari-xai concepts``: the concepts (channels) of a layer that carry a decision, by Concept Relevance Propagation.

Two modes:

* ``napari-xai concepts VOLUME [VOLUME ...] --model M [--layer L] [--top K] [--method lrp-…] --out-dir DIR``:
  the top K channels of the layer for the target, each with its conditional heatmap. Writes
  ``concepts.csv`` (rank, channel, relevance, share of the layer's relevance, the atlas regions holding most of
  the concept's positive relevance, with ``--truth`` its share inside a mask), ``concept_NN_channel_C.nii.gz``
  per concept, ``unconditioned.nii.gz`` (the plain LRP map of the same pass), each with its sidecar.
* ``napari-xai concepts SUBJECTS.csv --model M --layer L --refs N [--channels C,…] --out-dir DIR``: relevance
  maximisation. Every subject is explained with ``crp`` on each channel through the cohort executor (serial,
  ``--workers N`` or Dask ``--scheduler``; resumable), and the N subjects with the largest relevance of the
  channel give reference cubes of ``--crop-mm`` around the peak: ``channel_C/refs/NN_<id>.nii.gz`` (the scan),
  ``NN_<id>_relevance.nii.gz`` (the conditional map), sidecars and ``montage.png``; ``references.csv`` lists
  them all.

Every option is checked before any work; nothing is overwritten without ``--overwrite``; all files of a run are
written as one transaction.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import add_input_space_options, add_model_options, check_out_dir, load_model_from
from ..core.errors import UserError

HELP = "the channels of a layer that carry the decision (Concept Relevance Propagation), named by atlas regions"
DEFAULT_ATLAS = "aal"


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("concepts", help=HELP, description=HELP + ".")
    p.add_argument("inputs", nargs="+", metavar="VOLUME|SUBJECTS.csv",
                   help="NIfTI file(s) of one subject (several become channels), or a cohort CSV (id, path) with --refs")
    add_model_options(p)
    p.add_argument("--layer", help="module name whose channels are the concepts (default: the last Conv layer with a "
                                   "3D output; see 'napari-xai lrp-layers')")
    p.add_argument("--top", type=int, default=8, metavar="K", help="number of concepts: the K most relevant channels (default 8)")
    p.add_argument("--channels", metavar="C,…", help="these channels instead of the top K (e.g. 3,5,12 or 4-7 or all)")
    p.add_argument("--method", default="lrp-epsilon-plus",
                   help="LRP rules: a composite (lrp-epsilon-plus, lrp-gamma, …), a Table 1 rule (lrp-z-plus, …) or "
                        "lrp with --config (default lrp-epsilon-plus)")
    p.add_argument("--config", metavar="CONFIG.json", help="LRP designer configuration for --method lrp")
    p.add_argument("--configuration", metavar="NAME", help="the configuration's name inside a --config library file")
    p.add_argument("--target", help="class index or name (default: the predicted class)")
    p.add_argument("--normalization", choices=("none", "zscore", "minmax"), help="override the model's intensity normalisation")
    p.add_argument("--input-shape", metavar="D,H,W", help="model grid when the model does not declare one")
    add_input_space_options(p)
    p.add_argument("--atlas", default=DEFAULT_ATLAS, metavar="NAME_OR_PATH",
                   help=f"name concepts by this atlas's regions (default {DEFAULT_ATLAS}; 'none' to skip; see "
                        "'napari-xai atlases'); the input must be in the atlas's (MNI) space")
    p.add_argument("--labels", metavar="FILE", help="labels file of a user --atlas")
    p.add_argument("--atlas-threshold", type=float, default=25.0, metavar="PERCENT",
                   help="probabilistic atlases: minimum probability of a region (default 25)")
    p.add_argument("--truth", metavar="MASK.nii.gz",
                   help="a mask on the input grid (e.g. a lesion): adds each concept's share of positive relevance inside it")
    p.add_argument("--batch", type=int, default=8, metavar="N",
                   help="concept maps propagated together (default 8; more is faster and takes more memory)")
    g = p.add_argument_group("relevance maximisation (a cohort CSV)")
    g.add_argument("--refs", type=int, metavar="N", help="write the N subjects with the largest relevance of each channel")
    g.add_argument("--crop-mm", type=float, default=40.0, metavar="MM", help="side of the reference cubes in mm (default 40)")
    g.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes (default 1: in this process)")
    g.add_argument("--scheduler", metavar="ADDRESS|local:N",
                   help="run the subjects on Dask (tcp://host:8786, or local:N); needs napari-xai[dask]")
    g.add_argument("--memory-limit", metavar="SIZE", help="Dask memory limit per worker of --scheduler local:N")
    g.add_argument("--retries", type=int, default=1, metavar="N", help="Dask: retries of a task whose worker dies (default 1)")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_concepts, num_parts=None, part_id=None, png=False)
    return p


def _is_csv(inputs: list[str]) -> bool:
    return len(inputs) == 1 and inputs[0].lower().endswith(".csv")


def _check_common(args) -> dict:
    """Options shared by both modes, checked before any work; the crp parameters."""
    from .options import input_space_kwargs
    from ..core.methods.crp import CRP_RULES

    method = args.method.strip().lower()
    if method not in CRP_RULES:
        raise UserError(f"--method {args.method!r} is not LRP; CRP conditions LRP: use one of {', '.join(CRP_RULES)}.")
    if args.config and method != "lrp":
        raise UserError("--config is an LRP designer configuration: use it with --method lrp.")
    if args.configuration and not args.config:
        raise UserError("--configuration names a configuration inside a --config library file; give --config too.")
    if args.config:
        from ..core.lrp import load_config

        load_config(args.config, args.configuration or None)  # a bad file fails now, not after the model loads
    from ..core.methods.catalogue import get_method

    crp = get_method("crp")
    for option, name, value in (("--top", "top", args.top), ("--batch", "batch", args.batch)):
        low, high = crp.param(name).minimum, crp.param(name).maximum
        if not low <= value <= high:
            raise UserError(f"{option} must be {low:g} to {high:g}, got {value}.")
    if not 0.0 <= args.atlas_threshold <= 100.0:
        raise UserError(f"--atlas-threshold is a probability in percent (0-100), got {args.atlas_threshold:g}.")
    if args.input_shape:
        from ..core.explain import parse_shape

        parse_shape(args.input_shape)
    if args.channels:
        from ..core.lrp.conditional import parse_channels

        if args.channels.strip().lower() != "all":  # the syntax now; the range once the model is loaded
            parse_channels(args.channels, 1 << 30, args.layer or "the layer")
    return {"space": input_space_kwargs(args), "method": method}


def _atlas(args):
    if not args.atlas or args.atlas.strip().lower() == "none":
        return None
    from ..core.atlas import load_atlas

    return load_atlas(args.atlas, labels=args.labels)


def cmd_concepts(args: argparse.Namespace) -> int:
    if _is_csv(args.inputs):
        return _cmd_refs(args)
    if args.refs is not None:
        raise UserError("--refs finds reference subjects in a cohort: give a cohort CSV (id, path) instead of volumes.")
    return _cmd_volume(args)


# ------------------------------------------------------------------ one subject: the top concepts


def _cmd_volume(args) -> int:
    import numpy as np

    from .options import csv_bytes, fmt
    from ..core.concepts import mask_share, top_concepts
    from ..core.provenance import package_versions, write_sidecar
    from ..core.volumes import atomic_write_bytes, load_nifti, save_nifti, stack_channels, written_or_removed

    common = _check_common(args)
    for p in args.inputs:
        if not Path(p).exists():
            raise UserError(f"file not found: {p}")
    names = ["concepts.csv", "concept_[0-9][0-9]_channel_*.nii.gz", "unconditioned.nii.gz"]
    out = check_out_dir(args.out_dir, names, args.overwrite, sidecars=True)
    volume = stack_channels([load_nifti(p) for p in args.inputs])
    truth = None
    if args.truth:
        t = load_nifti(args.truth)
        if t.shape != volume.shape or not np.allclose(t.affine, volume.affine, atol=1e-3):
            raise UserError(f"--truth {args.truth} is not on the input's grid (shape {t.shape} vs {volume.shape}, or "
                            "another affine); resample it onto the input first.")
        truth = t.data[0] > 0
    atlas = _atlas(args)
    model = load_model_from(args)

    def progress(frac: float, msg: str) -> None:
        if not args.quiet and sys.stderr.isatty():
            print(f"[{frac * 100:5.1f}%] {msg}", file=sys.stderr)

    t0 = time.perf_counter()
    res = top_concepts(model, volume, layer=args.layer, target=args.target, k=args.top, method=common["method"],
                       config=args.config, configuration=args.configuration, channels=args.channels,
                       batch=args.batch, atlas=atlas, atlas_threshold=args.atlas_threshold / 100.0,
                       progress=progress, normalization=args.normalization, input_shape=args.input_shape,
                       **common["space"])
    seconds = time.perf_counter() - t0
    header = ["rank", "channel", "relevance", "share", "map_sum", "region", "region_share", "region_2",
              "region_2_share", "region_3", "region_3_share", "map"]
    if truth is not None:
        header.insert(5, "truth_share")
    rows, files = [], []
    for c in res.concepts:
        name = f"concept_{c.rank + 1:02d}_channel_{c.channel}.nii.gz"
        regions = list(c.regions) + [("", float("nan"))] * (3 - len(c.regions))
        row = [c.rank + 1, c.channel, fmt(c.relevance), fmt(c.share), fmt(c.map_sum)]
        if truth is not None:
            row.append(fmt(mask_share(c.map, truth)))
        for region, share in regions[:3]:
            row += [region, fmt(share)]
        row.append(name)
        rows.append(row)
        files.append((name, c))
    base = {**res.provenance, "command": getattr(args, "command_line", "napari-xai concepts"),
            "concepts": {"layer": res.layer, "method": res.method, "target": res.target_name,
                         "layer_relevance": res.layer_relevance, "channels": [c.channel for c in res.concepts],
                         "atlas": res.atlas or None}}
    csv_path = out / "concepts.csv"
    unc_path = out / "unconditioned.nii.gz"
    # each map's record says how to make that map again (napari-xai reproduce): crp on its one channel, and the
    # plain LRP method for the unconditioned map
    run_params = dict(res.provenance.get("params") or {})
    one = {"each": False, "unconditioned": False, "top": 1, "layer": res.layer}
    with written_or_removed():
        for name, c in files:
            path = out / name
            save_nifti(path, c.map, res.affine, header=volume.header)
            write_sidecar(path, {**base, "kind": "relevance", "output": str(path),
                                 "params": {**run_params, **one, "channels": [c.channel]},
                                 "relevance": {"sum": c.map_sum, "max_abs": float(np.abs(c.map).max())},
                                 "concept": {"channel": c.channel, "rank": c.rank + 1, "relevance": c.relevance,
                                             "share": c.share, "regions": [list(r) for r in c.regions]}})
        if res.unconditioned is not None:
            save_nifti(unc_path, res.unconditioned, res.affine, header=volume.header)
            plain = {k: run_params.get(k) for k in ("epsilon", "gamma", "config", "configuration")}
            if res.method == "lrp-gamma-rule":  # the Table 1 gamma rule calls crp's gamma 'gamma1p'
                plain["gamma1p"] = plain.pop("gamma")
            write_sidecar(unc_path, {**base, "kind": "relevance", "output": str(unc_path), "method": res.method,
                                     "params": {k: v for k, v in plain.items() if v is not None},
                                     "relevance": {"sum": float(res.unconditioned.sum()),
                                                   "max_abs": float(np.abs(res.unconditioned).max())},
                                     "note": "the plain LRP map of the same pass (all channels, and any relevance "
                                             "that bypasses the layer)"})
        atomic_write_bytes(csv_path, csv_bytes(header, rows))
        write_sidecar(csv_path, {**base, "kind": "concepts", "output": str(csv_path),
                                 "channel_relevance": [float(v) for v in res.channel_relevance],
                                 "seconds": round(seconds, 3), "versions": package_versions()})
    print(f"{res.layer}: {len(res.channel_relevance)} channels, layer relevance {res.layer_relevance:.4g} for "
          f"'{res.target_name}' ({res.method}); top {len(res.concepts)}:")
    for c in res.concepts:
        extra = f", {100 * mask_share(c.map, truth):.0f} % in --truth" if truth is not None else ""
        print(f"  #{c.rank + 1} {c.label} (share {100 * c.share:.1f} %{extra})")
    for w in res.warnings:
        print(f"napari-xai: warning: {w}", file=sys.stderr)
    print(f"wrote {csv_path}, {len(files)} concept maps and {unc_path.name} (each with its .xai.json sidecar)"
          f" in {out}")
    return 0


# ------------------------------------------------------------------ a cohort: relevance maximisation


def _cmd_refs(args) -> int:
    from .cohort import Progress, check_executor_options, run_rows
    from .options import csv_bytes, fmt
    from ..core.cohort import read_subjects
    from ..core.cohort_run import RunConfig
    from ..core.concept_refs import crp_run_config, rank_references, write_references
    from ..core.provenance import package_versions, to_json, write_sidecar
    from ..core.volumes import atomic_write_bytes, written_or_removed

    common = _check_common(args)
    if args.refs is None:
        raise UserError("a cohort CSV is for relevance maximisation: give --refs N (the reference subjects per channel).")
    if args.refs < 1:
        raise UserError(f"--refs must be at least 1, got {args.refs}.")
    if not args.crop_mm > 0:
        raise UserError(f"--crop-mm must be > 0, got {args.crop_mm:g}.")
    if args.truth:
        raise UserError("--truth applies to one volume; a cohort CSV gives masks in its 'truth' column.")
    if common["space"]:
        raise UserError("--model-orientation/--model-spacing are not passed to cohort runs yet; declare them in the "
                        "model's metadata.")
    check_executor_options(args)
    subjects = read_subjects(args.inputs[0])
    if not subjects:
        raise UserError(f"{args.inputs[0]} lists no subject.")
    names = ["references.csv", "channel_*/refs/[0-9][0-9]_*.nii.gz", "channel_*/refs/montage.png"]
    out = check_out_dir(args.out_dir, names, args.overwrite, sidecars=True,
                        note=" (conditional maps made with the same settings are reused either way)")
    atlas = _atlas(args)
    model = load_model_from(args)
    t0 = time.perf_counter()
    if args.channels:
        from ..core.lrp.conditional import parse_channels

        layer, n_ch = _layer_channels(model, subjects[0], args)
        channels = parse_channels(args.channels, n_ch, layer)
    else:  # the top concepts of the first subject
        from ..core.concepts import top_concepts
        from ..core.volumes import load_nifti, stack_channels

        first = stack_channels([load_nifti(p) for p in subjects[0].paths])
        res0 = top_concepts(model, first, layer=args.layer, target=args.target, k=args.top, method=common["method"],
                            config=args.config, configuration=args.configuration, batch=args.batch,
                            normalization=args.normalization, input_shape=args.input_shape)
        layer, channels = res0.layer, [c.channel for c in res0.concepts]
        if not args.quiet:
            print(f"top {len(channels)} channels of {layer} for subject {subjects[0].id}: "
                  f"{', '.join(map(str, channels))}", file=sys.stderr)
    base = RunConfig(model=str(args.model), model_sha256=model.sha256, method="crp",
                     weights=str(Path(args.weights).resolve()) if args.weights else None,
                     model_kwargs=args.model_kwargs, trust=bool(args.trust_model), device=args.device,
                     target=args.target, normalization=args.normalization, input_shape=args.input_shape,
                     outdir=str(out.resolve()), overwrite=bool(args.overwrite),
                     command=getattr(args, "command_line", "napari-xai concepts"))
    extra = {"config": str(Path(args.config).resolve()) if args.config else None,
             "configuration": args.configuration}
    table, per_channel = [], []
    for c in channels:
        cdir = out / f"channel_{c}"
        (cdir / "maps").mkdir(parents=True, exist_ok=True)
        cfg = crp_run_config(base, layer, c, common["method"], extra)
        from dataclasses import replace

        cfg = replace(cfg, outdir=str(cdir.resolve()))
        atomic_write_bytes(cdir / "cohort.json", (to_json({"kind": "cohort-config", "config": cfg.to_dict()}) + "\n")
                           .encode("utf-8"))
        if not args.quiet:
            print(f"channel {c}: explaining {len(subjects)} subjects", file=sys.stderr)
        progress = Progress(len(subjects), args.quiet)
        run_rows(subjects, cfg, args, model, progress)
        refs = rank_references(cdir, subjects, args.refs)
        if not refs:
            raise UserError(f"no subject of {args.inputs[0]} gave a conditional map for channel {c}; see the errors above.")
        record = {"kind": "concept references", "layer": layer, "channel": c, "method": common["method"],
                  "target": args.target or "predicted", "model": {"source": str(args.model), "sha256": model.sha256},
                  "cohort": str(Path(args.inputs[0]).resolve()), "command": base.command,
                  "title": f"{layer} channel {c}: top {len(refs)} of {len(subjects)} subjects by relevance",
                  "versions": package_versions()}
        with written_or_removed():
            write_references(refs, cdir / "refs", args.crop_mm, record)
        names_ = _region_names(atlas, refs, args)
        for r in refs:
            table.append([c, r.rank + 1, r.id, fmt(r.peak_relevance), *[fmt(v) for v in r.peak_mm],
                          fmt(r.concept_share), names_.get(r.id, ""),
                          f"channel_{c}/refs/{r.rank + 1:02d}_{r.id}.nii.gz"])
        per_channel.append({"channel": c, "references": [r.id for r in refs]})
        if not args.quiet:
            print(f"channel {c}: " + ", ".join(f"{r.id} ({r.peak_relevance:.3g})" for r in refs), file=sys.stderr)
    csv_path = out / "references.csv"
    header = ["channel", "rank", "id", "peak_relevance", "peak_x_mm", "peak_y_mm", "peak_z_mm", "concept_share",
              "peak_region", "scan_cube"]
    with written_or_removed():
        atomic_write_bytes(csv_path, csv_bytes(header, table))
        write_sidecar(csv_path, {"kind": "concept references", "layer": layer, "channels": per_channel,
                                 "refs": args.refs, "crop_mm": args.crop_mm, "method": common["method"],
                                 "cohort": str(Path(args.inputs[0]).resolve()), "command": base.command,
                                 "seconds": round(time.perf_counter() - t0, 2), "versions": package_versions()})
    print(f"relevance maximisation on {layer}, channels {', '.join(map(str, channels))}: {args.refs} references each "
          f"from {len(subjects)} subjects; wrote {csv_path} and channel_*/refs/ (cubes of {args.crop_mm:g} mm, montage.png)")
    return 0


def _layer_channels(model, subject, args) -> tuple[str, int]:
    """The layer (default resolved) and its number of channels, from one forward pass on the first subject."""
    from ..core.explain import prepare
    from ..core.lrp import list_layers
    from ..core.lrp.conditional import default_concept_layer
    from ..core.volumes import load_nifti, stack_channels

    vol = stack_channels([load_nifti(p) for p in subject.paths])
    x = prepare(vol, model, args.normalization, args.input_shape).x
    layer = args.layer or default_concept_layer(model.module, x)
    info = {l.name: l for l in list_layers(model.module, x)}
    if layer not in info:
        raise UserError(f"the model has no layer {layer!r}; see 'napari-xai lrp-layers'.")
    shape = info[layer].output_shape
    if not shape or len(shape) < 2:
        raise UserError(f"layer {layer!r} has no channels (output {shape}).")
    return layer, int(shape[1])


def _region_names(atlas, refs, args) -> dict:
    """The atlas region at each reference's peak (empty without an atlas)."""
    if atlas is None:
        return {}
    return {r.id: atlas.lookup(r.peak_mm, threshold=args.atlas_threshold / 100.0).name for r in refs}
