"""Write tiny model sources to disk for pipeline and CLI tests (bundle, .py + weights, TorchScript)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import torch

NET_PY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class TinyNet(nn.Module):
        def __init__(self, in_channels=1, classes=2, width=4):
            super().__init__()
            self.conv1 = nn.Conv3d(in_channels, width, 3, padding=1)
            self.act1 = nn.ReLU()
            self.conv2 = nn.Conv3d(width, width, 3, padding=1)
            self.act2 = nn.ReLU()
            self.pool = nn.AdaptiveAvgPool3d(1)
            self.fc = nn.Linear(width, classes)

        def forward(self, x):
            x = self.act2(self.conv2(self.act1(self.conv1(x))))
            return self.fc(torch.flatten(self.pool(x), 1))
    """
)


def _tiny_class(folder: Path):
    """Write the TinyNet source to ``folder`` and import it (TorchScript needs real source)."""
    import importlib.util

    folder.mkdir(parents=True, exist_ok=True)
    py = folder / "tiny_net.py"
    py.write_text(NET_PY)
    spec = importlib.util.spec_from_file_location(f"tiny_net_{abs(hash(str(folder)))}", py)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return py, mod.TinyNet


def python_source(folder: Path, in_channels: int = 1, classes: int = 2, seed: int = 0) -> tuple[str, Path, str]:
    """(``net.py:TinyNet``, weights path, kwargs JSON)."""
    py, cls = _tiny_class(folder)
    torch.manual_seed(seed)
    net = cls(in_channels=in_channels, classes=classes)
    weights = folder / "tiny_net.pt"
    torch.save(net.state_dict(), weights)
    return f"{py}:TinyNet", weights, json.dumps({"in_channels": in_channels, "classes": classes})


def torchscript_source(folder: Path, seed: int = 0) -> Path:
    _, cls = _tiny_class(folder)
    torch.manual_seed(seed)
    net = cls().eval()
    scripted = torch.jit.script(net)
    path = folder / "tiny_scripted.pt"
    torch.jit.save(scripted, str(path))
    return path


def bundle_source(folder: Path, spatial_shape=(12, 12, 12), class_names=("healthy", "lesion"), seed: int = 0) -> Path:
    """A MONAI bundle folder with a small DenseNet and metadata."""
    from monai.networks.nets import DenseNet

    kwargs = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": len(class_names),
        "init_features": 4,
        "growth_rate": 4,
        "block_config": [2, 2],
    }
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    inference = {"network_def": {"_target_": "monai.networks.nets.DenseNet", **kwargs}}
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    meta = {
        "version": "0.1.0",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": list(spatial_shape)}},
            "outputs": {"pred": {"type": "probabilities", "channel_def": {str(i): n for i, n in enumerate(class_names)}}},
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.manual_seed(seed)
    net = DenseNet(**kwargs)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def nifti(path: Path, shape=(12, 12, 12), affine=None, seed: int = 0, channels: int = 1) -> Path:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    data = rng.normal(size=(*shape, channels) if channels > 1 else shape).astype(np.float32) + 2.0
    aff = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return path
