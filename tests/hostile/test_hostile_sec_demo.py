"""Issue 10 item 15: the built-in ``demo`` model source is never shadowed by a path called ``demo``.

The documented flow ``napari-xai demo --headless demo`` then ``napari-xai reproduce demo/demo_relevance.json``
works from any folder; a folder called ``demo`` beside the record, in the working folder or recorded as the
model's absolute source is never loaded instead of the built-in model (that folder could hold a TorchScript
payload, as in the last case).
"""

from __future__ import annotations

import json
import shutil

import pytest
from _sec_helpers import assert_untouched, evil_torchscript, nifti, run, snapshot, victim


def _ok(res):
    assert res.code == 0, res.err[-2000:]
    assert "Traceback" not in res.err
    assert "reproduced:" in res.out


def test_the_documented_demo_flow(tmp_path):
    res = run("demo", "--headless", "demo", "--method", "saliency", cwd=tmp_path, timeout=400)
    assert res.code == 0, res.err[-2000:]
    before = snapshot(tmp_path)
    _ok(run("reproduce", "demo/demo_relevance.json", cwd=tmp_path))
    assert snapshot(tmp_path) == before


@pytest.fixture
def made(tmp_path):
    """explain --model demo with its output in a folder called demo (so the record was written beside 'demo')."""
    nifti(tmp_path / "t1.nii.gz", shape=(12, 12, 12))
    (tmp_path / "demo").mkdir()
    res = run("explain", "t1.nii.gz", "--model", "demo", "--method", "saliency", "--out", "demo/rel.nii.gz",
              cwd=tmp_path)
    assert res.code == 0, res.err[-2000:]
    return tmp_path


def test_reproduce_from_another_folder_holding_a_demo_folder(made, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "demo").mkdir()
    _ok(run("reproduce", made / "demo" / "rel.nii.gz.xai.json", cwd=elsewhere))


def test_an_old_record_naming_a_demo_folder_as_absolute_source(made):
    """Records written before the fix carry source_absolute = <cwd>/demo: the built-in is used all the same."""
    side = made / "demo" / "rel.nii.gz.xai.json"
    record = json.loads(side.read_text())
    assert record["model"]["source"] == "demo" and record["model"]["source_absolute"] == "demo"
    record["model"]["source_absolute"] = str(made / "demo")
    side.write_text(json.dumps(record))
    _ok(run("reproduce", side, cwd=made))


def test_a_demo_folder_holding_a_payload_is_never_loaded(made):
    """A bundle called demo (TorchScript payload, as someone could leave it in a shared folder) beside the work."""
    v = victim(made)
    shutil.rmtree(made / "demo" / "models", ignore_errors=True)
    (made / "demo" / "configs").mkdir()
    (made / "demo" / "models").mkdir()
    (made / "demo" / "configs" / "inference.json").write_text(json.dumps({"network_def": {"_target_": "Identity"}}))
    evil_torchscript(made / "demo" / "models", v, "model.ts")
    side = made / "demo" / "rel.nii.gz.xai.json"
    record = json.loads(side.read_text())
    record["model"]["source_absolute"] = str(made / "demo")  # as main wrote it
    side.write_text(json.dumps(record))
    before = snapshot(made)
    _ok(run("reproduce", side, "--trust-model", cwd=made))  # even trusted: 'demo' means the built-in model
    assert_untouched(v)
    assert snapshot(made) == before
