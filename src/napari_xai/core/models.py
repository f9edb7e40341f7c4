"""Model adapters: one call loads a classifier from any supported source.

:func:`load_model` accepts four kinds of *source*:

``"demo"``
    The built-in demo network (:class:`napari_xai.core.demo_net.DemoNet`) with
    the weights and metadata shipped in ``napari_xai/data``.
A MONAI bundle folder
    ``configs/inference.json`` (or ``.yaml``) with a ``network_def``, the
    weights in ``models/model.pt`` (or a TorchScript ``models/model.ts``) and
    ``configs/metadata.json``.
``path/to/file.py:ClassName``
    A Python file defining an ``nn.Module`` class, its constructor keyword
    arguments (``model_kwargs``, JSON text or a dict) and a state_dict
    checkpoint (``weights``).
A TorchScript file
    Any file written by ``torch.jit.save`` (``.pt``, ``.ts``, ``.pth``...).
    It is code, so it needs ``trust=True`` (see Security). Gradient methods
    work on it; LRP and the guided methods need an eager ``nn.Module``.

Security
--------
Loading a model can run code. napari-xai runs code only where the user asked
for it explicitly (``trust=True``: CLI ``--trust-model``, widget "trust model
code"); the threat model is in ``docs/security.md``.

* Checkpoints load with ``torch.load(weights_only=True)``. A file that needs
  full unpickling (custom classes, pickled modules) is refused unless
  ``trust=True``.
* TorchScript is code: loading runs its ``__setstate__`` and calling it runs
  its methods, which can read and write any file
  (``torch.from_file(path, shared=True)``). A TorchScript file, and a bundle
  whose model is ``models/model.ts``, is refused without ``trust=True``, before
  ``torch.jit.load``. (Proving a TorchScript program harmless would need an
  allow-list of graph ops over every submodule and method; an op list that
  misses one file or process op is a hole, so napari-xai does not try.)
* A bundle's ``network_def`` is built by napari-xai itself, without MONAI's
  ``ConfigParser``, when every ``_target_`` in it names an ``nn.Module`` class
  from ``monai.networks`` or ``torch.nn`` and it contains no ``$`` expression
  and no ``%`` macro. A short ``_target_`` such as ``"DenseNet121"`` is looked
  up in ``monai.networks.nets``, then ``monai.networks.blocks``,
  ``monai.networks.layers`` and ``torch.nn``. An ``@id`` reference (``#``
  separates levels, as in MONAI) is allowed when it points at a plain value
  that passes the same checks. Everything else needs ``trust=True``, and is
  then built by ``monai.bundle.ConfigParser``.
* An untrusted bundle is built offline: an argument that downloads weights
  (``pretrained=True``, ``pretrained_url``, any name with ``pretrain``, ``url``,
  ``download``, ``hub`` or ``repo_id``) is refused in one line (the weights come
  from ``models/model.pt``), a class whose *default* downloads
  (``EfficientNetBN``, ``ResNetFeatures``...) is built with it turned off, and
  the constructors run with network access, file writes and new processes
  refused (a Python audit hook active in the building thread only).
* Configs are bounded: a JSON/YAML file (bundle config, metadata,
  ``--model-kwargs``) may nest at most :data:`MAX_CONFIG_DEPTH` levels and
  expand to at most :data:`MAX_CONFIG_NODES` values, a YAML alias counted each
  time it is used; ``@`` references expand under the same bounds
  (:func:`resolve_config_value`, reusable for any config section). A bomb or a
  reference cycle is one line, in well under a second.
* A ``file.py:ClassName`` source imports (runs) that file: naming it on the
  command line or in the widget is the user's explicit choice. It is imported
  under a unique module name, with its folder on ``sys.path`` during the import
  so that it can import its siblings. A ``sys.exit`` in it is a user error.
  ``reproduce`` runs a ``.py`` (or TorchScript) model named in a *sidecar* only
  with ``trust=True``, after :func:`model_files` has hashed every model file.

Metadata
--------
:class:`ModelSpec` is read from the bundle's ``configs/metadata.json`` (the
demo's ``demo_metadata.json``, or a ``metadata.json`` embedded in a TorchScript
file as MONAI's ``ckpt_export`` writes it). Accepted keys:

* ``network_data_format.inputs.image.spatial_shape`` and ``num_channels``
  (the first input when there is no ``image``); a shape holding strings such
  as ``"16*n"`` means "any shape";
* ``network_data_format.outputs.pred.channel_def`` (``{"0": "healthy", ...}``)
  gives the class names (the first output when there is no ``pred``);
* simpler top-level keys, which win when present: ``input_shape``,
  ``channels``, ``class_names``, ``normalization``;
* a ``napari_xai`` section with the same simple keys wins over both;
* ``orientation``, ``spacing`` and ``shape_policy`` (top level or in
  ``napari_xai``) declare the rest of the model's input space
  (:mod:`napari_xai.core.input_space`); a bundle's ``preprocessing``
  transforms declare it too, read as data (``docs/models.md``).

``normalization`` is ``"none"``, ``"zscore"`` or ``"minmax"``. For a bundle
that declares none, it is inferred from the ``preprocessing`` transforms in
the inference config (``NormalizeIntensity[d]`` -> zscore,
``ScaleIntensity[d]`` -> minmax) and the inference is reported in
:attr:`LoadedModel.notes`. Without metadata the spec is empty: any shape, any
channel count, and class names ``class 0``, ``class 1``... which
:meth:`LoadedModel.class_names_for` fills once the number of outputs is known.

Hashes
------
:attr:`LoadedModel.sha256` identifies the model. For a single file it is that
file's SHA-256 (what ``sha256sum`` prints). When several files define the
model (bundle: weights + inference config; Python: ``.py`` + weights; demo:
weights + metadata) it is the SHA-256 of the ``sha256sum``-style listing
``"<hex>  <name>\\n"`` of those files, sorted by name; the per-file hashes are in
:attr:`LoadedModel.files`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import inspect
import itertools
import json
import os
import pickle
import re
import sys
import threading
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .input_space import InputSpace, from_metadata, from_transforms

__all__ = [
    "ModelSpec",
    "LoadedModel",
    "resolve_device",
    "load_model",
    "load_checkpoint",
    "extract_state_dict",
    "load_weights_into",
    "check_output",
    "parse_model_kwargs",
    "file_sha256",
    "is_torchscript_file",
    "TRUST_HINT",
]

NORMALIZATIONS = ("none", "zscore", "minmax")
KINDS = ("demo", "bundle", "python", "torchscript", "pickled")

#: How the user grants trust, named in every refusal.
TRUST_HINT = "pass --trust-model (CLI) or tick 'trust model code' (widget) only if it comes from a source you trust"

_NORMALIZATION_ALIASES = {
    "none": "none",
    "": "none",
    "zscore": "zscore",
    "z-score": "zscore",
    "z_score": "zscore",
    "standardize": "zscore",
    "minmax": "minmax",
    "min-max": "minmax",
    "min_max": "minmax",
}


# ---------------------------------------------------------------------------
# Data classes
# ---------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """What a model expects and what its outputs mean.

    Parameters
    ----------
    input_shape : tuple of 3 int or None
        Spatial grid (D, H, W) in voxels that the model expects; ``None``
        means any shape.
    channels : int or None
        Number of input channels; ``None`` means unknown (not checked).
    class_names : list of str
        One name per output score. Empty means unknown: see
        :meth:`LoadedModel.class_names_for`.
    normalization : str
        Intensity normalisation applied before the model: ``"none"``,
        ``"zscore"`` (per channel, mean 0, std 1) or ``"minmax"`` (per
        channel, to [0, 1]).
    space : InputSpace
        The rest of the declared input space: orientation, spacing, shape
        policy, intensity parameters, step order (see :attr:`input_space`).
    """

    input_shape: tuple[int, int, int] | None = None
    channels: int | None = None
    class_names: list[str] = field(default_factory=list)
    normalization: str = "none"
    space: InputSpace = field(default_factory=InputSpace)

    @property
    def input_space(self) -> InputSpace:
        """The whole declared :class:`~napari_xai.core.input_space.InputSpace` (shape, normalisation and
        channels from this spec; a bundle's ScaleIntensityRange stays a ``range`` normalisation)."""
        norm = self.normalization
        intensity = self.space.intensity
        if norm == "none" and self.space.normalization == "range":
            norm = "range"
        elif norm != self.space.normalization:
            intensity = ()
        return self.space.replace(shape=self.input_shape, normalization=norm, intensity=intensity,
                                  channels=self.channels)

    def __post_init__(self) -> None:
        if self.input_shape is not None:
            shape = tuple(int(s) for s in self.input_shape)
            if len(shape) != 3 or min(shape) < 1:
                raise UserError(
                    f"model input shape must be three positive voxel counts (D, H, W), got {self.input_shape}."
                )
            self.input_shape = shape  # type: ignore[assignment]
        if self.channels is not None:
            self.channels = int(self.channels)
            if self.channels < 1:
                raise UserError(f"model channel count must be at least 1, got {self.channels}.")
        self.class_names = [str(c) for c in self.class_names]
        self.normalization = _normalization(self.normalization, "model spec")


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


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _normalization(value: Any, where: str) -> str:
    key = str(value if value is not None else "none").strip().lower()
    if key not in _NORMALIZATION_ALIASES:
        raise UserError(f"{where}: normalization must be one of {', '.join(NORMALIZATIONS)}, got {value!r}.")
    return _NORMALIZATION_ALIASES[key]


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _combined_sha256(files: dict[str, str]) -> str:
    """One hash for several files: SHA-256 of the ``sha256sum`` listing sorted by name."""
    if len(files) == 1:
        return next(iter(files.values()))
    listing = "".join(f"{digest}  {name}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


def _hash_files(paths: list[Path]) -> dict[str, str]:
    """Per-file SHA-256, keyed by file name (``configs/...``/``models/...`` inside a bundle)."""
    out = {}
    for p in paths:
        key = f"{p.parent.name}/{p.name}" if p.parent.name in ("configs", "models") else p.name
        out[key] = file_sha256(p)
    return out


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if not p.exists():
        raise UserError(f"{what} {p} not found.")
    if p.is_dir():
        raise UserError(f"{what} {p} is a folder, expected a file.")
    return p


def _short(exc: BaseException, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _first(items: list[str], n: int = 3) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


# ---------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def is_torchscript_file(path: str | os.PathLike) -> bool:
    """True if ``path`` is a TorchScript archive (a zip with ``constants.pkl`` or ``code/``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    for name in names:
        parts = name.split("/")
        if parts[-1] == "constants.pkl" or "code" in parts[:-1]:
            return True
    return False


def _looks_like_torch_save(path: Path) -> bool:
    """Cheap check: a ``torch.save`` zip (with ``data.pkl``) or a legacy pickle stream."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return any(n.split("/")[-1] == "data.pkl" for n in zf.namelist())
        with open(path, "rb") as fh:
            head = fh.read(2)
    except (OSError, zipfile.BadZipFile):
        return False
    # Legacy (non-zip) torch.save starts with a pickle protocol >= 2 opcode.
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


_GLOBAL_RE = re.compile(r"GLOBAL\s+([\w.]+)")


def _needs_full_unpickling(exc: BaseException) -> str | None:
    """If a weights-only load failed only because of pickled globals, return the global's name."""
    text = str(exc)
    if not isinstance(exc, pickle.UnpicklingError) and "weights only load failed" not in text.lower():
        return None
    m = _GLOBAL_RE.search(text)
    if m is not None:
        return m.group(1).rstrip(".")
    if re.search(r"unsupported (global|class)", text, re.IGNORECASE):
        return "a Python object"
    return None


def load_checkpoint(path: str | os.PathLike, *, trust: bool = False, what: str = "checkpoint") -> Any:
    """Load a ``torch.save`` file onto the CPU, safely unless trusted.

    Parameters
    ----------
    path : path-like
        The checkpoint file.
    trust : bool
        Allow full unpickling (``weights_only=False``), which can run
        arbitrary code from the file. Only tried when the safe load fails
        because the file holds Python objects beyond tensors and containers.
    what : str
        How to call the file in error messages (``"weights"``...).

    Raises
    ------
    UserError
        If the file is missing, is TorchScript, is not a PyTorch checkpoint,
        or needs full unpickling without ``trust``.
    """
    p = _existing_file(path, what)
    if is_torchscript_file(p):
        raise UserError(
            f"{what} {p} is a TorchScript model, not a checkpoint; give it as the model source instead (--model {p})."
        )
    if not _looks_like_torch_save(p):
        raise UserError(f"{what} {p} is not a PyTorch checkpoint (expected a file written by torch.save).")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        culprit = _needs_full_unpickling(exc)
        if culprit is None:
            if isinstance(exc, pickle.UnpicklingError):
                detail = "damaged, truncated or another format"
            else:
                detail = _short(exc, 100)
            raise UserError(f"{what} {p} is not a readable PyTorch checkpoint ({detail}).") from None
        if not trust:
            raise UserError(
                f"{what} {p} holds Python objects ({culprit}) that need full unpickling, which can run arbitrary code; "
                f"{TRUST_HINT}."
            ) from None
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{what} {p} could not be unpickled even with trust ({_short(exc, 120)}).") from None


_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "state", "network", "net", "model_state", "weights")


def _is_tensor_mapping(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def extract_state_dict(obj: Any, where: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the state_dict in a loaded checkpoint.

    Accepts a bare state_dict, a dict wrapping one under a common key
    (``state_dict``, ``model_state_dict``, ``model``, ``network``...), or a
    whole ``nn.Module`` (only reachable with trust).

    Returns
    -------
    state_dict : dict
    notes : list of str
        What was unwrapped, for :attr:`LoadedModel.notes`.
    """
    if isinstance(obj, torch.nn.Module):
        return dict(obj.state_dict()), [f"{where} holds a whole {type(obj).__name__} module; its state_dict was used"]
    if _is_tensor_mapping(obj):
        return dict(obj), []
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if _is_tensor_mapping(inner):
                return dict(inner), [f"used the state_dict stored under '{key}' in {where}"]
        keys = [str(k) for k in list(obj)[:6]]
        raise UserError(f"{where} holds no state_dict (top-level keys: {', '.join(keys) or 'none'}).")
    raise UserError(f"{where} holds a {type(obj).__name__}, not a state_dict.")


_STRIP_PREFIXES = ("module.", "model.", "net.", "network.", "_orig_mod.")


def _match_prefix(sd: dict[str, torch.Tensor], expected: set[str]) -> tuple[dict[str, torch.Tensor], str | None]:
    """Strip a wrapper prefix (DataParallel ``module.``, Lightning ``model.``...) if that makes keys match."""
    if set(sd) == expected:
        return sd, None
    current = sd
    stripped: list[str] = []
    for _ in range(3):  # e.g. "model.module." from Lightning around DataParallel
        for prefix in _STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in current):
                candidate = {k[len(prefix):]: v for k, v in current.items()}
                stripped.append(prefix)
                current = candidate
                break
        else:
            break
        core = set(current)
        counters = {k for k in expected if k.endswith("num_batches_tracked")}
        if core <= expected and (expected - core) <= counters:
            return current, "".join(stripped)
    return sd, None


def load_weights_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> list[str]:
    """Load ``state_dict`` into ``module`` strictly, with helpful errors.

    A wrapper prefix (``module.`` from DataParallel, ``model.`` from
    Lightning...) is stripped when that makes the keys match. BatchNorm
    ``num_batches_tracked`` counters missing from old checkpoints are
    tolerated.

    Returns
    -------
    list of str
        Notes on what was adapted.

    Raises
    ------
    UserError
        Listing the first missing and unexpected keys, or the first shape
        mismatches.
    """
    cls = type(module).__name__
    reference = module.state_dict()
    expected = set(reference)
    notes: list[str] = []
    sd, prefix = _match_prefix(state_dict, expected)
    if prefix:
        notes.append(f"stripped the key prefix '{prefix}' from the weights in {where} (saved from a wrapped model)")
    missing = sorted(expected - set(sd))
    unexpected = sorted(set(sd) - expected)
    counters = [k for k in missing if k.endswith("num_batches_tracked")]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
        raise UserError(
            f"weights {where} do not match {cls}: {'; '.join(parts)} - check the model class and its keyword arguments."
        )
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs model {tuple(reference[k].shape)}"
        for k in sorted(sd)
        if tuple(sd[k].shape) != tuple(reference[k].shape)
    ]
    if shapes:
        raise UserError(
            f"weights {where} do not fit {cls}: {len(shapes)} shape mismatch(es), e.g. {_first(shapes, 2)} "
            "- check the model's keyword arguments."
        )
    if counters:
        notes.append(
            f"{len(counters)} BatchNorm num_batches_tracked counter(s) missing in {where}; they do not affect inference"
        )
    try:
        module.load_state_dict(sd, strict=not counters)
    except RuntimeError as exc:
        raise UserError(f"weights {where} could not be loaded into {cls} ({_short(exc, 120)}).") from None
    return notes


# ---------------------------------------------------------------------------
# Keyword arguments and metadata
# ---------------------------------------------------------------------------


def parse_model_kwargs(model_kwargs: str | Mapping | None) -> dict[str, Any]:
    """Constructor keyword arguments from a dict, JSON text or a ``.json`` file path.

    ``None`` and blank text mean no arguments.

    Raises
    ------
    UserError
        If the text is not valid JSON or not a JSON object.
    """
    if model_kwargs is None:
        return {}
    if isinstance(model_kwargs, Mapping):
        return dict(model_kwargs)
    text = str(model_kwargs).strip()
    if not text:
        return {}
    if not text.startswith("{") and text.lower().endswith(".json"):
        p = _existing_file(text, "model kwargs file")
        text = p.read_text(encoding="utf-8")
    try:
        value = check_config_size(json.loads(text), "--model-kwargs")
    except RecursionError:
        raise UserError(f"--model-kwargs nests deeper than {MAX_CONFIG_DEPTH} levels.") from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--model-kwargs is not valid JSON ({exc.msg} at character {exc.pos}); write e.g. '{{\"in_channels\": 1}}'."
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"--model-kwargs must be a JSON object like '{{\"in_channels\": 1}}', got {type(value).__name__}."
        )
    return value


#: Deepest nesting of lists/mappings a config, metadata or kwargs file may have (MONAI bundles use about 10).
MAX_CONFIG_DEPTH = 100
#: Most values a config may expand to, counting a YAML alias or an ``@`` reference each time it is used.
MAX_CONFIG_NODES = 200_000


class _Budget:
    """Counts values visited (with repeats) and nesting depth while a config is walked or resolved."""

    def __init__(self, what: str, max_nodes: int = MAX_CONFIG_NODES, max_depth: int = MAX_CONFIG_DEPTH):
        self.what, self.max_nodes, self.max_depth, self.nodes = what, max_nodes, max_depth, 0

    def visit(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise UserError(
                f"{self.what} expands to more than {self.max_nodes} values (repeated YAML aliases or @ references: "
                "a config bomb?); napari-xai refuses it."
            )
        if depth > self.max_depth:
            raise UserError(
                f"{self.what} nests deeper than {self.max_depth} levels (or its references form a cycle); "
                "napari-xai refuses it."
            )


def check_config_size(value: Any, what: str, budget: _Budget | None = None) -> Any:
    """Walk ``value`` (without recursion) and refuse it, in one line, if it nests deeper than
    :data:`MAX_CONFIG_DEPTH` or expands to more than :data:`MAX_CONFIG_NODES` values when shared
    (aliased) parts are counted each time they are used. Returns ``value``."""
    budget = budget or _Budget(what)
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        budget.visit(depth)
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
    return value


def load_config_text(text: str, path: Path | str, what: str, yaml_format: bool = False) -> Any:
    """Parse JSON (or YAML) text with bounded nesting and alias expansion; every failure is one line.

    Parameters
    ----------
    text : str
        The file's text.
    path : path-like
        Named in messages.
    what : str
        What the file is (``"bundle config"``...), named in messages.
    yaml_format : bool
        YAML (``yaml.safe_load``: no Python objects) instead of JSON.
    """
    try:
        if yaml_format:
            try:
                import yaml
            except ImportError:  # pragma: no cover - pyyaml ships with napari
                raise UserError(f"{what} {path} is YAML, which needs the pyyaml package.") from None
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise UserError(f"{what} {path} is not valid YAML ({_short(exc, 100)}).") from None
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{what} {path} is not valid JSON ({exc.msg}, line {exc.lineno}).") from None
    except RecursionError:
        raise UserError(f"{what} {path} nests deeper than {MAX_CONFIG_DEPTH} levels; napari-xai refuses it.") from None
    return check_config_size(value, f"{what} {path}")


def read_config(path: str | os.PathLike, what: str) -> dict:
    """Read a JSON or YAML (by suffix) file holding one mapping, bounded as :func:`load_config_text` says."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file.") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({_short(exc, 100)}).") from None
    yaml_format = path.suffix.lower() in (".yaml", ".yml")
    value = load_config_text(text, path, what, yaml_format)
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a {'mapping' if yaml_format else 'JSON object'}.")
    return value


def _read_json(path: Path, what: str) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file.") from None
    value = load_config_text(text, path, what)
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a JSON object.")
    return value


def _read_config(path: Path, what: str) -> dict:
    return read_config(path, what)


def _pick(section: Any, preferred: str) -> dict | None:
    if not isinstance(section, Mapping) or not section:
        return None
    item = section.get(preferred)
    if item is None:
        item = next(iter(section.values()))
    return item if isinstance(item, Mapping) else None


def _spatial_shape(value: Any, where: str, notes: list[str]) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: the input shape must be a list of three voxel counts, got {value!r}.")
    if any(not isinstance(v, int) or isinstance(v, bool) for v in value):
        notes.append(
            f"{where}: input shape {list(value)} is not fixed; volumes are given to the model at their own size"
        )
        return None
    if len(value) == 2:
        raise UserError(f"{where}: the model takes 2D input {list(value)}; napari-xai explains 3D models.")
    if len(value) != 3:
        raise UserError(f"{where}: the input shape must have three axes (D, H, W), got {list(value)}.")
    return tuple(value)  # type: ignore[return-value]


def _class_names_from_channel_def(channel_def: Any, where: str, notes: list[str]) -> list[str]:
    if not isinstance(channel_def, Mapping) or not channel_def:
        return []
    try:
        items = sorted((int(k), str(v)) for k, v in channel_def.items())
    except (TypeError, ValueError):
        notes.append(f"{where}: channel_def keys are not class indices; class names were not read")
        return []
    if [i for i, _ in items] != list(range(len(items))):
        notes.append(f"{where}: channel_def does not number classes 0..n-1; class names were not read")
        return []
    return [name for _, name in items]


def spec_from_metadata(meta: Mapping, where: str) -> tuple[ModelSpec, list[str]]:
    """Build a :class:`ModelSpec` from MONAI bundle or napari-xai metadata.

    See the module docstring for the keys read. ``where`` names the file in
    error messages.

    Returns
    -------
    spec : ModelSpec
    notes : list of str
        Remarks for :attr:`LoadedModel.notes` (e.g. a non-fixed input shape).
    """
    spec, notes, _ = _parse_metadata(meta, where)
    return spec, notes


def _parse_metadata(meta: Mapping, where: str) -> tuple[ModelSpec, list[str], bool]:
    """:func:`spec_from_metadata` plus whether a normalisation was declared."""
    notes: list[str] = []
    fmt = meta.get("network_data_format") if isinstance(meta.get("network_data_format"), Mapping) else {}
    inp = _pick(fmt.get("inputs"), "image") or {}
    out = _pick(fmt.get("outputs"), "pred") or {}
    shape_value = inp.get("spatial_shape")
    channels = inp.get("num_channels")
    names = _class_names_from_channel_def(out.get("channel_def"), where, notes)
    normalization: Any = "none"
    layers = [meta]
    if isinstance(meta.get("napari_xai"), Mapping):
        layers.append(meta["napari_xai"])
    declared_norm = False
    for layer in layers:
        if "input_shape" in layer:
            shape_value = layer["input_shape"]
        if "channels" in layer:
            channels = layer["channels"]
        if "class_names" in layer:
            value = layer["class_names"]
            if not isinstance(value, (list, tuple)):
                raise UserError(f"{where}: class_names must be a list of names, got {value!r}.")
            names = [str(v) for v in value]
        if "normalization" in layer:
            normalization = layer["normalization"]
            declared_norm = True
    shape = _spatial_shape(shape_value, where, notes)
    if channels is not None and (not isinstance(channels, int) or isinstance(channels, bool)):
        raise UserError(f"{where}: the channel count must be an integer, got {channels!r}.")
    spec = ModelSpec(
        input_shape=shape,
        channels=channels,
        class_names=names,
        normalization=_normalization(normalization, where),
        space=from_metadata(meta, where),
    )
    return spec, notes, declared_norm


# ---------------------------------------------------------------------------
# Safe network_def builder (MONAI bundles)
# ---------------------------------------------------------------------------

_ALLOWED_TARGET_PREFIXES = ("monai.networks.", "torch.nn.")
_ALLOWED_MODULE_PREFIXES = ("monai.networks", "torch.nn")
_SHORT_NAME_MODULES = ("monai.networks.nets", "monai.networks.blocks", "monai.networks.layers", "torch.nn")


class _Unsafe(Exception):
    """network_def needs MONAI's ConfigParser (code execution) to build."""


class _Fetches(_Unsafe):
    """network_def asks for a download of weights at build time."""


#: Public name of the "needs trust" exception raised by :func:`resolve_config_value` and :func:`build_network_def`.
UnsafeConfig = _Unsafe


def _resolve_target(name: Any, where: str) -> type:
    if not isinstance(name, str) or not name.strip():
        raise _Unsafe(f"{where} has a _target_ that is not a class name ({name!r})")
    name = name.strip()
    obj: Any = None
    if "." in name:
        if not name.startswith(_ALLOWED_TARGET_PREFIXES):
            raise _Unsafe(f"{where} builds '{name}', which is outside monai.networks and torch.nn")
        modname, _, attr = name.rpartition(".")
        try:
            obj = getattr(importlib.import_module(modname), attr, None)
        except Exception:  # noqa: BLE001 - unknown module path
            obj = None
        if obj is None:
            raise UserError(f"{where}: _target_ '{name}' was not found; check the spelling and your MONAI version.")
    else:
        for modname in _SHORT_NAME_MODULES:
            obj = getattr(importlib.import_module(modname), name, None)
            if obj is not None:
                break
        if obj is None:
            raise _Unsafe(f"{where} builds '{name}', which is not a class in monai.networks or torch.nn")
    if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
        raise _Unsafe(f"{where} calls '{name}', which is not an nn.Module class")
    if not str(getattr(obj, "__module__", "")).startswith(_ALLOWED_MODULE_PREFIXES):
        raise _Unsafe(f"{where} builds '{name}' from {obj.__module__}, outside monai.networks and torch.nn")
    return obj


def _lookup_reference(config: Mapping, ref: str, where: str) -> Any:
    node: Any = config
    for part in ref.replace("::", "#").split("#"):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise UserError(f"{where} refers to '@{ref}', which the inference config does not define.")
    return node


def resolve_config_value(config: Mapping, value: Any, where: str, budget: _Budget | None = None) -> Any:
    """``value`` from a bundle config with every ``@id`` reference replaced by the (resolved) value it names.

    Nothing is imported, built or evaluated: the result is plain data (``_target_`` mappings stay mappings).
    The expansion is bounded: at most :data:`MAX_CONFIG_NODES` values in all (a reference used twice counts
    twice) and :data:`MAX_CONFIG_DEPTH` levels of nesting, references included (so a reference cycle stops
    too). Reuse it for any config section (``network_def``, ``preprocessing``).

    Parameters
    ----------
    config : mapping
        The whole config, in which references are looked up (``#`` or ``::`` separates levels).
    value : Any
        The value to resolve, e.g. ``config["network_def"]``.
    where : str
        Names the value in messages (``"net/configs/inference.json network_def"``).
    budget : optional
        Share one budget between several calls (from :func:`new_config_budget`).

    Raises
    ------
    UnsafeConfig
        For a ``$`` expression, a ``%`` macro, a special key other than ``_target_``/``_desc_``/``_mode_``
        or a ``_mode_`` other than ``default``: these need MONAI's ``ConfigParser``, which runs code.
    UserError
        For a reference to nothing, an unsupported value type, or a config bomb (one line, fast).
    """
    budget = budget or _Budget(where)
    return _resolve(config, value, where, budget, 0)


def new_config_budget(what: str) -> _Budget:
    """A fresh expansion budget for :func:`resolve_config_value` (``what`` is named when it runs out)."""
    return _Budget(what)


def _resolve(config: Mapping, value: Any, where: str, budget: _Budget, depth: int) -> Any:
    budget.visit(depth)
    if isinstance(value, str):
        if value.startswith("$"):
            raise _Unsafe(f"{where} is a Python expression ('{value[:40]}')")
        if value.startswith("%"):
            raise _Unsafe(f"{where} is a macro that reads another config ('{value[:40]}')")
        if value.startswith("@"):
            target = _lookup_reference(config, value[1:], where)
            return _resolve(config, target, f"{where} -> {value}"[:300], budget, depth + 1)
        return value
    if isinstance(value, list):
        return [_resolve(config, v, f"{where}[{i}]", budget, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        special = [
            k for k in value if isinstance(k, str) and k.startswith("_") and k not in ("_target_", "_desc_", "_mode_")
        ]
        if special:
            raise _Unsafe(f"{where} uses {', '.join(special)}")
        if value.get("_mode_", "default") != "default":
            raise _Unsafe(f"{where} uses _mode_ '{value['_mode_']}'")
        return {str(k): _resolve(config, v, f"{where}.{k}", budget, depth + 1) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise UserError(f"{where}: unsupported value {value!r}."[:300])


def _instantiate(value: Any, where: str, notes: list[str]) -> Any:
    """Build the ``_target_`` mappings of a resolved value (inner ones first), refusing network fetches."""
    if isinstance(value, list):
        return [_instantiate(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    cls = _resolve_target(value["_target_"], where) if "_target_" in value else None
    kwargs = {k: _instantiate(v, f"{where}.{k}", notes) for k, v in value.items() if k not in _SPECIAL_KEYS}
    if cls is None:
        return kwargs
    kwargs = _no_downloads(cls, kwargs, where, notes)
    with _untrusted_build(f"{where}: {cls.__name__}(...)"):
        try:
            return cls(**kwargs)
        except _BuildRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - constructor errors of arbitrary networks
            raise UserError(f"{where}: {cls.__name__}(...) failed with these arguments ({_short(exc, 120)}).") from None


_SPECIAL_KEYS = ("_target_", "_desc_", "_mode_")


def _build_value(value: Any, config: Mapping, where: str, notes: list[str] | None = None) -> Any:
    """Build a network_def value without executing anything from the config."""
    return _instantiate(resolve_config_value(config, value, where), where, [] if notes is None else notes)


# -- no network, no writes, no processes while an untrusted bundle's network is built -----------------------------

#: Constructor arguments that make a network fetch weights when built (MONAI: ``pretrained``, ``pretrained_url``,
#: ``ResNetFeatures``' hub download, ``Transchex``'s ``path_or_repo_id``...), matched on the lower-case name.
_FETCH_ARG = re.compile(r"pretrain|url|download|hub|repo_id")


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == "" or value == 0


def _no_downloads(cls: type, kwargs: dict, where: str, notes: list[str]) -> dict:
    """Refuse an explicit argument that fetches weights; turn off one that does so by default."""
    for key, value in kwargs.items():
        if _FETCH_ARG.search(key.lower()) and not _is_off(value):
            raise _Fetches(f"{where} sets {key}={value!r}"[:200] + ", which downloads weights when the network is built")
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return kwargs
    out = dict(kwargs)
    for name, param in params.items():
        if name in out or not _FETCH_ARG.search(name.lower()) or param.default is inspect.Parameter.empty:
            continue
        if not _is_off(param.default):
            out[name] = False if isinstance(param.default, bool) else None
            notes.append(f"{where}: {cls.__name__}'s default {name}={param.default!r} (a download) was turned off; "
                         "the weights come from the bundle")
    return out


class _BuildRefused(UserError):
    """An untrusted build tried to reach the network, write a file or start a process."""


_GUARD = threading.local()
_GUARD_LOCK = threading.Lock()
_GUARD_INSTALLED = [False]
_NET_EVENTS = ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
               "socket.bind", "socket.sendto", "socket.sendmsg", "urllib.Request", "http.client.connect",
               "ftplib.connect", "smtplib.connect", "webbrowser.open")
_PROC_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                "os.forkpty", "os.startfile", "pty.spawn", "ctypes.dlopen")
_CHANGE_EVENTS = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown",
                  "os.link", "os.symlink", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _audit(event: str, args: tuple) -> None:
    state = getattr(_GUARD, "what", None)
    if state is None:
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        if not writes or "__pycache__" in str(path):  # reading is fine; so is Python's own bytecode cache
            return
        done = f"write {path}"
    elif event in _NET_EVENTS or event.startswith("socket."):
        if event in ("socket.__new__", "socket.gethostname", "socket.sethostname"):
            return
        done = f"reach the network ({event})"
    elif event in _PROC_EVENTS or event in _CHANGE_EVENTS:
        done = f"{'start a process' if event in _PROC_EVENTS else 'change files'} ({event})"
    else:
        return
    _GUARD.violations.append(done)
    raise PermissionError(f"napari-xai: an untrusted bundle may not {done}")


class _untrusted_build:
    """While active (in this thread), network, file writes and processes are refused and remembered."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        with _GUARD_LOCK:
            if not _GUARD_INSTALLED[0]:
                sys.addaudithook(_audit)
                _GUARD_INSTALLED[0] = True
        self.outer = getattr(_GUARD, "what", None), getattr(_GUARD, "violations", None)
        _GUARD.what, _GUARD.violations = self.what, []
        return self

    def __exit__(self, exc_type, exc, tb):
        violations = _GUARD.violations
        _GUARD.what, _GUARD.violations = self.outer
        if violations:
            if self.outer[1] is not None:
                self.outer[1].extend(violations)
            raise _BuildRefused(
                f"{self.what} tried to {violations[0]} while being built; an untrusted bundle never reaches the "
                f"network, writes files or starts processes; {TRUST_HINT}."
            ) from None
        return False


def build_network_def(config: Mapping, where: str = "network_def", notes: list[str] | None = None) -> torch.nn.Module:
    """Build ``config["network_def"]`` without running code from the config.

    References are resolved by :func:`resolve_config_value` (bounded), classes must come from
    ``monai.networks`` or ``torch.nn``, arguments that download weights are refused (defaults that would
    are turned off, noted in ``notes``), and the constructors run with network, file writes and processes
    refused.

    Raises
    ------
    UnsafeConfig
        If building it needs an expression, a macro, a download or a class outside
        ``monai.networks`` / ``torch.nn`` (the caller turns this into a trust request).
    UserError
        If the definition is missing or the constructor rejects its arguments.
    """
    if "network_def" not in config:
        raise UserError(f"{where}: the inference config has no 'network_def'.")
    net_def = config["network_def"]
    if isinstance(net_def, str) and net_def.startswith("@"):
        net_def = _lookup_reference(config, net_def[1:], where)
    if not isinstance(net_def, Mapping) or "_target_" not in net_def:
        raise _Unsafe(f"{where} is not a {{'_target_': ...}} definition")
    net = _build_value(net_def, config, where, notes)
    if not isinstance(net, torch.nn.Module):  # pragma: no cover - _resolve_target ensures a Module class
        raise UserError(f"{where} did not build an nn.Module.")
    return net


def _build_with_config_parser(folder: Path, cfg_path: Path, where: str) -> torch.nn.Module:
    """Trusted path: let MONAI's ConfigParser evaluate the bundle config (runs its code)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(cfg_path))
        if "bundle_root" not in parser.config:
            parser["bundle_root"] = str(folder)
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # noqa: BLE001 - arbitrary config code
        raise UserError(f"{where}: MONAI could not build network_def ({_short(exc, 140)}).") from None
    if not isinstance(net, torch.nn.Module):
        raise UserError(f"{where}: network_def built a {type(net).__name__}, not an nn.Module.")
    return net


def _bundle_input_space(config: Mapping, where: str) -> tuple[InputSpace, list[str]]:
    """The input space declared by the bundle's ``preprocessing`` transforms, read as data with the same
    no-code rules as ``network_def`` (``@`` references to plain values; no ``$`` expression, no ``%`` macro)."""
    if "preprocessing" not in config:
        return InputSpace(), []

    def read_value(value: Any, here: str) -> Any:
        try:
            return _build_value(value, config, here)
        except (_Unsafe, UserError) as exc:
            raise ValueError(str(exc)) from None

    return from_transforms(config["preprocessing"], where, read_value)


# ---------------------------------------------------------------------------
# Loaders per kind
# ---------------------------------------------------------------------------


def _finish(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module = module.to(device)
    module.eval()
    return module


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
        meta = _read_json(meta_path, "demo metadata")
        spec, notes = spec_from_metadata(meta, "demo metadata")
        from .demo_net import DemoNet

        net_kwargs = meta.get("net_kwargs") or {}
        if not isinstance(net_kwargs, Mapping):
            raise UserError("demo metadata: net_kwargs must be a JSON object.")
        net = DemoNet(**net_kwargs)
        sd, more = extract_state_dict(load_checkpoint(weights, what="demo weights"), "demo weights")
        notes += more + load_weights_into(net, sd, "demo weights")
        files = _hash_files([weights, meta_path])
    return LoadedModel(
        module=_finish(net, device),
        spec=spec,
        source="demo",
        kind="demo",
        sha256=_combined_sha256(files),
        device=device,
        is_scripted=False,
        files=files,
        notes=notes,
    )


def _load_torchscript(path: Path, device: torch.device, source: str) -> tuple[torch.nn.Module, ModelSpec, list[str]]:
    extra = {"metadata.json": ""}
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 marks TorchScript deprecated; loading it still works.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"TorchScript model {path} could not be loaded ({_short(exc, 120)}).") from None
    notes: list[str] = []
    spec = ModelSpec()
    text = extra.get("metadata.json") or ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if text.strip():
        try:
            meta = load_config_text(text, path.name, "the metadata.json inside")
        except UserError:
            notes.append(f"the metadata.json inside {path.name} is not valid JSON and was ignored")
            meta = None
        if isinstance(meta, Mapping):
            spec, more = spec_from_metadata(meta, f"metadata.json inside {path.name}")
            notes += more
            notes.append(f"input shape, channels and class names read from the metadata.json inside {path.name}")
    module.eval()
    return module, spec, notes


def _require_trust_for_torchscript(path: Path, trust: bool) -> None:
    """TorchScript is compiled code: loading runs its ``__setstate__`` and a call runs its methods, which can
    read and write any file (``torch.from_file(..., shared=True)``). It needs the trust opt-in, like code."""
    if not trust:
        raise UserError(
            f"{path} is a TorchScript model, which is code: loading and running it can read and write files on this "
            f"computer; {TRUST_HINT}."
        )


_module_counter = itertools.count()


def _import_python_file(py: Path) -> Any:
    digest = hashlib.sha1(str(py.resolve()).encode()).hexdigest()[:10]
    name = f"napari_xai_user_model_{py.stem.replace('-', '_')}_{digest}_{next(_module_counter)}"
    spec = importlib.util.spec_from_file_location(name, py)
    if spec is None or spec.loader is None:
        raise UserError(f"model file {py} cannot be imported as Python.")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    folder = str(py.parent.resolve())
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(mod)
    except SystemExit as exc:
        sys.modules.pop(name, None)
        raise UserError(
            f"importing model file {py} called sys.exit({exc.code!r}); a model file must only define its classes "
            "(put script code under if __name__ == '__main__':)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - user code
        sys.modules.pop(name, None)
        where = ""
        if isinstance(exc, SyntaxError) and exc.lineno:
            where = f" at line {exc.lineno}"
        raise UserError(f"importing model file {py} failed{where} ({_short(exc, 120)}).") from None
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:  # pragma: no cover
                pass
    return mod


def _load_python(
    py_text: str, class_name: str, weights: Any, model_kwargs: Any, device: torch.device, trust: bool
) -> tuple[torch.nn.Module, dict[str, str], list[str]]:
    py = _existing_file(py_text, "model file")
    kwargs = parse_model_kwargs(model_kwargs)
    mod = _import_python_file(py)
    obj: Any = mod
    for part in class_name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            break
    if obj is None:
        found = [
            n
            for n, v in vars(mod).items()
            if inspect.isclass(v) and issubclass(v, torch.nn.Module) and v.__module__ == mod.__name__
        ]
        hint = f"; it defines {', '.join(found)}" if found else "; it defines no nn.Module class"
        raise UserError(f"model file {py} has no class '{class_name}'{hint}.")
    if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
        raise UserError(f"'{class_name}' in {py} is not an nn.Module class.")
    try:
        net = obj(**kwargs)
    except SystemExit as exc:
        raise UserError(f"{class_name}(**model_kwargs) in {py} called sys.exit({exc.code!r}); a model's "
                        "constructor must not end the program.") from None
    except Exception as exc:  # noqa: BLE001 - user constructor
        raise UserError(f"{class_name}(**model_kwargs) failed ({_short(exc, 140)}); check --model-kwargs.") from None
    notes: list[str] = []
    paths = [py]
    if weights is None:
        notes.append(
            f"no weights given: {class_name} keeps the weights its constructor made (random unless it loads its own)"
        )
    else:
        wpath = _existing_file(weights, "weights")
        sd, more = extract_state_dict(load_checkpoint(wpath, trust=trust, what="weights"), f"weights {wpath.name}")
        notes += more + load_weights_into(net, sd, wpath.name)
        paths.append(wpath)
    return net, _hash_files(paths), notes


def _load_bundle(
    folder: Path, weights: Any, device: torch.device, trust: bool
) -> tuple[torch.nn.Module, ModelSpec, dict[str, str], list[str], bool]:
    """Returns module, spec, file hashes, notes and whether the module is TorchScript."""
    configs = folder / "configs"
    names = ("inference.json", "inference.yaml", "inference.yml")
    cfg_path = next((configs / n for n in names if (configs / n).is_file()), None)
    if cfg_path is None:
        raise UserError(f"{folder} is a folder but not a MONAI bundle: configs/inference.json not found.")
    config = _read_config(cfg_path, "bundle config")
    notes: list[str] = []
    meta_path = configs / "metadata.json"
    declared_norm = False
    if meta_path.is_file():
        spec, more, declared_norm = _parse_metadata(
            _read_json(meta_path, "bundle metadata"), f"{folder.name}/configs/metadata.json"
        )
        notes += more
    else:
        spec = ModelSpec()
        notes.append(f"{folder.name} has no configs/metadata.json: input shape and class names are unknown")
    space, more = _bundle_input_space(config, f"{folder.name}/configs/{cfg_path.name} preprocessing")
    notes += more
    if meta_path.is_file():
        # metadata.json's orientation, spacing and shape_policy (top level or napari_xai) win over the transforms
        space = from_metadata(_read_json(meta_path, "bundle metadata"), f"{folder.name}/configs/metadata.json", space)
    spec.space = space
    if spec.input_shape is None and space.shape is not None:
        spec.input_shape = space.shape
    if not declared_norm:
        norm = space.normalization if space.normalization in NORMALIZATIONS else "none"
        spec.normalization = norm
        if space.normalization != "none":
            notes.append(f"normalization '{space.normalization}' inferred from the bundle's preprocessing transforms")
    if spec.channels is None:
        net_def = config.get("network_def")
        in_ch = net_def.get("in_channels") if isinstance(net_def, Mapping) else None
        if isinstance(in_ch, int) and not isinstance(in_ch, bool):
            spec.channels = in_ch

    if weights is not None:
        wpath = _existing_file(weights, "weights")
    else:
        wpath = folder / "models" / "model.pt"
        ts_path = folder / "models" / "model.ts"
        if not wpath.is_file() and ts_path.is_file():
            _require_trust_for_torchscript(ts_path, trust)
            module, ts_spec, ts_notes = _load_torchscript(ts_path, device, str(ts_path))
            notes.append(f"{folder.name} has no models/model.pt; its TorchScript models/model.ts was used")
            if not meta_path.is_file():
                spec, notes = ts_spec, notes + ts_notes
            hashed = [ts_path, meta_path] if meta_path.is_file() else [ts_path]
            return module, spec, _hash_files(hashed), notes, True
        if not wpath.is_file():
            raise UserError(f"bundle {folder} has no weights: models/model.pt not found (or pass --weights FILE).")

    where = f"{folder.name}/configs/{cfg_path.name} network_def"
    try:
        net = build_network_def(config, where, notes)
    except _Unsafe as reason:
        if not trust and isinstance(reason, _Fetches):
            raise UserError(
                f"{reason}; an untrusted bundle never reaches the network: remove it (the weights come from "
                f"models/model.pt), or {TRUST_HINT}."
            ) from None
        if not trust:
            raise UserError(
                f"{reason}: building it would run code from the bundle config; {TRUST_HINT}."
            ) from None
        net = _build_with_config_parser(folder, cfg_path, where)
        notes.append(f"network_def built by MONAI's ConfigParser (trusted): {reason}")
    sd, more = extract_state_dict(load_checkpoint(wpath, trust=trust, what="weights"), f"weights {wpath.name}")
    notes += more + load_weights_into(net, sd, wpath.name)
    return net, spec, _hash_files([wpath, cfg_path]), notes, False


def _split_python_source(source: str) -> tuple[str, str] | None:
    if ":" not in source:
        return None
    left, _, right = source.rpartition(":")
    if left.lower().endswith(".py") and right and re.fullmatch(r"[A-Za-z_][\w.]*", right):
        return left, right
    return None


def source_file(source: str) -> tuple[str, str]:
    """(the file or folder a model source names, what follows it): ``net.py:Net`` -> (``net.py``, ``:Net``);
    a bundle folder or a file -> (itself, "")."""
    py = _split_python_source(source)
    return (py[0], ":" + py[1]) if py else (source, "")


def model_files(source: str | os.PathLike, weights: str | os.PathLike | None = None) -> tuple[str, dict[str, str], bool]:
    """What :func:`load_model` would load for ``source``, found and hashed WITHOUT loading (importing,
    unpickling) anything: a record's hashes are checked with it before any code could run.

    Returns
    -------
    kind : str
        ``"demo"``, ``"python"``, ``"bundle"``, ``"torchscript"`` or ``"pickled"``.
    files : dict
        Each file's SHA-256, keyed as :attr:`LoadedModel.files` keys them (``{}`` for the demo, which ships
        with napari-xai); :func:`combined_sha256` of it is :attr:`LoadedModel.sha256`.
    runs_code : bool
        True when loading or running it runs code from the files: a Python file or TorchScript (also a
        bundle whose model is ``models/model.ts``).
    """
    text = os.fspath(source).strip() if source is not None else ""
    if text.lower() == "demo":
        return "demo", {}, False
    py = _split_python_source(text)
    if py is not None:
        paths = [_existing_file(py[0], "model file")]
        if weights is not None:
            paths.append(_existing_file(weights, "weights"))
        return "python", _hash_files(paths), True
    path = Path(os.path.expanduser(text))
    if not path.exists():
        raise UserError(f"model source {text} not found.")
    if path.is_dir():
        configs = path / "configs"
        cfg = next((configs / n for n in ("inference.json", "inference.yaml", "inference.yml")
                    if (configs / n).is_file()), None)
        if cfg is None:
            raise UserError(f"{path} is a folder but not a MONAI bundle: configs/inference.json not found.")
        if weights is not None:
            return "bundle", _hash_files([_existing_file(weights, "weights"), cfg]), False
        wpath, ts_path, meta = path / "models" / "model.pt", path / "models" / "model.ts", configs / "metadata.json"
        if not wpath.is_file() and ts_path.is_file():
            return "bundle", _hash_files([ts_path, meta] if meta.is_file() else [ts_path]), True
        return "bundle", _hash_files([wpath, cfg] if wpath.is_file() else [cfg]), False
    if is_torchscript_file(path):
        return "torchscript", _hash_files([path]), True
    return "pickled", _hash_files([path]), False


def combined_sha256(files: dict[str, str]) -> str:
    """:attr:`LoadedModel.sha256` from its per-file hashes (see the module docstring)."""
    return _combined_sha256(files)


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

    py = _split_python_source(text)
    if py is not None:
        net, files, notes = _load_python(py[0], py[1], weights, kwargs, dev, trust)
        return LoadedModel(
            module=_finish(net, dev),
            spec=ModelSpec(),
            source=text,
            kind="python",
            sha256=_combined_sha256(files),
            device=dev,
            is_scripted=False,
            files=files,
            notes=notes,
        )

    path = Path(os.path.expanduser(text))
    if not path.exists():
        if text.lower().endswith(".py") or ":" in text:
            raise UserError(f"model {text!r} not found; a Python model is given as path/to/file.py:ClassName.")
        raise UserError(
            f"model source {text} not found; use demo, a MONAI bundle folder, file.py:ClassName or a TorchScript file."
        )

    if path.is_dir():
        _reject_extra("MONAI bundle", weights, kwargs, allow_weights=True)
        net, spec, files, notes, scripted = _load_bundle(path, weights, dev, trust)
        module = net if scripted else _finish(net, dev)
        return LoadedModel(
            module=module,
            spec=spec,
            source=text,
            kind="bundle",
            sha256=_combined_sha256(files),
            device=dev,
            is_scripted=scripted,
            files=files,
            notes=notes,
        )

    if path.suffix.lower() == ".py":
        raise UserError(f"name the model class: --model {text}:ClassName.")

    if is_torchscript_file(path):
        _reject_extra("TorchScript", weights, kwargs)
        _require_trust_for_torchscript(path, trust)
        module, spec, notes = _load_torchscript(path, dev, text)
        files = _hash_files([path])
        return LoadedModel(
            module=module,
            spec=spec,
            source=text,
            kind="torchscript",
            sha256=_combined_sha256(files),
            device=dev,
            is_scripted=True,
            files=files,
            notes=notes,
        )

    # A plain torch.save file: only a whole pickled nn.Module can be a model.
    _reject_extra("pickled", weights, kwargs)
    obj = load_checkpoint(path, trust=trust, what="model file")
    if isinstance(obj, torch.nn.Module):
        files = _hash_files([path])
        return LoadedModel(
            module=_finish(obj, dev),
            spec=ModelSpec(),
            source=text,
            kind="pickled",
            sha256=_combined_sha256(files),
            device=dev,
            is_scripted=False,
            files=files,
            notes=[f"{path.name} is a whole pickled {type(obj).__name__}, loaded with trust"],
        )
    raise UserError(
        f"{path} holds weights, not a model; give the network too: --model path/to/net.py:ClassName --weights {path}."
    )


# ---------------------------------------------------------------------------
# Output check
# ---------------------------------------------------------------------------


def check_output(scores: Any, batch: int | None = None) -> torch.Tensor:
    """Check that a model output is classifier scores of shape (N, classes).

    Parameters
    ----------
    scores : Any
        What the model returned.
    batch : int, optional
        Expected N (the input's batch size).

    Returns
    -------
    torch.Tensor
        ``scores`` itself.

    Raises
    ------
    UserError
        For tuples, lists, dicts, non-floating tensors, segmentation-shaped
        or otherwise non-(N, classes) outputs, and non-finite scores.
    """
    later = "napari-xai explains classifiers returning (N, classes) - segmentation support comes later"
    if isinstance(scores, (tuple, list)):
        shapes = ", ".join(str(tuple(s.shape)) if isinstance(s, torch.Tensor) else type(s).__name__ for s in scores[:4])
        raise UserError(f"model output is a {type(scores).__name__} ({shapes}); {later}.")
    if isinstance(scores, Mapping):
        raise UserError(f"model output is a dict with keys {', '.join(map(str, list(scores)[:4]))}; {later}.")
    if not isinstance(scores, torch.Tensor):
        raise UserError(f"model output is a {type(scores).__name__}, not a tensor; {later}.")
    shape = tuple(scores.shape)
    if scores.ndim != 2:
        raise UserError(f"model output has shape {shape}; {later}.")
    if batch is not None and shape[0] != batch:
        raise UserError(f"model output has shape {shape} for a batch of {batch}; {later}.")
    if shape[1] < 1:
        raise UserError(f"model output has shape {shape}: no class scores.")
    if not torch.is_floating_point(scores):
        raise UserError(
            f"model output has integer type {scores.dtype} (labels?); napari-xai needs class scores or logits."
        )
    if not bool(torch.isfinite(scores.detach()).all()):
        raise UserError(
            f"model output of shape {shape} contains NaN or Inf; check the input volume and its normalization."
        )
    return scores
