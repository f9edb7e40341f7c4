"""MONAI bundle configs read as data: bounded JSON/YAML reading (no config bombs), ``@`` references, and the
no-code rules that decide whether napari-xai can build a ``network_def`` itself."""

from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, short_error

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
                raise UserError(f"{what} {path} is not valid YAML ({short_error(exc, 100)}).") from None
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserError(f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}).") from None
    except RecursionError:
        raise UserError(f"{what} {path} nests deeper than {MAX_CONFIG_DEPTH} levels; napari-xai refuses it.") from None
    return check_config_size(value, f"{what} {path}")


def read_config_file(path: str | os.PathLike, what: str, yaml_format: bool | None = None) -> Any:
    """Read and parse a JSON or YAML file (``yaml_format`` None: by suffix), bounded as :func:`load_config_text`
    says; a missing, unreadable or malformed file is one line naming ``what``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file.") from None
    except OSError as exc:
        raise UserError(f"{what} {path} cannot be read ({short_error(exc, 100)}).") from None
    if yaml_format is None:
        yaml_format = path.suffix.lower() in (".yaml", ".yml")
    return load_config_text(text, path, what, yaml_format)


def read_config(path: str | os.PathLike, what: str, yaml_format: bool | None = None) -> dict:
    """Read a JSON or YAML (``yaml_format`` None: by suffix) file holding one mapping, bounded as
    :func:`load_config_text` says."""
    path = Path(path)
    if yaml_format is None:
        yaml_format = path.suffix.lower() in (".yaml", ".yml")
    value = read_config_file(path, what, yaml_format)
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold a {'mapping' if yaml_format else 'JSON object'}.")
    return value


def read_json(path: Path, what: str) -> dict:
    """A JSON file holding one object (whatever its suffix), as :func:`read_config` reads it."""
    return read_config(path, what, yaml_format=False)


_ALLOWED_TARGET_PREFIXES = ("monai.networks.", "torch.nn.")


_ALLOWED_MODULE_PREFIXES = ("monai.networks", "torch.nn")


_SHORT_NAME_MODULES = ("monai.networks.nets", "monai.networks.blocks", "monai.networks.layers", "torch.nn")


class Unsafe(Exception):
    """network_def needs MONAI's ConfigParser (code execution) to build."""


class Fetches(Unsafe):
    """network_def asks for a download of weights at build time."""


#: Public name of the "needs trust" exception raised by :func:`resolve_config_value` and :func:`build_network_def`.
UnsafeConfig = Unsafe


def resolve_monai_target(name: Any, where: str) -> type:
    if not isinstance(name, str) or not name.strip():
        raise Unsafe(f"{where} has a _target_ that is not a class name ({name!r})")
    name = name.strip()
    obj: Any = None
    if "." in name:
        if not name.startswith(_ALLOWED_TARGET_PREFIXES):
            raise Unsafe(f"{where} builds '{name}', which is outside monai.networks and torch.nn")
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
            raise Unsafe(f"{where} builds '{name}', which is not a class in monai.networks or torch.nn")
    if not (inspect.isclass(obj) and issubclass(obj, torch.nn.Module)):
        raise Unsafe(f"{where} calls '{name}', which is not an nn.Module class")
    if not str(getattr(obj, "__module__", "")).startswith(_ALLOWED_MODULE_PREFIXES):
        raise Unsafe(f"{where} builds '{name}' from {obj.__module__}, outside monai.networks and torch.nn")
    return obj


def lookup_reference(config: Mapping, ref: str, where: str) -> Any:
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
            raise Unsafe(f"{where} is a Python expression ('{value[:40]}')")
        if value.startswith("%"):
            raise Unsafe(f"{where} is a macro that reads another config ('{value[:40]}')")
        if value.startswith("@"):
            target = lookup_reference(config, value[1:], where)
            return _resolve(config, target, f"{where} -> {value}"[:300], budget, depth + 1)
        return value
    if isinstance(value, list):
        return [_resolve(config, v, f"{where}[{i}]", budget, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        special = [
            k for k in value if isinstance(k, str) and k.startswith("_") and k not in ("_target_", "_desc_", "_mode_")
        ]
        if special:
            raise Unsafe(f"{where} uses {', '.join(special)}")
        if value.get("_mode_", "default") != "default":
            raise Unsafe(f"{where} uses _mode_ '{value['_mode_']}'")
        return {str(k): _resolve(config, v, f"{where}.{k}", budget, depth + 1) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise UserError(f"{where}: unsupported value {value!r}."[:300])
