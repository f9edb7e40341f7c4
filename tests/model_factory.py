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


# --------------------------------------------------------------------------- hand-computable nets

#: ``y = W x`` (bias-free): zeroing voxel i lowers logit c by exactly W[c, i] x_i, and LRP-0 / input x gradient
#: give R = W[c] * x. ``n`` is the number of input voxels.
LIN_PY = textwrap.dedent(
    """
    from torch import nn


    class Lin(nn.Module):
        def __init__(self, n=120):
            super().__init__()
            self.flat = nn.Flatten()
            self.fc = nn.Linear(n, 2, bias=False)

        def forward(self, x):
            return self.fc(self.flat(x))
    """
)


class ThreeChannels(torch.nn.Module):
    """1x1 conv with weights (1, 2, 3), ReLU, global mean, then logit 1 = the sum: 6 mean(x) for x > 0.

    Channel c carries w_c mean(x) of logit 1 (LRP-0 conserves it); logit 0 is 0.
    """

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.conv = nn.Conv3d(1, 3, 1, bias=False)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.act(self.conv(x)))))


class Shuffled(torch.nn.Module):
    """Registered conv2, fc, conv1 but runs conv1 -> conv2 -> fc (seeded weights): execution order is not
    registration order, nor its reverse."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        torch.manual_seed(0)
        self.conv2 = nn.Conv3d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.act = nn.ReLU()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)

    def forward(self, x):
        h = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3, 4)))


def lin_source(folder: Path, weight: np.ndarray, name: str = "w") -> tuple[str, Path]:
    """(``lin.py:Lin``, weights path) for a bias-free linear model with ``weight`` (2, n)."""
    folder.mkdir(parents=True, exist_ok=True)
    py = folder / "lin.py"
    if not py.exists():
        py.write_text(LIN_PY)
    path = folder / f"{name}.pt"
    torch.save({"fc.weight": torch.from_numpy(np.asarray(weight, np.float32))}, path)
    return f"{py}:Lin", path


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """Run ``napari-xai`` in-process: (exit code, stdout, stderr)."""
    from napari_xai.cli import main

    capsys.readouterr()  # drop what fixtures printed
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err
