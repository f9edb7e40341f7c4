"""Tests for napari_xai.core.models: every model source, the security gates and the bad-input errors.

Models are tiny and every bundle / checkpoint is written to tmp_path at test time.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.resources
import importlib.util
import json
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from napari_xai.core import models
from napari_xai.core.errors import UserError
from napari_xai.core.models import (
    LoadedModel,
    ModelSpec,
    check_output,
    load_model,
    resolve_device,
)

# torch >= 2.10 marks torch.jit.script/save deprecated; the tests still build TorchScript files with them.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:FutureWarning")

FIXTURES = Path(__file__).parent / "fixtures"
TINY_PY = FIXTURES / "tiny_net.py"


def _import_fixture(name: str = "tiny_net_reference"):
    """Import the fixture file independently of the loader under test."""
    spec = importlib.util.spec_from_file_location(name, TINY_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def tiny(tmp_path):
    """A TinyNet(width=4) with seeded weights, its state_dict file and a fixed input."""
    torch.manual_seed(0)
    ref = _import_fixture().TinyNet(in_channels=1, n_classes=3, width=4).eval()
    weights = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), weights)
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        expected = ref(x)
    return ref, weights, x, expected


# ---------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------


def test_resolve_device_default_and_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    assert resolve_device("auto").type == expected
    assert resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_cuda_missing_or_present():
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available.*--device cpu"):
            resolve_device("cuda")
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")
    else:
        assert resolve_device("cuda").type == "cuda"
        assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "cuda:x", "cpu:1", "mps", "cuda0"])
def test_resolve_device_unknown(bad):
    with pytest.raises(UserError, match="unknown device"):
        resolve_device(bad)


def test_load_model_with_cuda_missing_is_user_error(tiny):
    _, weights, _, _ = tiny
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs={"n_classes": 3}, device="cuda")
    else:
        lm = load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs={"n_classes": 3}, device="cuda")
        assert next(lm.module.parameters()).device.type == "cuda"


# ---------------------------------------------------------------------------
# Python file + state_dict
# ---------------------------------------------------------------------------


def test_python_file_with_state_dict(tiny):
    ref, weights, x, expected = tiny
    lm = load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs='{"in_channels": 1, "n_classes": 3}')
    assert isinstance(lm, LoadedModel)
    assert lm.kind == "python" and not lm.is_scripted
    assert lm.device == torch.device("cpu")
    assert not lm.module.training
    # The loaded parameters are exactly the saved tensors.
    for name, tensor in ref.state_dict().items():
        assert torch.equal(lm.module.state_dict()[name], tensor)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)
    # Identity: both files that define the model are hashed; the combined hash is
    # the sha256 of the sha256sum-style listing.
    assert lm.files == {"tiny_net.py": _sha256(TINY_PY), "tiny.pt": _sha256(weights)}
    listing = "".join(f"{h}  {n}\n" for n, h in sorted(lm.files.items()))
    assert lm.sha256 == hashlib.sha256(listing.encode()).hexdigest()
    # Without metadata: spec is empty, names are filled from the output size.
    assert lm.spec == ModelSpec()
    assert lm.class_names_for(3) == ["class 0", "class 1", "class 2"]
    assert lm.name == "TinyNet"


def test_python_file_imports_under_unique_names(tiny):
    _, weights, _, _ = tiny
    a = load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs={"n_classes": 3})
    b = load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs={"n_classes": 3})
    mod_a, mod_b = type(a.module).__module__, type(b.module).__module__
    assert mod_a != mod_b
    assert mod_a.startswith("napari_xai_user_model_") and mod_a in sys.modules


def test_key_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    torch.manual_seed(0)
    other = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU())
    weights = tmp_path / "other.pt"
    torch.save(other.state_dict(), weights)
    with pytest.raises(UserError) as err:
        load_model(f"{TINY_PY}:TinyNet", weights=weights)
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing key(s)" in msg and "conv.weight" in msg and "fc.bias" in msg
    assert "unexpected key(s)" in msg and "0.weight" in msg


def test_shape_mismatch_names_the_tensor(tiny):
    _, weights, _, _ = tiny  # saved with width=4, n_classes=3
    with pytest.raises(UserError, match=r"shape mismatch.*conv\.bias \(4,\) vs model \(8,\).*keyword arguments"):
        load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs={"n_classes": 3, "width": 8})


def test_wrapped_and_dataparallel_checkpoint(tiny, tmp_path):
    ref, _, x, expected = tiny
    wrapped = {"epoch": 7, "state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}}
    path = tmp_path / "wrapped.pth"
    torch.save(wrapped, path)
    lm = load_model(f"{TINY_PY}:TinyNet", weights=path, model_kwargs={"n_classes": 3})
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)
    joined = " | ".join(lm.notes)
    assert "'state_dict'" in joined and "'module.'" in joined


def test_missing_batchnorm_counters_are_tolerated(tmp_path):
    torch.manual_seed(1)
    ref = _import_fixture().TinyBNNet().eval()
    sd = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "bn.pt"
    torch.save(sd, path)
    lm = load_model(f"{TINY_PY}:TinyBNNet", weights=path)
    x = torch.randn(1, 1, 6, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), ref(x))
    assert any("num_batches_tracked" in n for n in lm.notes)


def test_bad_model_kwargs_json(tiny):
    _, weights, _, _ = tiny
    with pytest.raises(UserError, match="not valid JSON"):
        load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs='{"n_classes": 3')
    with pytest.raises(UserError, match="JSON object"):
        load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs="[1, 2]")
    with pytest.raises(UserError, match=r"TinyNet\(\*\*model_kwargs\) failed.*n_klasses"):
        load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs={"n_klasses": 3})


def test_model_kwargs_from_json_file(tiny, tmp_path):
    _, weights, x, expected = tiny
    kw = tmp_path / "kwargs.json"
    kw.write_text('{"n_classes": 3}')
    lm = load_model(f"{TINY_PY}:TinyNet", weights=weights, model_kwargs=str(kw))
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)


def test_python_source_errors(tmp_path, tiny):
    _, weights, _, _ = tiny
    with pytest.raises(UserError, match="no class 'Nope'.*TinyNet"):
        load_model(f"{TINY_PY}:Nope", weights=weights)
    with pytest.raises(UserError, match="not an nn.Module class"):
        load_model(f"{TINY_PY}:NotAModule", weights=weights)
    with pytest.raises(UserError, match="name the model class"):
        load_model(str(TINY_PY), weights=weights)
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nclass Net(torch.nn.Module:\n    pass\n")
    with pytest.raises(UserError, match="importing model file .*broken.py failed at line 2"):
        load_model(f"{broken}:Net")


def test_python_file_can_import_its_siblings(tmp_path):
    (tmp_path / "blocks_sibling_xai.py").write_text(
        "import torch\nclass Block(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.lin = torch.nn.Linear(1, 2)\n"
        "    def forward(self, x):\n        return self.lin(x.mean(dim=(1, 2, 3, 4)).unsqueeze(1))\n"
    )
    (tmp_path / "net_with_sibling.py").write_text(
        "from blocks_sibling_xai import Block\nclass Net(Block):\n    pass\n"
    )
    lm = load_model(f"{tmp_path / 'net_with_sibling.py'}:Net")
    assert check_output(lm.module(torch.zeros(1, 1, 4, 4, 4))).shape == (1, 2)
    assert str(tmp_path) not in sys.path  # the folder was only on sys.path during the import
    assert any("no weights given" in n for n in lm.notes)


# ---------------------------------------------------------------------------
# Missing files and files that are not checkpoints
# ---------------------------------------------------------------------------


def test_missing_files(tmp_path, tiny):
    _, weights, _, _ = tiny
    with pytest.raises(UserError, match="weights .*nope.pt not found"):
        load_model(f"{TINY_PY}:TinyNet", weights=tmp_path / "nope.pt")
    with pytest.raises(UserError, match="model file .*missing.py not found"):
        load_model(f"{tmp_path / 'missing.py'}:Net", weights=weights)
    with pytest.raises(UserError, match="model source .*nothing.ts not found"):
        load_model(tmp_path / "nothing.ts")
    with pytest.raises(UserError, match="no model given"):
        load_model("  ")


@pytest.mark.parametrize(
    "content",
    [
        b"hello, I am a text file\n",
        bytes(range(256)) * 8,
        b"\x80\x02garbage that looks like a pickle header",
    ],
    ids=["text", "random-bytes", "pickle-header-garbage"],
)
def test_not_a_checkpoint(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(UserError, match=r"bad\.pt is not a (readable )?PyTorch checkpoint"):
        load_model(f"{TINY_PY}:TinyNet", weights=bad)
    with pytest.raises(UserError, match=r"bad\.pt is not a (readable )?PyTorch checkpoint"):
        load_model(bad)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "archive.pt"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("readme.txt", "not torch")
    with pytest.raises(UserError, match="is not a PyTorch checkpoint"):
        load_model(f"{TINY_PY}:TinyNet", weights=bad)


def test_state_dict_as_model_source_asks_for_the_class(tiny):
    _, weights, _, _ = tiny
    with pytest.raises(UserError, match=r"holds weights, not a model.*net\.py:ClassName --weights"):
        load_model(weights)


# ---------------------------------------------------------------------------
# Checkpoint security: full unpickling only with trust
# ---------------------------------------------------------------------------


def test_checkpoint_with_custom_object_needs_trust(tiny, tmp_path):
    ref, _, x, expected = tiny
    path = tmp_path / "with_args.ckpt"
    torch.save({"state_dict": ref.state_dict(), "hparams": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(UserError) as err:
        load_model(f"{TINY_PY}:TinyNet", weights=path, model_kwargs={"n_classes": 3})
    msg = str(err.value)
    assert "Namespace" in msg and "arbitrary code" in msg and "--trust-model" in msg and "trust model code" in msg
    lm = load_model(f"{TINY_PY}:TinyNet", weights=path, model_kwargs={"n_classes": 3}, trust=True)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)


class _Boom:
    """Unpickling this runs code: it creates a marker folder."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_not_executed_without_trust(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": _Boom(str(marker))}, path)
    with pytest.raises(UserError, match="arbitrary code"):
        load_model(f"{TINY_PY}:TinyNet", weights=path)
    with pytest.raises(UserError, match="arbitrary code"):
        load_model(path)
    assert not marker.exists()


