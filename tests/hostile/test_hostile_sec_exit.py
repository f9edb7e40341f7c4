"""Issue 10 item 16: ``sys.exit`` inside a user's model file is a user error (exit 2, one line naming it), never
an exit code of its own: 0 would claim success, 3 would claim "not reproduced" and a text would exit 1 without
saying why. Exit codes keep their meanings (0 ok, 1 internal error, 2 user error, 3 not reproduced)."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
from _sec_helpers import TINY_PY, assert_user_error, nifti, run, snapshot, write_py

AT_IMPORT = {
    "exit-0": "import sys\nsys.exit(0)\n",
    "exit-3": "import sys\nsys.exit(3)\n",
    "exit-text": "import sys\nsys.exit('training finished')\n",
    "raise-SystemExit": "raise SystemExit(2)\n",
}


def _explain(tmp_path, py, klass="Tiny"):
    vol = nifti(tmp_path / "t1.nii.gz")
    (tmp_path / "out").mkdir(exist_ok=True)
    before = snapshot(tmp_path, skip=("out",))
    res = run("explain", vol, "--model", f"{py}:{klass}", "--method", "saliency",
              "--out", tmp_path / "out" / "r.nii.gz", cwd=tmp_path)
    assert_user_error(res, "sys.exit")
    assert snapshot(tmp_path, skip=("out",)) == before
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("case", ["exit-0", "exit-text"])
def test_sys_exit_while_the_model_file_is_imported(tmp_path, case):
    _explain(tmp_path, write_py(tmp_path, TINY_PY + AT_IMPORT[case]))


def test_sys_exit_in_the_constructor(tmp_path):
    py = write_py(tmp_path, TINY_PY + textwrap.dedent("""
        class Quits(Tiny):
            def __init__(self):
                super().__init__()
                import sys
                sys.exit(0)
        """))
    _explain(tmp_path, py, "Quits")


def test_sys_exit_in_forward(tmp_path):
    py = write_py(tmp_path, TINY_PY + textwrap.dedent("""
        class QuitsLater(Tiny):
            def forward(self, x):
                import sys
                sys.exit(0)
        """))
    _explain(tmp_path, py, "QuitsLater")


@pytest.mark.parametrize("case", ["exit-3", "raise-SystemExit"])
def test_reproduce_never_passes_a_model_exit_code_on(tmp_path, case):
    """Exit 3 means "not reproduced" and 2 a user error named on one line: a model's own exit is neither."""
    py = write_py(tmp_path / "models", TINY_PY + AT_IMPORT[case])
    vol = nifti(tmp_path / "t1.nii.gz")
    digest = hashlib.sha256(py.read_bytes()).hexdigest()
    record = {"kind": "relevance", "method": "saliency", "seed": 0, "input": {"files": [str(vol)]},
              "model": {"source": f"{py}:Tiny", "kind": "python", "sha256": digest}, "target": {"index": 0}}
    (tmp_path / "rel.json").write_text(json.dumps(record))
    before = snapshot(tmp_path)
    res = run("reproduce", tmp_path / "rel.json", "--trust-model", cwd=tmp_path)
    assert_user_error(res, "sys.exit")
    assert snapshot(tmp_path) == before
