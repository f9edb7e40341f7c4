"""The demo model: a small 3D CNN that detects the simulated hippocampus/amygdala atrophy.

Shipped layout (``demo_metadata.json`` holds the exact ``net_kwargs``), input
(N, 1, 48, 56, 48) on a ~3.8 mm grid::

    features: [Conv3d 3³ stride 2 -> BatchNorm3d -> ReLU]   (24×28×24)
              [Conv3d 3³ -> BatchNorm3d -> ReLU]
              [Conv3d 3³ -> BatchNorm3d -> ReLU]            (16 maps, 24×28×24, ~7.6 mm)
    pool:     Flatten                                      (no global pooling)
    classifier: Linear(16·24·28·24, 2)                     (logits: healthy, atrophy)

Why this shape (see docs/demo.md, "Design notes"): brains in MNI space are
aligned, so a classifier that reads every position of small-receptive-field
(~30 mm) feature maps, trained with an L1 penalty on its weights, bases its
decision on the positions where the evidence is; its relevance maps then lie on
the region. Global-average-pooled variants classified just as well but spread
their gradients over the whole brain.

ReLUs are ``nn.ReLU`` modules (not functional calls) so that guided backprop and
deconvolution can override them; each BatchNorm3d directly follows its Conv3d so
that Zennit's ``SequentialMergeBatchNorm`` canonizer can merge it.

The trained weights (a state_dict) and their metadata ship as package data:
:func:`demo_model_path`, :func:`demo_metadata_path`, :func:`load_demo_net`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class DemoNet(nn.Module):
    """Small 3D CNN classifier: Conv3d-BatchNorm3d-ReLU blocks, then a linear classifier.

    Parameters
    ----------
    in_channels : int
        Input channels.
    num_classes : int
        Output logits.
    channels : sequence of int
        Feature channels of the convolution blocks (3×3×3 kernels).
    first_stride : int
        Stride of the first convolution (2 halves the grid cheaply; CPU Conv3d
        backward is slow at full resolution).
    pool_after : sequence of int
        Indices of the blocks followed by a 2× max pooling.
    pool : {"flatten", "avg", "max"}
        ``"flatten"``: the classifier reads every position of the last feature
        maps (needs ``input_shape``); ``"avg"``/``"max"``: global pooling first.
    input_shape : sequence of 3 int, optional
        Spatial input shape in voxels; required for ``pool="flatten"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: tuple[int, ...] | list[int] = (8, 16, 16),
        first_stride: int = 2,
        pool_after: tuple[int, ...] | list[int] = (),
        pool: str = "flatten",
        input_shape: tuple[int, int, int] | list[int] | None = (48, 56, 48),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = int(in_channels)
        for n, c in enumerate(channels):
            stride = int(first_stride) if n == 0 else 1
            layers += [
                nn.Conv3d(prev, int(c), kernel_size=3, stride=stride, padding=1, bias=False),
                nn.BatchNorm3d(int(c)),
                nn.ReLU(),
            ]
            if n in tuple(pool_after):
                layers.append(nn.MaxPool3d(2))
            prev = int(c)
        self.features = nn.Sequential(*layers)
        if pool == "flatten":
            if input_shape is None:
                raise ValueError("pool='flatten' needs input_shape")
            with torch.no_grad():
                probe = torch.zeros((1, int(in_channels)) + tuple(int(s) for s in input_shape))
                n_feat = int(self.features.eval()(probe).numel())
            self.features.train()
            self.pool = nn.Flatten()
        elif pool in ("avg", "max"):
            gpool = nn.AdaptiveAvgPool3d(1) if pool == "avg" else nn.AdaptiveMaxPool3d(1)
            self.pool = nn.Sequential(gpool, nn.Flatten())
            n_feat = prev
        else:
            raise ValueError(f"pool must be 'flatten', 'avg' or 'max', got {pool!r}")
        self.classifier = nn.Linear(n_feat, int(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def demo_model_path() -> Path:
    """Path of the shipped demo weights (a state_dict for :class:`DemoNet`)."""
    return DATA_DIR / "demo_model.pt"


def demo_metadata_path() -> Path:
    """Path of the shipped demo metadata JSON (input shape, classes, normalisation, net kwargs)."""
    return DATA_DIR / "demo_metadata.json"


def load_demo_metadata() -> dict:
    """The demo metadata as a dict."""
    return json.loads(demo_metadata_path().read_text())


def load_demo_net(device: str | torch.device = "cpu") -> DemoNet:
    """Build :class:`DemoNet` from the metadata and load the shipped weights (``weights_only=True``), in eval mode."""
    meta = load_demo_metadata()
    net = DemoNet(**meta.get("net_kwargs", {}))
    state = torch.load(demo_model_path(), map_location=device, weights_only=True)
    net.load_state_dict(state)
    return net.to(device).eval()


__all__ = ["DemoNet", "demo_model_path", "demo_metadata_path", "load_demo_metadata", "load_demo_net"]