def test_whole_pickled_module_needs_trust(tmp_path):
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten()).eval()
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    with pytest.raises(UserError, match="--trust-model"):
        load_model(path)
    lm = load_model(path, trust=True)
    assert lm.kind == "pickled" and not lm.is_scripted
    assert lm.sha256 == _sha256(path)
    x = torch.randn(1, 1, 5, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), net(x))


# ---------------------------------------------------------------------------
# TorchScript
# ---------------------------------------------------------------------------


def test_torchscript_file(tiny, tmp_path):
    ref, _, x, expected = tiny
    path = tmp_path / "tiny_scripted.ts"
    torch.jit.save(torch.jit.script(ref), str(path))
    assert models.is_torchscript_file(path)
    with pytest.raises(UserError, match="TorchScript model, which is code.*--trust-model"):
        load_model(path)  # TorchScript can read and write files: it needs the trust opt-in
    lm = load_model(path, trust=True)
    assert lm.kind == "torchscript" and lm.is_scripted
    assert isinstance(lm.module, torch.jit.ScriptModule)
    assert lm.spec.input_shape is None and lm.spec.channels is None
    assert lm.class_names_for(3) == ["class 0", "class 1", "class 2"]
    assert lm.sha256 == _sha256(path)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)
    # Gradients flow to the input (what the gradient methods need).
    xi = x[:1].clone().requires_grad_(True)
    lm.module(xi)[0, 1].backward()
    assert xi.grad is not None and xi.grad.abs().sum() > 0


