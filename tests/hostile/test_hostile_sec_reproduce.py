"""Issue 10 item 2: ``reproduce`` checks before it runs anything.

* Every recorded model file is hashed before anything is imported or unpickled: a .py or a weights file swapped
  after the run is refused even with --trust-model, and its payload never runs.
* A sidecar is a file someone may have sent: a .py model named in it runs only with --trust-model, even when
  every hash matches.

Records are written by hand from the documented format (docs/models.md "Hashes": one file's SHA-256, or the
SHA-256 of the ``sha256sum``-style listing of several files sorted by name).
"""

from __future__ import annotations

import hashlib
import json

import pytest
from _sec_helpers import (EVIL_PY, TINY_PY, assert_user_error, nifti, run, snapshot, tiny_weights, write_py)


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing_sha(files: dict[str, str]) -> str:
    if len(files) == 1:
        return next(iter(files.values()))
    return hashlib.sha256("".join(f"{h}  {n}\n" for n, h in sorted(files.items())).encode()).hexdigest()


class Payload:
    """Unpickling this runs exec(): writes the marker."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('PWNED')",))


def record(tmp_path, py, weights=None, files=None):
    vol = nifti(tmp_path / "t1.nii.gz")
    files = files or {py.name: sha(py), **({weights.name: sha(weights)} if weights else {})}
    rec = {"kind": "relevance", "method": "saliency", "seed": 0, "params": {},
           "input": {"files": [str(vol)], "sha256": {str(vol): sha(vol)}},
           "model": {"source": f"{py}:Tiny", "kind": "python", "sha256": listing_sha(files), "files": files,
                     "weights": str(weights) if weights else None},
           "target": {"index": 0}, "grid": {"model_shape": [8, 8, 8]}}
    side = tmp_path / "rel.json"
    side.write_text(json.dumps(rec))
    return side


def check(tmp_path, res, *needles):
    assert_user_error(res, *needles)
    assert not (tmp_path / "models" / "marker").exists() and not (tmp_path / "marker").exists(), "payload ran"


def test_a_sent_sidecar_naming_a_py_model_needs_trust_even_with_matching_hashes(tmp_path):
    py = write_py(tmp_path / "models", EVIL_PY)
    side = record(tmp_path, py)  # the sender wrote the true hash of their payload
    before = snapshot(tmp_path)
    check(tmp_path, run("reproduce", side, cwd=tmp_path), "--trust-model", "Python model file")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("trust", [False, True], ids=["untrusted", "trusted"])
def test_a_py_swapped_after_the_run_is_refused_before_import(tmp_path, trust):
    py = write_py(tmp_path / "models", TINY_PY)
    w = tiny_weights(tmp_path / "models" / "w.pt")
    side = record(tmp_path, py, w)  # recorded with the honest file...
    py.write_text(EVIL_PY)  # ...which was swapped afterwards
    before = snapshot(tmp_path)
    res = run("reproduce", side, *(["--trust-model"] if trust else []), cwd=tmp_path)
    check(tmp_path, res, "changed")
    assert snapshot(tmp_path) == before


def test_weights_swapped_for_a_pickle_payload_are_refused_before_unpickling(tmp_path):
    import torch

    py = write_py(tmp_path / "models", TINY_PY)
    w = tiny_weights(tmp_path / "models" / "w.pt")
    side = record(tmp_path, py, w)
    torch.save({"conv.weight": Payload(tmp_path / "marker")}, w)  # needs full unpickling: trusted below
    before = snapshot(tmp_path)
    res = run("reproduce", side, "--trust-model", cwd=tmp_path)
    check(tmp_path, res, "changed", "--allow-changed-model")
    assert snapshot(tmp_path) == before


def test_an_edited_sidecar_pointing_at_another_py_is_refused_before_import(tmp_path):
    """The record's hashes are the honest model's; its source was edited to name a payload."""
    good = write_py(tmp_path / "models", TINY_PY, "good.py")
    side = record(tmp_path, good)
    evil = write_py(tmp_path / "models", EVIL_PY, "evil.py")
    rec = json.loads(side.read_text())
    rec["model"]["source"] = f"{evil}:Tiny"
    side.write_text(json.dumps(rec))
    before = snapshot(tmp_path)
    check(tmp_path, run("reproduce", side, "--trust-model", cwd=tmp_path), "changed")
    assert snapshot(tmp_path) == before
