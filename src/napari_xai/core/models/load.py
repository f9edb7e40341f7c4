"""One call loads a model from any source: :func:`load_model`, :class:`LoadedModel`, devices, the demo."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .bundle import load_bundle
from .bundle_config import read_json
from .checkpoints import (
    extract_state_dict,
    load_checkpoint,
    load_torchscript,
    load_weights_into,
    require_trust_for_torchscript,
)
from .metadata import ModelSpec, parse_model_kwargs, spec_from_metadata
from .python_file import load_python
from .sources import (
    combined_sha256,
    hash_files,
    is_torchscript_file,
    split_python_source,
)


@dataclass
class LoadedModel:
    """A model ready to explain: in ``eval()`` mode, on :attr:`device`.

    Attributes
    ----------
    module : torch.nn.Module
        An eager ``nn.Module`` or a ``torch.jit.ScriptModule``.
    spec : ModelSpec
        Expected input and class names.
    source : str
        The source as the user gave it (``"demo"``, a folder, ``"net.py:Net"``,
        a file).
    kind : str
        ``"demo"``, ``"bundle"``, ``"python"``, ``"torchscript"`` or
        ``"pickled"`` (a whole ``nn.Module`` saved with ``torch.save``, only
        with ``trust=True``).
    sha256 : str
        Hash of the file(s) that define the model (see the module docstring).
    device : torch.device
        Where the module's parameters live.
    is_scripted : bool
        True for TorchScript: LRP and the guided methods need an eager module.
    files : dict of str to str
        Every file that defines the model, mapped to its SHA-256.
    notes : list of str
        Things the loader did that the user should know (key prefixes
        stripped, normalisation inferred...). Show them with the result.
    weights : str or None
        The weights file given to :func:`load_model` (absolute path), if any.
    model_kwargs : dict
        The constructor arguments given to :func:`load_model`.

    Together with ``source`` these are what the provenance records, so a
    result can be made again (``napari-xai reproduce``).
    """

    module: torch.nn.Module
    spec: ModelSpec
    source: str
    kind: str
    sha256: str
    device: torch.device
    is_scripted: bool
    files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    weights: str | None = None
    model_kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """A short name for layer titles: ``demo``, the bundle folder, the class or the file stem."""
        if self.kind == "demo":
            return "demo"
        if self.kind == "python":
            return self.source.rsplit(":", 1)[-1]
        return Path(self.source.rstrip("/\\")).name.split(".")[0] or self.source

    def class_names_for(self, n: int) -> list[str]:
        """Class names for a model output with ``n`` scores.

        Parameters
        ----------
        n : int
            Number of scores the model returns per sample.

        Returns
        -------
        list of str
            The names from the metadata, or ``class 0`` ... ``class n-1``
            when the metadata names none.

        Raises
        ------
        UserError
            If the metadata names a different number of classes.
        """
        names = self.spec.class_names
        if not names:
            return [f"class {i}" for i in range(int(n))]
        if len(names) != int(n):
            shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
            raise UserError(
                f"model '{self.name}' returns {n} class scores but its metadata names {len(names)} classes "
                f"({shown}); fix the class names in the model metadata."
            )
        return list(names)


_DEVICE_RE = re.compile(r"^(cpu|cuda)(?::(\d+))?$")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn the user's device choice into a :class:`torch.device`.

    Parameters
    ----------
    device : str, torch.device or None
        ``None``, ``""`` or ``"auto"``: CUDA when available, else CPU.
        Otherwise ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.

    Raises
    ------
    UserError
        For any other name, or when CUDA (or GPU ``N``) is asked for but not
        available.
    """
    if isinstance(device, torch.device):
        device = str(device)
    key = "auto" if device is None else str(device).strip().lower()
    if key in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    m = _DEVICE_RE.match(key)
    if m is None:
        raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N.")
    if m.group(1) == "cpu":
        if m.group(2) is not None:
            raise UserError(f"unknown device {device!r}; use cpu, cuda or cuda:N.")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but CUDA is not available on this machine; use --device cpu.")
    index = int(m.group(2)) if m.group(2) is not None else None
    if index is not None and index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise UserError(f"device {device!r} asked for, but this machine has {count} CUDA device(s).")
    return torch.device("cuda" if index is None else f"cuda:{index}")


