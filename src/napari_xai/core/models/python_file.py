"""``file.py:ClassName`` sources: importing the file (the user's explicit choice) and loading its weights."""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import importlib.util
import inspect
import itertools
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError, short_error
from .checkpoints import extract_state_dict, load_checkpoint, load_weights_into
from .metadata import parse_model_kwargs
from .sources import existing_file, hash_files

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
        raise UserError(f"importing model file {py} failed{where} ({short_error(exc, 120)}).") from None
    finally:
        if added:
            try:
                sys.path.remove(folder)
            except ValueError:  # pragma: no cover
                pass
    return mod


def load_python(
    py_text: str, class_name: str, weights: Any, model_kwargs: Any, device: torch.device, trust: bool
) -> tuple[torch.nn.Module, dict[str, str], list[str]]:
    py = existing_file(py_text, "model file")
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
        raise UserError(f"{class_name}(**model_kwargs) failed ({short_error(exc, 140)}); check --model-kwargs.") from None
    notes: list[str] = []
    paths = [py]
    if weights is None:
        notes.append(
            f"no weights given: {class_name} keeps the weights its constructor made (random unless it loads its own)"
        )
    else:
        wpath = existing_file(weights, "weights")
        sd, more = extract_state_dict(load_checkpoint(wpath, trust=trust, what="weights"), f"weights {wpath.name}")
        notes += more + load_weights_into(net, sd, wpath.name)
        paths.append(wpath)
    return net, hash_files(paths), notes
