"""napari sample data: the demo brain (MNI152 template with simulated hippocampal atrophy)."""

from __future__ import annotations

import numpy as np

from ._layers import anatomy_style
from ._reader import volume_layer_kwargs


def demo_layer_data(seed: int = 0, condition: bool = True) -> list[tuple]:
    from .core.demo import demo_volume

    vol, mask = demo_volume(seed=seed, condition=condition)
    kwargs = volume_layer_kwargs(vol)
    kwargs["name"] = "demo brain"
    kwargs["colormap"] = "gray"
    kwargs.update(anatomy_style())  # readable under relevance in 3D
    kwargs["metadata"]["demo"] = {"seed": seed, "condition": condition}
    gt = {
        "name": "demo atrophy (ground truth)",
        "affine": vol.affine,
        "metadata": {"affine": vol.affine, "nifti_header": vol.header},
        "opacity": 0.5,
        "visible": False,
    }
    return [(vol.data[0], kwargs, "image"), (np.asarray(mask, dtype=np.uint8), gt, "labels")]


def demo_brain() -> list[tuple]:
    return demo_layer_data()
