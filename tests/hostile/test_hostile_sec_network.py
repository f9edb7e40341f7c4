"""Issue 10 item 3: an untrusted bundle never touches the network or writes outside the output.

Every case runs ``napari-xai explain`` with a start-up spy (``sitecustomize`` on PYTHONPATH) that logs and refuses
every socket attempt; downloads would land in the test folder (TORCH_HOME, HF_HOME), which is hashed. A network
constructor argument that downloads weights is refused in one line; a class whose *default* downloads (MONAI's
EfficientNetBN and ResNetFeatures default to ``pretrained=True``) is built with it turned off.
"""

from __future__ import annotations

import socket

import pytest
from _sec_helpers import assert_user_error, bundle, nifti, run, snapshot, socket_spy_env


def _explain_bundle(tmp_path, network_def, *needles, extra=None):
    env, log = socket_spy_env(tmp_path)
    b = bundle(tmp_path / "bundle", network_def, extra)
    vol = nifti(tmp_path / "t1.nii.gz")
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path, skip=("out",))
    res = run("explain", vol, "--model", b, "--method", "saliency", "--out", tmp_path / "out" / "r.nii.gz",
              cwd=tmp_path, env=env)
    assert not log.exists(), f"a socket was opened: {log.read_text()}"
    assert_user_error(res, *needles)
    assert snapshot(tmp_path, skip=("out",)) == before, "a file outside the output changed (a download?)"
    assert not any((tmp_path / "out").iterdir())


def test_an_explicit_pretrained_url_is_refused(tmp_path):
    _explain_bundle(tmp_path, {"_target_": "monai.networks.nets.HoVerNet",
                               "pretrained_url": "https://example.org/resnet50.pth"},
                    "pretrained_url", "network", "--trust-model")


def test_an_explicit_pretrained_true_is_refused(tmp_path):
    _explain_bundle(tmp_path, {"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                               "pretrained": True}, "pretrained=True", "network")


def test_a_download_inside_a_referenced_sub_definition_is_refused(tmp_path):
    """The reference is resolved first: a sub-definition's download is found wherever it sits."""
    enc = {"_target_": "monai.networks.nets.EfficientNetBN", "model_name": "efficientnet-b0", "spatial_dims": 2,
           "pretrained": True}
    _explain_bundle(tmp_path, {"_target_": "torch.nn.Sequential", "args": ["@encoder"]}, "pretrained=True",
                    extra={"encoder": enc})


def test_a_class_that_downloads_by_default_is_built_offline(tmp_path):
    """EfficientNetBN defaults to pretrained=True: it is built with it off, then the bundle's weights load (here
    they do not fit: the one-line error comes after an offline build)."""
    _explain_bundle(tmp_path, {"_target_": "EfficientNetBN", "model_name": "efficientnet-b0", "spatial_dims": 2,
                               "in_channels": 1, "num_classes": 2}, "do not match EfficientNetBN")


def test_resnet_features_hub_download_default_is_turned_off(tmp_path):
    _explain_bundle(tmp_path, {"_target_": "monai.networks.nets.ResNetFeatures", "model_name": "resnet10"},
                    "do not match ResNetFeatures")


def test_backstop_refuses_network_writes_and_processes_during_an_untrusted_build(tmp_path):
    """Whatever an allowed constructor does beyond its arguments, the build guard refuses (in this thread) network,
    file writes and processes, and reports the first attempt even if the constructor swallowed the error."""
    from napari_xai.core import models
    from napari_xai.core.errors import UserError

    target = tmp_path / "written.txt"
    for attempt, needle in [
        (lambda: socket.create_connection(("127.0.0.1", 9), timeout=0.1), "reach the network"),
        (lambda: open(target, "w").write("x"), "write"),
        (lambda: __import__("subprocess").run(["true"]), "start a process"),
    ]:
        def swallowing():
            try:
                attempt()
            except Exception:  # noqa: BLE001 - a constructor that hides the failure
                pass

        with pytest.raises(UserError, match=needle):
            with models.bundle._untrusted_build("network_def: X(...)"):
                swallowing()
    assert not target.exists()
    (tmp_path / "readable.txt").write_text("ok")
    with models.bundle._untrusted_build("network_def: X(...)"):
        assert (tmp_path / "readable.txt").read_text() == "ok"  # reading is allowed
    open(target, "w").close()  # and nothing is refused outside a build
