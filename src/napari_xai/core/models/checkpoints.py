"""Checkpoint files: ``torch.load`` (full unpickling only with trust), TorchScript (code: only with trust),
state dicts and loading them into a network."""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, first_few, short_error
from .bundle_config import load_config_text
from .metadata import ModelSpec, spec_from_metadata
from .sources import existing_file, is_torchscript_file, looks_like_torch_save

#: How the user grants trust, named in every refusal.
TRUST_HINT = "pass --trust-model (CLI) or tick 'trust model code' (widget) only if it comes from a source you trust"


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
    p = existing_file(path, what)
    if is_torchscript_file(p):
        raise UserError(
            f"{what} {p} is a TorchScript model, not a checkpoint; give it as the model source instead (--model {p})."
        )
    if not looks_like_torch_save(p):
        raise UserError(f"{what} {p} is not a PyTorch checkpoint (expected a file written by torch.save).")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types here
        culprit = _needs_full_unpickling(exc)
        if culprit is None:
            if isinstance(exc, pickle.UnpicklingError):
                detail = "damaged, truncated or another format"
            else:
                detail = short_error(exc, 100)
            raise UserError(f"{what} {p} is not a readable PyTorch checkpoint ({detail}).") from None
        if not trust:
            raise UserError(
                f"{what} {p} holds Python objects ({culprit}) that need full unpickling, which can run arbitrary code; "
                f"{TRUST_HINT}."
            ) from None
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{what} {p} could not be unpickled even with trust ({short_error(exc, 120)}).") from None


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
            parts.append(f"{len(missing)} missing key(s): {first_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {first_few(unexpected)}")
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
            f"weights {where} do not fit {cls}: {len(shapes)} shape mismatch(es), e.g. {first_few(shapes, 2)} "
            "- check the model's keyword arguments."
        )
    if counters:
        notes.append(
            f"{len(counters)} BatchNorm num_batches_tracked counter(s) missing in {where}; they do not affect inference"
        )
    try:
        module.load_state_dict(sd, strict=not counters)
    except RuntimeError as exc:
        raise UserError(f"weights {where} could not be loaded into {cls} ({short_error(exc, 120)}).") from None
    return notes


def load_torchscript(path: Path, device: torch.device, source: str) -> tuple[torch.nn.Module, ModelSpec, list[str]]:
    extra = {"metadata.json": ""}
    try:
        with warnings.catch_warnings():
            # torch >= 2.10 marks TorchScript deprecated; loading it still works.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit.*deprecated")
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"TorchScript model {path} could not be loaded ({short_error(exc, 120)}).") from None
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


def require_trust_for_torchscript(path: Path, trust: bool) -> None:
    """TorchScript is compiled code: loading runs its ``__setstate__`` and a call runs its methods, which can
    read and write any file (``torch.from_file(..., shared=True)``). It needs the trust opt-in, like code."""
    if not trust:
        raise UserError(
            f"{path} is a TorchScript model, which is code: loading and running it can read and write files on this "
            f"computer; {TRUST_HINT}."
        )
