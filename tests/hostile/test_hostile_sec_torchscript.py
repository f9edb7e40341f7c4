"""Issue 10 item 1: TorchScript is code (it can write any file with torch.from_file(shared=True)), so nothing
loads or runs it without --trust-model: not ``--model x.ts``, not a bundle holding only ``models/model.ts``,
not another command, not a sidecar naming it.

The payload overwrites the first bytes of ``victim.txt`` when its forward runs; the positive control shows it
does exactly that once trusted, so the refusals are not vacuous.
"""

from __future__ import annotations

import json
import shutil

import pytest
from _sec_helpers import (PWNED, assert_untouched, assert_user_error, evil_torchscript, nifti, run, snapshot,
                          victim)


@pytest.fixture
def scene(tmp_path):
    v = victim(tmp_path)
    ts = evil_torchscript(tmp_path / "models", v)
    vol = nifti(tmp_path / "t1.nii.gz")
    (tmp_path / "out").mkdir()
    return tmp_path, v, ts, vol


def _refused(tmp_path, v, *argv):
    before = snapshot(tmp_path, skip=("out",))
    res = run(*argv, cwd=tmp_path)
    assert_user_error(res, "TorchScript", "--trust-model")
    assert_untouched(v)
    assert snapshot(tmp_path, skip=("out",)) == before
    assert not any((tmp_path / "out").iterdir()), "a refused command left output behind"


def test_explain_with_a_torchscript_file_needs_trust(scene):
    tmp_path, v, ts, vol = scene
    _refused(tmp_path, v, "explain", vol, "--model", ts, "--method", "saliency", "--out", tmp_path / "out/r.nii.gz")


def test_a_bundle_holding_only_torchscript_needs_trust(scene):
    tmp_path, v, ts, vol = scene
    b = tmp_path / "bundle"
    (b / "configs").mkdir(parents=True)
    (b / "models").mkdir()
    (b / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "torch.nn.Identity"}}))
    shutil.copy(ts, b / "models" / "model.ts")
    _refused(tmp_path, v, "explain", vol, "--model", b, "--method", "saliency", "--out", tmp_path / "out/r.nii.gz")


def test_torchscript_renamed_like_weights_needs_trust(scene):
    """A .pt/.pth name does not make it data: the file's content decides."""
    tmp_path, v, ts, vol = scene
    pt = tmp_path / "models" / "resnet_weights.pth"
    shutil.copy(ts, pt)
    _refused(tmp_path, v, "robustness", vol, "--model", pt, "--method", "saliency", "--samples", "1",
             "--out", tmp_path / "out/r.json")


def test_compare_with_torchscript_needs_trust(scene):
    tmp_path, v, ts, vol = scene
    _refused(tmp_path, v, "compare", vol, "--model", "demo", "--model", ts, "--method", "saliency",
             "--out-dir", tmp_path / "out/cmp")


def test_a_sidecar_naming_torchscript_with_matching_hashes_needs_trust(scene):
    """An attacker sends rel.json naming their TorchScript with its true SHA-256: hashes alone prove nothing."""
    import hashlib

    tmp_path, v, ts, vol = scene
    digest = hashlib.sha256(ts.read_bytes()).hexdigest()
    record = {"kind": "relevance", "method": "saliency", "seed": 0,
              "input": {"files": [str(vol)], "sha256": {str(vol): hashlib.sha256(vol.read_bytes()).hexdigest()}},
              "model": {"source": str(ts), "kind": "torchscript", "sha256": digest, "files": {ts.name: digest}},
              "target": {"index": 0}, "grid": {"model_shape": [8, 8, 8]}}
    (tmp_path / "sent.json").write_text(json.dumps(record))
    res_before = snapshot(tmp_path, skip=("out",))
    res = run("reproduce", tmp_path / "sent.json", cwd=tmp_path)
    assert_user_error(res, "--trust-model")
    assert_untouched(v)
    assert snapshot(tmp_path, skip=("out",)) == res_before


def test_positive_control_the_payload_writes_once_trusted(scene):
    """With the explicit opt-in the user accepted the risk: the payload really is live (so the tests above mean
    something)."""
    tmp_path, v, ts, vol = scene
    res = run("explain", vol, "--model", ts, "--method", "saliency", "--trust-model", "--out",
              tmp_path / "out/r.nii.gz", cwd=tmp_path)
    assert res.code == 0, res.err
    assert v.read_bytes().startswith(PWNED)
