"""Options that several ``napari-xai`` commands share: the model source, the segmentation target."""

from __future__ import annotations

import argparse

TRUST_HELP = ("allow full unpickling and bundle code execution: this RUNS CODE from the model files; "
              "use only for files you trust")


def add_model_options(p: argparse.ArgumentParser, device: bool = True) -> None:
    """``--model``, ``--weights``, ``--model-kwargs``, ``--trust-model`` (and ``--device``)."""
    p.add_argument("--model", required=True, metavar="SOURCE", help="demo | MONAI bundle folder | file.py:Class | TorchScript file")
    p.add_argument("--weights", help="state_dict checkpoint for a file.py:Class model")
    p.add_argument("--model-kwargs", metavar="JSON", help="constructor keyword arguments as JSON for file.py:Class")
    p.add_argument("--trust-model", action="store_true", help=TRUST_HELP)
    if device:
        p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def add_segmentation_options(g) -> None:
    """``--segmentation``, ``--mask``, ``--point``, ``--output-index`` (read by ``_cli_lrp.explain_options``)."""
    from ._cli_lrp import _point

    g.add_argument("--segmentation", action="store_true", help="the model returns a logit map: explain the masked sum")
    g.add_argument("--mask", metavar="MASK.nii.gz", help="target mask on the input grid; implies --segmentation")
    g.add_argument("--point", type=_point, metavar="I,J,K", help="the predicted component at this voxel; implies --segmentation")
    g.add_argument("--output-index", type=int, default=0, metavar="N", help="output of a tuple-returning model (default 0)")


def load_model_from(args: argparse.Namespace):
    """The model the options above name."""
    from .core.models import load_model

    return load_model(args.model, weights=args.weights, model_kwargs=args.model_kwargs,
                      device=getattr(args, "device", None), trust=args.trust_model)
