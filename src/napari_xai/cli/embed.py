"""``napari-xai embed``: the learned features of a cohort's subjects in two dimensions (PCA), with outliers.

Every subject of a cohort (the same CSV as ``napari-xai cohort``, or NIfTI
files) goes through the model once; the activation of one layer is read
(:func:`napari_xai.core.embedding.features`; default: the input of the last
linear layer, the features the classifier reads). The subjects' feature
vectors are reduced by PCA; each subject's mean distance to its ``--knn``
nearest other subjects in the full feature space gets a robust z-score, and
subjects above ``--outlier-z`` are flagged. Writes into ``--out``:

* ``embedding.csv``: per subject the status, PC1, PC2, the predicted class and
  its probability, the neighbour distance, its robust z-score, the flag, the
  share of neighbours with the same predicted class, and the covariates;
* ``embedding.json``: the provenance (model hash, layer, feature count,
  explained variance, correlations of PC1/PC2 with the covariates, outliers,
  failures, versions, command);
* ``embedding.png``: PC1 against PC2 (800 x 600 pixels), coloured by the
  predicted class or a ``--color`` covariate, outliers ringed and named.

A subject that fails with a user error is reported and skipped; the others go
on, the files are written, and the exit code is 2.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

from .options import add_grid_options, add_model_options, add_output_flags, check_out_dir, load_model_from
from ..core.errors import UserError

HELP = "PCA of the learned features of every subject of a cohort; scatter plot, nearest-neighbour outliers"
FILES = ("embedding.csv", "embedding.json", "embedding.png")
PNG_SIZE = (800, 600)  # pixels
_LABEL_ALL_UP_TO = 30  # subjects: with more, only outliers are named in the plot


def add_subcommand(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("embed", help=HELP, description=HELP + " (napari_xai.core.embedding).")
    p.add_argument("inputs", nargs="+", metavar="SUBJECTS.csv|VOLUME",
                   help="a cohort CSV (columns id, path, numeric covariates) or NIfTI files (id = file name)")
    add_model_options(p)
    p.add_argument("--layer", metavar="NAME[:input]",
                   help="module (named_modules) whose output is the feature vector; NAME:input for its input "
                        "(default: the input of the last nn.Linear, else the output of the last spatial layer)")
    p.add_argument("--no-pool", action="store_true",
                   help="keep every position of a spatial map (default: average each channel over space)")
    p.add_argument("--standardize", action="store_true",
                   help="divide each feature by its standard deviation over the subjects before PCA")
    p.add_argument("--knn", type=int, default=3, metavar="K", help="nearest neighbours for the outlier score (default 3)")
    p.add_argument("--outlier-z", type=float, default=3.5, metavar="Z",
                   help="flag subjects whose robust z-score of the neighbour distance exceeds Z (default 3.5)")
    p.add_argument("--color", metavar="COVARIATE", help="colour the plot by this numeric covariate (default: predicted class)")
    add_grid_options(p, space=False)
    p.add_argument("--out", required=True, metavar="FOLDER", help="folder for embedding.csv, embedding.json and embedding.png")
    add_output_flags(p, "replace existing files in --out")
    p.set_defaults(func=cmd_embed)
    return p


def _check_args(args: argparse.Namespace) -> Path:
    out = check_out_dir(args.out, option="--out")
    if args.knn < 1:
        raise UserError(f"--knn must be at least 1, got {args.knn}.")
    if not math.isfinite(args.outlier_z) or args.outlier_z <= 0:
        raise UserError(f"--outlier-z must be a positive number, got {args.outlier_z:g}.")
    return check_out_dir(out, FILES, args.overwrite, option="--out")


def cmd_embed(args: argparse.Namespace) -> int:
    import numpy as np

    from .options import csv_bytes, fmt
    from ..core.cohort import subjects_from_inputs
    from ..core.embedding import check_layer, knn_outliers, pc_correlations, pca
    from ..core.provenance import now_iso, package_versions, to_json
    from ..core.volumes import atomic_write_bytes, written_or_removed

    t0 = time.perf_counter()
    outdir = _check_args(args)
    subjects = subjects_from_inputs(args.inputs)
    covariates = list(subjects[0].covariates)
    if args.color and args.color not in covariates:
        raise UserError(f"--color {args.color!r} is not a numeric covariate of the cohort; "
                        f"covariates: {', '.join(covariates) or 'none'}.")
    if len(subjects) < args.knn + 1:
        raise UserError(f"--knn {args.knn} needs at least {args.knn + 1} subjects, the cohort has {len(subjects)}; "
                        "use a smaller --knn.")
    model = load_model_from(args)
    check_layer(model, args.layer)
    command = getattr(args, "command_line", "napari-xai embed")
    rows, vectors, failures, first = _subject_features(args, model, subjects)
    ok = [r for r in rows if r["status"] == "ok"]
    if len(ok) < args.knn + 1:
        raise UserError(f"only {len(ok)} of {len(subjects)} subjects gave features; the embedding needs at least "
                        f"{args.knn + 1} (--knn {args.knn}). See the lines above.")
    result = pca(np.stack(vectors), k=None, standardize=args.standardize)
    scores = np.zeros((len(ok), 2))
    scores[:, : min(2, result.scores.shape[1])] = result.scores[:, :2]
    labels = [r["predicted"] for r in ok] if first.probabilities is not None else None
    outl = knn_outliers(result.scores, k=args.knn, threshold=args.outlier_z, labels=labels)
    for i, r in enumerate(ok):
        r.update({"PC1": scores[i, 0], "PC2": scores[i, 1], "knn_distance": float(outl.distance[i]),
                  "outlier_z": float(outl.z[i]), "outlier": int(outl.flagged[i])})
        if outl.agreement is not None:
            r["neighbours_same_class"] = float(outl.agreement[i])
    ok_subjects = [s for s in subjects if s.id in {r["id"] for r in ok}]
    corr = pc_correlations(scores, {c: [s.covariates.get(c, float("nan")) for s in ok_subjects] for c in covariates})
    ratio = [float(v) for v in result.explained_variance_ratio]
    header = ["id", "status", "PC1", "PC2", "predicted", "probability", "knn_distance", "outlier_z", "outlier",
              *(["neighbours_same_class"] if outl.agreement is not None else []), "error", *covariates]
    table_csv = csv_bytes(header, [[fmt(r.get(h, "")) for h in header] for r in rows])
    flagged = [r["id"] for r in ok if r["outlier"]]
    png = scatter_png(
        scores, ok, ratio,
        title=f"{model.name}: {first.description}, {first.values.size} features, n = {len(ok)}",
        color=args.color, class_names=first.class_names, threshold=args.outlier_z,
        standardized=args.standardize)
    summary = {
        "kind": "embedding", "created": now_iso(), "command": command,
        "model": {"source": str(args.model), "name": model.name, "kind": model.kind, "sha256": model.sha256,
                  "class_names": first.class_names},
        "layer": first.layer, "layer_description": first.description, "activation_shape": list(first.shape),
        "pooled": first.pooled, "features": int(first.values.size),
        "normalization": args.normalization, "input_shape": args.input_shape,
        "pca": {"standardized": bool(args.standardize), "components": len(ratio),
                "explained_variance_ratio": ratio[:10], "explained_variance": [float(v) for v in result.explained_variance[:10]]},
        "outliers": {"k": outl.k, "robust_z_threshold": outl.threshold, "space": "all principal components (= feature space)",
                     "flagged": flagged, "median_knn_distance": float(np.median(outl.distance))},
        "correlations": corr,  # to_json writes NaN (an undefined r) as null
        "png": {"file": FILES[2], "width": PNG_SIZE[0], "height": PNG_SIZE[1], "color": args.color or "predicted class"},
        "subjects": len(subjects), "ok": len(ok), "failures": failures,
        "seconds": round(time.perf_counter() - t0, 2), "versions": package_versions(),
    }
    with written_or_removed() as written:
        for name, payload in zip(FILES, (table_csv, (to_json(summary) + "\n").encode("utf-8"), png)):
            atomic_write_bytes(outdir / name, payload)
            written.append(outdir / name)
    print(f"{len(ok)} of {len(subjects)} subjects, {first.values.size} features at {first.layer} "
          f"({first.description}); PC1 {ratio[0] * 100:.1f} %, PC2 {(ratio[1] if len(ratio) > 1 else 0.0) * 100:.1f} % "
          f"of the variance; wrote {outdir}/{', '.join(FILES)}")
    for c in corr:
        if math.isfinite(c["r"]):
            print(f"  {c['component']} vs {c['covariate']}: r = {c['r']:+.3f} (p = {c['p']:.2g}, n = {c['n']})")
    if flagged:
        print(f"  outliers (robust z of the {outl.k}-NN distance > {outl.threshold:g}): "
              + ", ".join(f"{r['id']} (z = {r['outlier_z']:.1f})" for r in ok if r["outlier"]))
    else:
        print(f"  no outlier (largest robust z of the {outl.k}-NN distance: {float(outl.z.max()):.2f})")
    if failures:
        raise UserError(f"{len(failures)} subject(s) failed ({', '.join(f['id'] for f in failures[:5])}); "
                        "see the lines above and embedding.csv.")
    return 0


def _subject_features(args: argparse.Namespace, model, subjects):
    """Each subject's features at ``--layer``: (rows, vectors of the subjects that gave them, failures, the first
    subject's :class:`~napari_xai.core.embedding.LayerFeatures` or None). A failing subject is one row and one line."""
    from ..core.embedding import features
    from ..core.volumes import load_nifti, stack_channels

    rows, vectors, failures = [], [], []
    first = None
    for k, s in enumerate(subjects, start=1):
        try:
            volume = stack_channels([load_nifti(p) for p in s.paths])
            f = features(model, volume, args.layer, pool=not args.no_pool, normalization=args.normalization,
                         input_shape=args.input_shape)
            if first is None:
                first = f
            elif f.values.size != first.values.size:
                raise UserError(f"{f.values.size} features at {f.layer}, but the first subject gave "
                                f"{first.values.size} (another grid?); give the model a fixed --input-shape.")
        except UserError as exc:
            failures.append({"id": s.id, "error": str(exc)})
            print(f"napari-xai: error: subject {s.id}: {exc}", file=sys.stderr)
            rows.append({"id": s.id, "status": "failed", "error": str(exc), **s.covariates})
            continue
        pred = f.predicted
        name = f.class_names[pred] if pred is not None else ""
        prob = float(f.probabilities[pred]) if pred is not None else float("nan")
        rows.append({"id": s.id, "status": "ok", "predicted": name, "probability": prob, "error": "", **s.covariates})
        vectors.append(f.values)
        if not args.quiet:
            print(f"[{k}/{len(subjects)}] {s.id}: {f.values.size} features"
                  + (f"; predicted {name} ({prob:.3f})" if name else ""), file=sys.stderr)
    return rows, vectors, failures, first