def test_torchscript_with_embedded_monai_metadata(tiny, tmp_path):
    ref, _, _, _ = tiny
    meta = {
        "network_data_format": {
            "inputs": {"image": {"num_channels": 1, "spatial_shape": [8, 8, 8]}},
            "outputs": {"pred": {"channel_def": {"0": "a", "1": "b", "2": "c"}}},
        }
    }
    path = tmp_path / "model.ts"
    torch.jit.save(torch.jit.script(ref), str(path), _extra_files={"metadata.json": json.dumps(meta)})
    lm = load_model(path, trust=True)
    assert lm.spec.input_shape == (8, 8, 8) and lm.spec.channels == 1
    assert lm.class_names_for(3) == ["a", "b", "c"]


def test_torchscript_rejects_weights_and_kwargs(tiny, tmp_path):
    ref, weights, _, _ = tiny
    path = tmp_path / "s.pt"
    torch.jit.save(torch.jit.script(ref), str(path))
    with pytest.raises(UserError, match="--weights is not used with a TorchScript"):
        load_model(path, weights=weights)
    with pytest.raises(UserError, match="TorchScript model, not a checkpoint"):
        load_model(f"{TINY_PY}:TinyNet", weights=path)


# ---------------------------------------------------------------------------
# MONAI bundles
# ---------------------------------------------------------------------------

