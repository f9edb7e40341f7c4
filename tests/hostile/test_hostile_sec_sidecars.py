"""Issue 10 item 14: a malformed sidecar (wrong field types: a string for ``input`` or ``model``, a list for
``params``, a non-integer seed...) gets one line from ``reproduce``, exit 2, no traceback, and nothing is loaded
or written."""

from __future__ import annotations

import json

import pytest
from _sec_helpers import assert_user_error, nifti, run, snapshot


def base(vol) -> dict:
    return {"kind": "relevance", "method": "saliency", "seed": 0, "params": {}, "output_index": 0,
            "input": {"files": [str(vol)]}, "model": {"source": "demo", "kind": "demo"},
            "target": {"index": 0}, "grid": {"model_shape": [8, 8, 8]}}


CASES = {
    "input-is-a-string": (lambda r: r.update(input="t1.nii.gz"), "'input'"),
    "model-is-a-string": (lambda r: r.update(model="demo"), "'model'"),
    "params-is-a-list": (lambda r: r.update(params=[1, 2]), "'params'"),
    "seed-is-text": (lambda r: r.update(seed="abc"), "'seed'"),
    "seed-is-fractional": (lambda r: r.update(seed=1.5), "'seed'"),
    "target-is-a-name": (lambda r: r.update(target="lesion"), "'target'"),
    "grid-shape-is-text": (lambda r: r["grid"].update(model_shape="64"), "model_shape"),
    "input-hashes-are-numbers": (lambda r: r["input"].update(sha256={"t1.nii.gz": 5}), "sha256"),
    "segmentation-point-has-two-axes": (lambda r: r.update(segmentation={"mask": "point", "point": [1, 2]}),
                                        "'point'"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_sidecar_is_one_line(tmp_path, case):
    vol = nifti(tmp_path / "t1.nii.gz")
    record = base(vol)
    edit, needle = CASES[case]
    edit(record)
    side = tmp_path / "rel.json"
    side.write_text(json.dumps(record))
    before = snapshot(tmp_path)
    res = run("reproduce", side, "--out", tmp_path / "again.nii.gz", cwd=tmp_path)
    assert_user_error(res, needle, "record")
    assert snapshot(tmp_path) == before