def scatter_png(scores, rows: list[dict], ratio: list[float], *, title: str, color: str | None,
                class_names: list[str], threshold: float, standardized: bool = False) -> bytes:
    """PC1 against PC2 as PNG bytes (:data:`PNG_SIZE`), drawn with matplotlib's Agg canvas (no display, no Qt).

    Points are coloured by ``rows[i]["predicted"]`` or by the covariate ``color``
    (categories for a few integer values, else a colour bar); flagged rows
    (``"outlier"``) get a red ring and their id.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    w, h = PNG_SIZE
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x, y = np.asarray(scores)[:, 0], np.asarray(scores)[:, 1]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    style = {"s": 60, "edgecolors": "black", "linewidths": 0.6, "zorder": 3}
    values = None if color is None else np.asarray([r.get(color, float("nan")) for r in rows], dtype=float)
    finite = values[np.isfinite(values)] if values is not None else None
    categorical = values is None or (finite.size and np.all(finite == np.round(finite)) and np.unique(finite).size <= 8)
    if categorical:
        if values is None:
            groups = [r.get("predicted", "") for r in rows]
            order = [c for c in class_names if c in groups] + sorted({g for g in groups if g not in class_names})
            label = lambda g: g or "no prediction"  # noqa: E731
        else:
            groups = [v if np.isfinite(v) else None for v in values]
            order = sorted({g for g in groups if g is not None}) + ([None] if None in groups else [])
            label = lambda g: "missing" if g is None else f"{color} = {g:g}"  # noqa: E731
        for n, g in enumerate(order):
            sel = np.array([gg == g for gg in groups])
            col = "#bbbbbb" if g is None else palette[n % len(palette)]
            ax.scatter(x[sel], y[sel], c=col, label=f"{label(g)} (n = {int(sel.sum())})", **style)
    else:
        ok = np.isfinite(values)
        sc = ax.scatter(x[ok], y[ok], c=values[ok], cmap="viridis", **style)
        fig.colorbar(sc, ax=ax, label=color)
        if (~ok).any():
            ax.scatter(x[~ok], y[~ok], c="#bbbbbb", label=f"{color} missing (n = {int((~ok).sum())})", **style)
    flagged = np.array([bool(r.get("outlier")) for r in rows])
    if flagged.any():
        ax.scatter(x[flagged], y[flagged], s=260, facecolors="none", edgecolors="#e00000", linewidths=2.0, zorder=4,
                   label=f"outlier (robust z > {threshold:g})")
    for i, r in enumerate(rows):
        if flagged[i] or len(rows) <= _LABEL_ALL_UP_TO:
            ax.annotate(r["id"], (x[i], y[i]), xytext=(6, 5), textcoords="offset points", zorder=5,
                        fontsize=9 if flagged[i] else 7, color="#b00000" if flagged[i] else "#555555",
                        fontweight="bold" if flagged[i] else "normal")
    pc2 = ratio[1] if len(ratio) > 1 else 0.0
    ax.set_xlabel(f"PC1 ({ratio[0] * 100:.1f} % of the variance)")
    ax.set_ylabel(f"PC2 ({pc2 * 100:.1f} % of the variance)")
    ax.set_title(title, fontsize=10)
    ax.axhline(0, color="#dddddd", lw=0.8, zorder=1)
    ax.axvline(0, color="#dddddd", lw=0.8, zorder=1)
    ax.grid(True, color="#eeeeee", zorder=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=8, framealpha=0.9)
    fig.text(0.01, 0.01, "PCA of the " + ("standardised" if standardized else "centred") + " features (the sign of a "
             "component is arbitrary); outliers from the nearest-neighbour distance in the full feature space",
             fontsize=7, color="#777777")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
