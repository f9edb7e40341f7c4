"""What the LRP designer's tabs share: constants, input stacking, the model's output kind, the TorchScript refusal."""

from __future__ import annotations

import numpy as np

from ...core.errors import UserError

MASK_SOURCES = ("predicted region", "Labels layer", "component at point")
SEGMENT_COLOURS = ["#e6550d", "#3182bd", "#31a354", "#756bb1", "#de2d26", "#636363", "#fd8d3c", "#6baed6"]
KIND_TEXT = {"rule": "segment rule", "pass": "pass", "sum": "sum rule", "gradient": "gradient", "none": "NO RULE"}
REST = "(rest)"
PARAM_RANGE = {"alpha": (0.0, 10.0), "beta": (0.0, 9.0), "epsilon": (0.0, 100.0)}
META_KEY = "xai_lrp"

# the Check tab
CHECK_META_KEY = "xai_check"
ACTIVE_CONFIG = "active LRP configuration"
SANITY_HEADERS = ["#", "randomized", "Spearman", "|Spearman|", "SSIM", "top 5%", "score", "p"]
SANITY_HEADER_TIPS = [
    "step: 0 = the original model",
    "the layer randomized at this step; '+': the layers above it stay random (cascading)",
    "Spearman rank correlation of the channel-summed maps with the original (1: same ranking, 0: unrelated)",
    "Spearman rank correlation of |map| with the original's",
    "structural similarity of |map| / max|map| (Gaussian window, σ 1.5 voxels)",
    "share of the original's top 5 % voxels by |map| still in the top 5 % (chance: 0.05)",
    "the explained class's score in this step's model: its logit (segmentation: the sum of its logits in the mask)",
    "the explained class's probability in this step's model (segmentation: its share of the predicted voxels)",
]
ORDER_COLOURS = {"morf": "#e6550d", "lerf": "#3182bd", "random": "#969696"}
ORDER_TEXT = {"morf": "most relevant first", "lerf": "least relevant first", "random": "random"}
ORDER_SHORT = {"morf": "MoRF", "lerf": "LeRF", "random": "random"}
LIVE_DELAY_MS = 400
CELL_COLOURS = ["#e6550d", "#31a354", "#3182bd", "#756bb1", "#de2d26", "#fd8d3c", "#6baed6", "#74c476"]


def volume_from_layers(viewer, names: list[str]):
    """Stack image layers (one grid) into a :class:`Volume` in their files' voxel order and affine."""
    from ..._layers import volume_from_layers as stack_layers

    if not names:
        raise UserError("select at least one input image layer (File › Open Sample › napari-xai › Demo brain).")
    for name in names:
        data = np.asarray(viewer.layers[name].data)
        if data.ndim != 3:
            raise UserError(f"layer '{name}' is {data.ndim}D; the LRP designer explains 3D volumes.")
    return stack_layers([viewer.layers[name] for name in names])


def model_outputs(model, x, index: int = 0) -> tuple[bool, int]:
    """(does output ``index`` hold a logit map (N, C, D, H, W)?, how many tensors the model returns) for input ``x``."""
    from ...core.explain import predict_cached
    from ...core.segmentation import is_segmentation_output, pick_output

    raw = predict_cached(model.module, x)  # the explanation that follows reuses this prediction
    count = sum(1 for o in raw if hasattr(o, "shape")) if isinstance(raw, (tuple, list)) else 1
    return is_segmentation_output(pick_output(raw, min(index, max(count - 1, 0)))), count


def is_segmentation(model, x, index: int = 0) -> bool:
    """True when the model's output ``index`` (of a tuple; a single output is output 0) is a logit map."""
    return model_outputs(model, x, index)[0]


def refuse_torchscript(source: str) -> None:
    """LRP needs an eager module: say so for a TorchScript file before anything loads it (TorchScript is code)."""
    import os

    from ...core.models import is_torchscript_file

    if os.path.isfile(source) and is_torchscript_file(source):
        raise UserError("the LRP designer needs an eager nn.Module, but the model is TorchScript; "
                        "load it as a .py file with weights or a MONAI bundle.")
