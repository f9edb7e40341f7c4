"""Building a MONAI bundle's network: offline and sandboxed without trust, by MONAI's ConfigParser with it."""

from __future__ import annotations

import inspect
import os
import re
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, short_error
from ..input_space import InputSpace, from_metadata, from_transforms
from .bundle_config import (
    Fetches,
    Unsafe,
    lookup_reference,
    read_config,
    read_json,
    resolve_config_value,
    resolve_monai_target,
)
from .checkpoints import (
    TRUST_HINT,
    extract_state_dict,
    load_checkpoint,
    load_torchscript,
    load_weights_into,
    require_trust_for_torchscript,
)
from .metadata import NORMALIZATIONS, ModelSpec, parse_metadata
from .sources import existing_file, hash_files


def _instantiate(value: Any, where: str, notes: list[str]) -> Any:
    """Build the ``_target_`` mappings of a resolved value (inner ones first), refusing network fetches."""
    if isinstance(value, list):
        return [_instantiate(v, f"{where}[{i}]", notes) for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    cls = resolve_monai_target(value["_target_"], where) if "_target_" in value else None
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
            raise UserError(f"{where}: {cls.__name__}(...) failed with these arguments ({short_error(exc, 120)}).") from None


_SPECIAL_KEYS = ("_target_", "_desc_", "_mode_")


def _build_value(value: Any, config: Mapping, where: str, notes: list[str] | None = None) -> Any:
    """Build a network_def value without executing anything from the config."""
    return _instantiate(resolve_config_value(config, value, where), where, [] if notes is None else notes)


#: Constructor arguments that make a network fetch weights when built (MONAI: ``pretrained``, ``pretrained_url``,
#: ``ResNetFeatures``' hub download, ``Transchex``'s ``path_or_repo_id``...), matched on the lower-case name.
_FETCH_ARG = re.compile(r"pretrain|url|download|hub|repo_id")


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == "" or value == 0


def _no_downloads(cls: type, kwargs: dict, where: str, notes: list[str]) -> dict:
    """Refuse an explicit argument that fetches weights; turn off one that does so by default."""
    for key, value in kwargs.items():
        if _FETCH_ARG.search(key.lower()) and not _is_off(value):
            raise Fetches(f"{where} sets {key}={value!r}"[:200] + ", which downloads weights when the network is built")
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
        net_def = lookup_reference(config, net_def[1:], where)
    if not isinstance(net_def, Mapping) or "_target_" not in net_def:
        raise Unsafe(f"{where} is not a {{'_target_': ...}} definition")
    net = _build_value(net_def, config, where, notes)
    if not isinstance(net, torch.nn.Module):  # pragma: no cover - resolve_monai_target ensures a Module class
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
        raise UserError(f"{where}: MONAI could not build network_def ({short_error(exc, 140)}).") from None
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
        except (Unsafe, UserError) as exc:
            raise ValueError(str(exc)) from None

    return from_transforms(config["preprocessing"], where, read_value)


def load_bundle(
    folder: Path, weights: Any, device: torch.device, trust: bool
) -> tuple[torch.nn.Module, ModelSpec, dict[str, str], list[str], bool]:
    """Returns module, spec, file hashes, notes and whether the module is TorchScript."""
    configs = folder / "configs"
    names = ("inference.json", "inference.yaml", "inference.yml")
    cfg_path = next((configs / n for n in names if (configs / n).is_file()), None)
    if cfg_path is None:
        raise UserError(f"{folder} is a folder but not a MONAI bundle: configs/inference.json not found.")
    config = read_config(cfg_path, "bundle config")
    notes: list[str] = []
    meta_path = configs / "metadata.json"
    declared_norm = False
    if meta_path.is_file():
        spec, more, declared_norm = parse_metadata(
            read_json(meta_path, "bundle metadata"), f"{folder.name}/configs/metadata.json"
        )
        notes += more
    else:
        spec = ModelSpec()
        notes.append(f"{folder.name} has no configs/metadata.json: input shape and class names are unknown")
    space, more = _bundle_input_space(config, f"{folder.name}/configs/{cfg_path.name} preprocessing")
    notes += more
    if meta_path.is_file():
        # metadata.json's orientation, spacing and shape_policy (top level or napari_xai) win over the transforms
        space = from_metadata(read_json(meta_path, "bundle metadata"), f"{folder.name}/configs/metadata.json", space)
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
        wpath = existing_file(weights, "weights")
    else:
        wpath = folder / "models" / "model.pt"
        ts_path = folder / "models" / "model.ts"
        if not wpath.is_file() and ts_path.is_file():
            require_trust_for_torchscript(ts_path, trust)
            module, ts_spec, ts_notes = load_torchscript(ts_path, device, str(ts_path))
            notes.append(f"{folder.name} has no models/model.pt; its TorchScript models/model.ts was used")
            if not meta_path.is_file():
                spec, notes = ts_spec, notes + ts_notes
            hashed = [ts_path, meta_path] if meta_path.is_file() else [ts_path]
            return module, spec, hash_files(hashed), notes, True
        if not wpath.is_file():
            raise UserError(f"bundle {folder} has no weights: models/model.pt not found (or pass --weights FILE).")

    where = f"{folder.name}/configs/{cfg_path.name} network_def"
    try:
        net = build_network_def(config, where, notes)
    except Unsafe as reason:
        if not trust and isinstance(reason, Fetches):
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
    return net, spec, hash_files([wpath, cfg_path]), notes, False