def _finish(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module = module.to(device)
    module.eval()
    return module


def _loaded(
    module: torch.nn.Module,
    kind: str,
    source: str,
    files: dict[str, str],
    device: torch.device,
    spec: ModelSpec | None = None,
    notes: list[str] | None = None,
    scripted: bool = False,
) -> LoadedModel:
    """A :class:`LoadedModel` for ``module`` (already on ``device`` and in eval mode), hashed from ``files``."""
    return LoadedModel(
        module=module,
        spec=spec if spec is not None else ModelSpec(),
        source=source,
        kind=kind,
        sha256=combined_sha256(files),
        device=device,
        is_scripted=scripted,
        files=files,
        notes=notes if notes is not None else [],
    )


def _demo_data_dir() -> Any:
    """The package-data folder holding ``demo_model.pt`` and ``demo_metadata.json``."""
    return importlib.resources.files("napari_xai") / "data"


def _load_demo(device: torch.device) -> LoadedModel:
    root = _demo_data_dir()
    with importlib.resources.as_file(root / "demo_model.pt") as weights, importlib.resources.as_file(
        root / "demo_metadata.json"
    ) as meta_path:
        weights, meta_path = Path(weights), Path(meta_path)
        for p in (weights, meta_path):
            if not p.is_file():
                raise UserError(
                    f"the demo model file {p.name} is missing from this napari-xai installation; "
                    "reinstall napari-xai (developers: run scripts/train_demo_model.py)."
                )
        meta = read_json(meta_path, "demo metadata")
        spec, notes = spec_from_metadata(meta, "demo metadata")
        from ..demo_net import DemoNet

        net_kwargs = meta.get("net_kwargs") or {}
        if not isinstance(net_kwargs, Mapping):
            raise UserError("demo metadata: net_kwargs must be a JSON object.")
        net = DemoNet(**net_kwargs)
        sd, more = extract_state_dict(load_checkpoint(weights, what="demo weights"), "demo weights")
        notes += more + load_weights_into(net, sd, "demo weights")
        files = hash_files([weights, meta_path])
    return _loaded(_finish(net, device), "demo", "demo", files, device, spec, notes)


def _reject_extra(kind: str, weights: Any, kwargs: dict, allow_weights: bool = False) -> None:
    if weights is not None and not allow_weights:
        raise UserError(
            f"--weights is not used with a {kind} model; remove it "
            "(weights only go with file.py:ClassName or a bundle)."
        )
    if kwargs:
        raise UserError(
            f"--model-kwargs is not used with a {kind} model; remove it (it only goes with file.py:ClassName)."
        )


def load_model(
    source: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    model_kwargs: str | Mapping | None = None,
    device: str | torch.device | None = None,
    trust: bool = False,
) -> LoadedModel:
    """Load a classifier from any supported source (see the module docstring).

    Parameters
    ----------
    source : str or path-like
        ``"demo"``, a MONAI bundle folder, ``"path/to/file.py:ClassName"`` or
        a TorchScript file.
    weights : path-like, optional
        State_dict checkpoint for a ``file.py:ClassName`` source; for a
        bundle it replaces ``models/model.pt``.
    model_kwargs : str or dict, optional
        Constructor keyword arguments for ``file.py:ClassName``: a dict, JSON
        text or the path of a ``.json`` file.
    device : str or torch.device, optional
        See :func:`resolve_device`.
    trust : bool
        Allow code from the model files to run: TorchScript, full unpickling
        of checkpoints and MONAI ``ConfigParser`` evaluation of bundle configs.

    Returns
    -------
    LoadedModel
        In ``eval()`` mode, on the resolved device.

    Raises
    ------
    UserError
        For every problem the user can fix, in one line.
    """
    model = _load_model(source, weights, model_kwargs, device, trust)
    model.weights = os.path.abspath(os.path.expanduser(os.fspath(weights))) if weights else None
    model.model_kwargs = parse_model_kwargs(model_kwargs)
    return model


def _load_model(source, weights, model_kwargs, device, trust) -> LoadedModel:
    dev = resolve_device(device)
    text = os.fspath(source).strip() if source is not None else ""
    if not text:
        raise UserError("no model given; use demo, a MONAI bundle folder, file.py:ClassName or a TorchScript file.")
    kwargs = parse_model_kwargs(model_kwargs)

    if text.lower() == "demo":
        _reject_extra("demo", weights, kwargs)
        return _load_demo(dev)

    py = split_python_source(text)
    if py is not None:
        net, files, notes = load_python(py[0], py[1], weights, kwargs, dev, trust)
        return _loaded(_finish(net, dev), "python", text, files, dev, notes=notes)

    path = Path(os.path.expanduser(text))
    if not path.exists():
        if text.lower().endswith(".py") or ":" in text:
            raise UserError(f"model {text!r} not found; a Python model is given as path/to/file.py:ClassName.")
        raise UserError(
            f"model source {text} not found; use demo, a MONAI bundle folder, file.py:ClassName or a TorchScript file."
        )

    if path.is_dir():
        _reject_extra("MONAI bundle", weights, kwargs, allow_weights=True)
        net, spec, files, notes, scripted = load_bundle(path, weights, dev, trust)
        module = net if scripted else _finish(net, dev)
        return _loaded(module, "bundle", text, files, dev, spec, notes, scripted=scripted)

    if path.suffix.lower() == ".py":
        raise UserError(f"name the model class: --model {text}:ClassName.")

    if is_torchscript_file(path):
        _reject_extra("TorchScript", weights, kwargs)
        require_trust_for_torchscript(path, trust)
        module, spec, notes = load_torchscript(path, dev, text)
        return _loaded(module, "torchscript", text, hash_files([path]), dev, spec, notes, scripted=True)

    # A plain torch.save file: only a whole pickled nn.Module can be a model.
    _reject_extra("pickled", weights, kwargs)
    obj = load_checkpoint(path, trust=trust, what="model file")
    if isinstance(obj, torch.nn.Module):
        note = f"{path.name} is a whole pickled {type(obj).__name__}, loaded with trust"
        return _loaded(_finish(obj, dev), "pickled", text, hash_files([path]), dev, notes=[note])
    raise UserError(
        f"{path} holds weights, not a model; give the network too: --model path/to/net.py:ClassName --weights {path}."
    )
