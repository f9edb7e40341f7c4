"""Model adapters: one call (:func:`load_model`) loads a model from any supported source.

Sources, security (trust), metadata and hashes are specified in ``docs/models.md``. The files:

- ``load.py``: :func:`load_model`, :class:`LoadedModel`, devices, the demo;
- ``python_file.py``: ``file.py:ClassName`` sources;
- ``checkpoints.py``: ``torch.load`` and TorchScript with their trust checks, state dicts;
- ``bundle_config.py``: reading bundle configs as data, the no-code rules and the config-bomb bounds;
- ``bundle.py``: building a bundle's network, offline and sandboxed without trust, by MONAI with it;
- ``metadata.py``: :class:`ModelSpec`, metadata parsing, output checks;
- ``sources.py``: what a source names and its hashes, found without loading anything.
"""

from .bundle import build_network_def
from .bundle_config import (
    MAX_CONFIG_DEPTH,
    MAX_CONFIG_NODES,
    UnsafeConfig,
    check_config_size,
    load_config_text,
    new_config_budget,
    read_config,
    resolve_config_value,
)
from .checkpoints import (
    TRUST_HINT,
    extract_state_dict,
    is_torchscript_file,
    load_checkpoint,
    load_weights_into,
)
from .load import LoadedModel, load_model, resolve_device
from .metadata import (
    KINDS,
    NORMALIZATIONS,
    ModelSpec,
    check_output,
    parse_model_kwargs,
    spec_from_metadata,
)
from .sources import combined_sha256, file_sha256, model_files, source_file

__all__ = [
    "KINDS",
    "MAX_CONFIG_DEPTH",
    "MAX_CONFIG_NODES",
    "NORMALIZATIONS",
    "TRUST_HINT",
    "LoadedModel",
    "ModelSpec",
    "UnsafeConfig",
    "build_network_def",
    "check_config_size",
    "check_output",
    "combined_sha256",
    "extract_state_dict",
    "file_sha256",
    "is_torchscript_file",
    "load_checkpoint",
    "load_config_text",
    "load_model",
    "load_weights_into",
    "model_files",
    "new_config_budget",
    "parse_model_kwargs",
    "read_config",
    "resolve_config_value",
    "resolve_device",
    "source_file",
    "spec_from_metadata",
]