DENSENET_KW = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "init_features": 4,
    "growth_rate": 2,
    "block_config": [1, 1],
    "bn_size": 2,
}

METADATA = {
    "version": "0.1.0",
    "network_data_format": {
        "inputs": {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "MR",
                "num_channels": 1,
                "spatial_shape": [16, 16, 16],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": False,
                "channel_def": {"0": "image"},
            }
        },
        "outputs": {
            "pred": {
                "type": "probabilities",
                "format": "classes",
                "num_channels": 2,
                "spatial_shape": [2],
                "dtype": "float32",
                "is_patch_data": False,
                "channel_def": {"0": "healthy", "1": "lesion"},
            }
        },
    },
}


def _write_bundle(root: Path, network_def: dict, extra=None, metadata=METADATA, state_dict=None) -> Path:
    """Write a MONAI bundle folder; ``extra`` adds top-level inference.json keys."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
            ],
        },
    }
    config.update(extra or {})
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    if metadata is not None:
        (root / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    if state_dict is not None:
        torch.save(state_dict, root / "models" / "model.pt")
    return root


@pytest.fixture
def densenet():
    from monai.networks.nets import DenseNet

    torch.manual_seed(0)
    net = DenseNet(**DENSENET_KW).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        expected = net(x)
    return net, x, expected


def test_bundle_with_monai_densenet(tmp_path, densenet):
    net, x, expected = densenet
    root = _write_bundle(tmp_path / "bundle", {"_target_": "DenseNet", **DENSENET_KW}, state_dict=net.state_dict())
    lm = load_model(root)
    assert lm.kind == "bundle" and not lm.is_scripted and not lm.module.training
    assert type(lm.module).__name__ == "DenseNet"
    with torch.no_grad():
        out = lm.module(x)
    torch.testing.assert_close(out, expected)
    assert check_output(out, batch=1) is out
    assert lm.spec.input_shape == (16, 16, 16)
    assert lm.spec.channels == 1
    assert lm.class_names_for(2) == ["healthy", "lesion"]
    # No normalization declared in metadata: inferred from NormalizeIntensityd, and said so.
    assert lm.spec.normalization == "zscore"
    assert any("inferred" in n for n in lm.notes)
    cfg, wts = root / "configs" / "inference.json", root / "models" / "model.pt"
    assert lm.files == {"configs/inference.json": _sha256(cfg), "models/model.pt": _sha256(wts)}
    assert lm.name == "bundle"


def test_bundle_full_target_path_reference_and_declared_normalization(tmp_path, densenet):
    net, x, expected = densenet
    meta = json.loads(json.dumps(METADATA))
    meta["napari_xai"] = {"normalization": "minmax", "class_names": ["no", "yes"]}
    kw = dict(DENSENET_KW, in_channels="@num_channels", block_config="@blocks")
    root = _write_bundle(
        tmp_path / "b2",
        {"_target_": "monai.networks.nets.DenseNet", **kw},
        extra={"num_channels": 1, "blocks": [1, 1]},
        metadata=meta,
        state_dict={"model": net.state_dict()},
    )
    lm = load_model(root)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)
    assert lm.spec.normalization == "minmax"
    assert lm.spec.class_names == ["no", "yes"]
    assert any("'model'" in n for n in lm.notes)


def test_bundle_expression_refused_without_trust_and_never_run(tmp_path, densenet):
    net, x, expected = densenet
    marker = tmp_path / "pwned"
    kw = dict(DENSENET_KW, out_channels=f"$open(r'{marker}', 'w').close() or 2")
    root = _write_bundle(tmp_path / "b3", {"_target_": "DenseNet", **kw}, state_dict=net.state_dict())
    with pytest.raises(UserError) as err:
        load_model(root)
    msg = str(err.value)
    assert "expression" in msg and "--trust-model" in msg and "trust model code" in msg and "\n" not in msg
    assert not marker.exists()
    # With trust MONAI's ConfigParser evaluates the expression (and so runs it).
    lm = load_model(root, trust=True)
    assert marker.exists()
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)
    assert any("ConfigParser" in n for n in lm.notes)


@pytest.mark.parametrize(
    "network_def",
    [
        {"_target_": "os.system", "command": "echo hi"},
        {"_target_": "builtins.eval", "source": "1"},
        {"_target_": "monai.networks.nets.DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
         "act": {"_target_": "subprocess.Popen", "args": ["true"]}},
        {"_target_": "monai.networks.utils.copy_model_state", "dst": 1, "src": 2},
        {"_target_": "DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "_requires_": "$print(1)"},
        {"_target_": "DenseNet", "spatial_dims": 3, "in_channels": 1, "out_channels": "%other.json#n"},
        {"_target_": "SomethingNotInMonaiOrTorch"},
    ],
    ids=["os.system", "eval", "nested-popen", "monai-function", "requires", "macro", "unknown-short-name"],
)
def test_bundle_foreign_targets_refused(tmp_path, network_def, densenet):
    net, _, _ = densenet
    root = _write_bundle(tmp_path / "b", network_def, state_dict=net.state_dict())
    with pytest.raises(UserError, match="--trust-model"):
        load_model(root)


def test_bundle_missing_pieces(tmp_path, densenet):
    net, _, _ = densenet
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a MONAI bundle: configs/inference.json not found"):
        load_model(tmp_path / "empty")
    root = _write_bundle(tmp_path / "noweights", {"_target_": "DenseNet", **DENSENET_KW})
    with pytest.raises(UserError, match="models/model.pt not found"):
        load_model(root)
    root = _write_bundle(tmp_path / "nometa", {"_target_": "DenseNet", **DENSENET_KW}, metadata=None,
                         state_dict=net.state_dict())
    lm = load_model(root)
    assert lm.spec.input_shape is None and lm.spec.channels == 1  # channels from network_def.in_channels
    assert lm.class_names_for(2) == ["class 0", "class 1"]
    bad_kw = dict(DENSENET_KW, not_an_argument=3)
    root = _write_bundle(tmp_path / "badkw", {"_target_": "DenseNet", **bad_kw}, state_dict=net.state_dict())
    with pytest.raises(UserError, match=r"DenseNet\(\.\.\.\) failed"):
        load_model(root)


def test_bundle_with_torchscript_weights_only(tmp_path, densenet):
    net, x, expected = densenet
    root = _write_bundle(tmp_path / "tsb", {"_target_": "DenseNet", **DENSENET_KW})
    torch.jit.save(torch.jit.script(net), str(root / "models" / "model.ts"))
    with pytest.raises(UserError, match="model.ts is a TorchScript model, which is code"):
        load_model(root)
    lm = load_model(root, trust=True)
    assert lm.kind == "bundle" and lm.is_scripted
    assert lm.class_names_for(2) == ["healthy", "lesion"]
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), expected)
    assert set(lm.files) == {"models/model.ts", "configs/metadata.json"}


def test_bundle_weights_must_match(tmp_path, densenet):
    net, _, _ = densenet
    kw = dict(DENSENET_KW, init_features=8)
    root = _write_bundle(tmp_path / "mismatch", {"_target_": "DenseNet", **kw}, state_dict=net.state_dict())
    with pytest.raises(UserError, match="shape mismatch"):
        load_model(root)


def test_bundle_metadata_flexible_shape_and_bad_values(tmp_path, densenet):
    net, _, _ = densenet
    meta = json.loads(json.dumps(METADATA))
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = ["16*n", "16*n", "16*n"]
    root = _write_bundle(tmp_path / "flex", {"_target_": "DenseNet", **DENSENET_KW}, metadata=meta,
                         state_dict=net.state_dict())
    lm = load_model(root)
    assert lm.spec.input_shape is None
    assert any("not fixed" in n for n in lm.notes)
    meta["normalization"] = "histogram-equalize"
    root = _write_bundle(tmp_path / "badnorm", {"_target_": "DenseNet", **DENSENET_KW}, metadata=meta,
                         state_dict=net.state_dict())
    with pytest.raises(UserError, match="normalization must be one of none, zscore, minmax"):
        load_model(root)
    meta = json.loads(json.dumps(METADATA))
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [64, 64]
    root = _write_bundle(tmp_path / "twod", {"_target_": "DenseNet", **DENSENET_KW}, metadata=meta,
                         state_dict=net.state_dict())
    with pytest.raises(UserError, match="2D input"):
        load_model(root)


def test_class_names_count_mismatch_is_user_error(tmp_path, densenet):
    net, _, _ = densenet
    root = _write_bundle(tmp_path / "b", {"_target_": "DenseNet", **DENSENET_KW}, state_dict=net.state_dict())
    lm = load_model(root)
    with pytest.raises(UserError, match="returns 3 class scores but its metadata names 2 classes"):
        lm.class_names_for(3)


# ---------------------------------------------------------------------------
# Output check
# ---------------------------------------------------------------------------


def test_check_output_accepts_classifier_scores():
    s = torch.randn(2, 5)
    assert check_output(s, batch=2) is s


@pytest.mark.parametrize(
    "out, pattern",
    [
        ((torch.zeros(1, 2), torch.zeros(1, 2)), r"tuple \(\(1, 2\), \(1, 2\)\)"),
        ([torch.zeros(1, 2)], "list"),
        ({"logits": torch.zeros(1, 2)}, "dict with keys logits"),
        (
            torch.zeros(1, 2, 8, 8, 8),
            r"shape \(1, 2, 8, 8, 8\); napari-xai needs class scores \(N, classes\) here; explain a segmentation "
            r"model \(a logit map\) with --segmentation",
        ),
        (torch.zeros(2), r"shape \(2,\)"),
        (torch.zeros(1, 2, dtype=torch.long), "integer type"),
        (torch.tensor([[0.0, float("nan")]]), "NaN or Inf"),
        (3.0, "not a tensor"),
    ],
    ids=["tuple", "list", "dict", "segmentation", "1d", "integer", "nan", "float"],
)
def test_check_output_rejects(out, pattern):
    with pytest.raises(UserError, match=pattern):
        check_output(out)


def test_check_output_batch_mismatch():
    with pytest.raises(UserError, match="for a batch of 2"):
        check_output(torch.zeros(1, 3), batch=2)


def test_segmentation_model_output_through_loader():
    lm = load_model(f"{TINY_PY}:SegNet")
    with pytest.raises(UserError, match="explain a segmentation model .* with --segmentation"):
        check_output(lm.module(torch.zeros(1, 1, 4, 4, 4)))


# ---------------------------------------------------------------------------
# Spec validation and misuse of options
# ---------------------------------------------------------------------------


def test_model_spec_validation():
    assert ModelSpec(input_shape=[4, 5, 6], normalization="Z-Score").input_shape == (4, 5, 6)
    assert ModelSpec(normalization="Z-Score").normalization == "zscore"
    with pytest.raises(UserError, match="three positive voxel counts"):
        ModelSpec(input_shape=(4, 5))
    with pytest.raises(UserError, match="normalization must be one of"):
        ModelSpec(normalization="whiten")


def test_options_that_do_not_apply_are_refused(tmp_path, densenet, tiny):
    net, _, _ = densenet
    root = _write_bundle(tmp_path / "b", {"_target_": "DenseNet", **DENSENET_KW}, state_dict=net.state_dict())
    with pytest.raises(UserError, match="--model-kwargs is not used with a MONAI bundle"):
        load_model(root, model_kwargs={"a": 1})
    with pytest.raises(UserError, match="--weights is not used with a demo"):
        load_model("demo", weights=tiny[1])
    # Blank kwargs (what a widget sends when the box is empty) are fine.
    assert load_model(root, model_kwargs="  ").kind == "bundle"


# ---------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------


def test_demo_loader_logic_with_stand_in_files(tmp_path, monkeypatch):
    """The demo loader reads metadata + state_dict from package data (stand-ins here)."""
    pkg = tmp_path / "fakepkg"
    (pkg / "data").mkdir(parents=True)
    ref_mod = _import_fixture("tiny_net_demo_standin")
    torch.manual_seed(3)
    ref = ref_mod.TinyNet(in_channels=1, n_classes=2, width=3).eval()
    torch.save(ref.state_dict(), pkg / "data" / "demo_model.pt")
    meta = {"input_shape": [8, 8, 8], "channels": 1, "class_names": ["healthy", "atrophy"],
            "normalization": "zscore", "net_kwargs": {"in_channels": 1, "n_classes": 2, "width": 3}}
    (pkg / "data" / "demo_metadata.json").write_text(json.dumps(meta))
    fake_demo_net = types.ModuleType("napari_xai.core.demo_net")
    fake_demo_net.DemoNet = ref_mod.TinyNet
    monkeypatch.setitem(sys.modules, "napari_xai.core.demo_net", fake_demo_net)
    monkeypatch.setattr(models.load, "_demo_data_dir", lambda: pkg / "data")
    lm = load_model("demo")
    assert lm.kind == "demo" and lm.source == "demo" and not lm.is_scripted
    assert lm.spec == ModelSpec((8, 8, 8), 1, ["healthy", "atrophy"], "zscore")
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(lm.module(x), ref(x))
    assert set(lm.files) == {"demo_model.pt", "demo_metadata.json"}
    (pkg / "data" / "demo_model.pt").unlink()
    with pytest.raises(UserError, match="demo model file demo_model.pt is missing"):
        load_model("demo")


def test_shipped_demo_model_loads():
    """The real package data. Fails (on purpose, not skipped) until the demo helper ships it."""
    data = importlib.resources.files("napari_xai") / "data"
    missing = [n for n in ("demo_model.pt", "demo_metadata.json") if not (data / n).is_file()]
    assert not missing, f"demo package data missing: {missing}; run scripts/train_demo_model.py"
    meta = json.loads((data / "demo_metadata.json").read_text())
    lm = load_model("demo", device="cpu")
    assert lm.kind == "demo"
    assert lm.spec.class_names == meta["class_names"]
    assert lm.spec.input_shape == tuple(meta["input_shape"])
    x = torch.zeros(1, meta["channels"], *meta["input_shape"])
    with torch.no_grad():
        out = check_output(lm.module(x), batch=1)
    assert out.shape == (1, len(meta["class_names"]))
