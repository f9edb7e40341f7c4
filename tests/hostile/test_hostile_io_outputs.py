"""Hostile and careless use of outputs: no user file is lost (issue 10, items 5-8, and interruption).

Each case runs ``napari-xai`` in a subprocess and hashes the folder before and after: a refused run exits 2 with
one stderr line and no traceback and changes nothing; a run that succeeds changes only its own outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _io_helpers import cli, env, models_file, nifti, python, refused_and_unchanged, sidecar_of, tree  # noqa: E402

FAST = ["--model", "demo", "--method", "saliency", "--quiet"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """in.nii.gz and rel.nii.gz (+ its sidecar, as the version under test names it), a label atlas."""
    d = tmp_path_factory.mktemp("base")
    nifti(d / "in.nii.gz", shape=(16, 16, 16))
    res = cli("explain", d / "in.nii.gz", *FAST, "--out", d / "rel.nii.gz")
    assert res.returncode == 0, res.stderr
    atlas = np.zeros((16, 16, 16), np.int16)
    atlas[:8], atlas[8:] = 1, 2
    nifti(d / "atlas.nii.gz", atlas)
    (d / "atlas.csv").write_text("index,name\n1,front\n2,back\n")
    return d


@pytest.fixture
def work(base, tmp_path):
    d = tmp_path / "w"
    shutil.copytree(base, d, symlinks=True)
    return d


def unchanged_except(before: dict, after: dict, allowed: set[str]) -> None:
    """Every entry that existed before is unchanged unless ``allowed``; new entries only in ``allowed``."""
    for name, digest in before.items():
        if name not in allowed:
            assert after.get(name) == digest, f"{name} changed or vanished"
    new = set(after) - set(before)
    assert new <= allowed, f"unexpected new files: {sorted(new - allowed)}"


# ------------------------------------------------------------------ 5. every file written is checked; sidecars
#                                                                        never clobber a file the command did not make

def test_explain_keeps_a_bids_json_of_the_same_stem(work):
    (work / "result.json").write_text(json.dumps({"RepetitionTime": 2.0, "EchoTime": 0.03}))
    before = tree(work)
    res = cli("explain", work / "in.nii.gz", *FAST, "--out", work / "result.nii.gz")
    assert res.returncode == 0, res.stderr
    after = tree(work)
    assert after["result.json"] == before["result.json"]
    unchanged_except(before, after, {"result.nii.gz", sidecar_of(work / "result.nii.gz").name})


def test_napari_writer_keeps_the_bids_sidecar_beside_the_image(work):
    (work / "sub-01_T1w.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
    before = tree(work)
    res = python("import numpy as np; from napari_xai._writer import write_image; "
                 f"write_image({str(work / 'sub-01_T1w.nii.gz')!r}, np.ones((6, 6, 6), np.float32), "
                 "{'name': 'T1w', 'metadata': {'affine': np.eye(4)}})")
    assert res.returncode == 0, res.stderr
    after = tree(work)
    assert after["sub-01_T1w.json"] == before["sub-01_T1w.json"]
    assert "sub-01_T1w.nii.gz" in after


def test_regions_table_named_like_the_map_keeps_the_maps_sidecar(work):
    before = tree(work)
    res = cli("regions", work / "rel.nii.gz", "--atlas", work / "atlas.nii.gz", "--labels", work / "atlas.csv",
              "--out", work / "rel.csv")
    assert res.returncode == 0, res.stderr
    after = tree(work)
    unchanged_except(before, after, {"rel.csv", sidecar_of(work / "rel.csv").name} - {sidecar_of(work / "rel.nii.gz").name})


def test_flip_curves_named_like_the_map_keep_the_maps_sidecar(work):
    before = tree(work)
    res = cli("flip", work / "in.nii.gz", "--model", "demo", "--relevance", work / "rel.nii.gz", "--steps", "2",
              "--region", "4", "--order", "morf", "--out", work / "rel.csv")
    assert res.returncode == 0, res.stderr
    after = tree(work)
    unchanged_except(before, after, {"rel.csv", sidecar_of(work / "rel.csv").name} - {sidecar_of(work / "rel.nii.gz").name})


def test_an_existing_sidecar_of_the_output_needs_overwrite(work):
    (work / "new.nii.gz.xai.json").write_text('{"kind": "relevance", "note": "an earlier run"}')
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "new.nii.gz",
                          words=("new.nii.gz.xai.json", "--overwrite"))


def test_an_existing_sidecar_of_out_segmentation_is_checked_before_work(work):
    (work / "seg.nii.gz.xai.json").write_text('{"kind": "segmentation"}')
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "new.nii.gz",
                          "--out-segmentation", work / "seg.nii.gz", words=("seg.nii.gz.xai.json",))


def test_clusters_refuse_an_existing_labels_sidecar_before_work(work):
    (work / "L.nii.gz.xai.json").write_text('{"kind": "clusters"}')
    refused_and_unchanged(work, "clusters", work / "rel.nii.gz", "--out-table", work / "T.csv",
                          "--out-labels", work / "L.nii.gz", words=("L.nii.gz.xai.json",))


def test_reproduce_to_rel_nii_keeps_the_record_it_reproduces(work):
    side = sidecar_of(work / "rel.nii.gz")
    before = tree(work)
    res = cli("reproduce", side, "--out", work / "rel.nii")
    assert res.returncode in (0, 3), res.stderr
    after = tree(work)
    assert after[side.name] == before[side.name], "the record was replaced"
    unchanged_except(before, after, {"rel.nii", sidecar_of(work / "rel.nii").name} - {side.name})


# ------------------------------------------------------------------ 6. a failed run removes only what it wrote

def test_refused_out_segmentation_keeps_the_users_result_json(work):
    (work / "result.json").write_text('{"mine": true}')
    nifti(work / "seg.nii.gz", shape=(4, 4, 4))
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "result.nii.gz",
                          "--out-segmentation", work / "seg.nii.gz", words=("seg.nii.gz",))


def test_a_failed_overwrite_keeps_the_previous_good_result(work):
    # rel.nii.gz and its sidecar are the previous good result; the classification demo has no segmentation
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "rel.nii.gz", "--overwrite",
                          "--out-segmentation", work / "seg.nii.gz", words=("segmentation",))


def test_a_missing_folder_for_out_segmentation_keeps_the_previous_result(work):
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "rel.nii.gz", "--overwrite",
                          "--out-segmentation", work / "nowhere" / "seg.nii.gz")


def _interrupt(work, sig):
    models_file(work)
    marker = work.parent / "started"
    before = tree(work)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "napari-xai"), "explain",
                             str(work / "in.nii.gz"), "--model", f"{work / 'hostile_models.py'}:Slow", "--trust-model",
                             "--method", "integrated-gradients", "--param", "steps=400", "--param", "internal_batch_size=1",
                             "--out", str(work / "rel.nii.gz"), "--overwrite", "--quiet"],
                            env={**env(), "HOSTILE_MARKER": str(marker)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err, err
    after = tree(work)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_sigint_leaves_the_previous_result_and_no_temporary_file(work):
    _interrupt(work, signal.SIGINT)


def test_sigterm_leaves_the_previous_result_and_no_temporary_file(work):
    _interrupt(work, signal.SIGTERM)


def test_an_interrupted_cohort_resumes_bitwise(work, tmp_path):
    models_file(work)
    for k in range(3):
        nifti(work / f"s{k}.nii.gz", shape=(12, 12, 12), seed=10 + k)
    args = [*[work / f"s{k}.nii.gz" for k in range(3)], "--model", f"{work / 'hostile_models.py'}:Slow", "--trust-model",
            "--method", "integrated-gradients", "--param", "steps=40", "--param", "internal_batch_size=1", "--quiet"]
    ref = cli("cohort", *args, "--out-dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "napari-xai"), "cohort", *map(str, args),
                             "--out-dir", str(out)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "maps" / "s0.nii.gz").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert not list(out.rglob(".*.tmp")), "temporary files left behind"
    res = cli("cohort", *args, "--out-dir", out)
    assert res.returncode == 0, res.stderr
    for k in range(3):
        name = f"maps/s{k}.nii.gz"
        import nibabel as nib

        a = np.asarray(nib.load(str(tmp_path / "ref" / name)).dataobj)
        b = np.asarray(nib.load(str(out / name)).dataobj)
        assert a.tobytes() == b.tobytes(), name


# ------------------------------------------------------------------ 7. --overwrite never replaces an input

def test_out_is_the_input(work):
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "in.nii.gz", "--overwrite",
                          words=("input",))


def test_out_is_a_symlink_to_the_input(work):
    os.symlink("in.nii.gz", work / "link.nii.gz")
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "link.nii.gz", "--overwrite",
                          words=("input",))


def test_out_is_a_hard_link_to_the_input(work):
    os.link(work / "in.nii.gz", work / "hard.nii.gz")
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "hard.nii.gz", "--overwrite",
                          words=("input",))


def test_out_is_the_input_through_dotdot(work):
    (work / "sub").mkdir()
    refused_and_unchanged(work, "explain", "in.nii.gz", *FAST, "--out", "sub/../in.nii.gz", "--overwrite",
                          cwd=work, words=("input",))


def test_reproduce_over_the_map_it_reproduces(work):
    refused_and_unchanged(work, "reproduce", sidecar_of(work / "rel.nii.gz"), "--out", work / "rel.nii.gz",
                          "--overwrite", words=("input",))


def test_reproduce_over_the_recorded_input_volume(work):
    refused_and_unchanged(work, "reproduce", sidecar_of(work / "rel.nii.gz"), "--out", work / "in.nii.gz",
                          "--overwrite", words=("input",))


def test_clusters_filtered_map_over_its_relevance(work):
    refused_and_unchanged(work, "clusters", work / "rel.nii.gz", "--out-filtered", work / "rel.nii.gz", "--overwrite",
                          words=("input",))


def test_out_segmentation_over_the_input(work):
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "new.nii.gz", "--overwrite",
                          "--out-segmentation", work / "in.nii.gz", words=("input",))


# ------------------------------------------------------------------ 8. output folders are checked up front

def test_a_file_in_the_out_path(work):
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "in.nii.gz" / "x.nii.gz",
                          words=("in.nii.gz",))


def test_an_unwritable_out_folder(work):
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", "/proc/x.nii.gz", words=("/proc",))


def test_a_missing_out_folder(work):
    refused_and_unchanged(work, "explain", work / "in.nii.gz", *FAST, "--out", work / "no" / "x.nii.gz",
                          words=("does not exist",))


def test_regions_into_an_unwritable_folder(work):
    refused_and_unchanged(work, "regions", work / "rel.nii.gz", "--atlas", work / "atlas.nii.gz", "--labels",
                          work / "atlas.csv", "--out", "/proc/r.csv", words=("/proc",))


def test_clusters_table_under_a_file(work):
    refused_and_unchanged(work, "clusters", work / "rel.nii.gz", "--out-table", work / "rel.nii.gz" / "t.csv",
                          words=("rel.nii.gz",))


def test_demo_headless_under_a_file(work):
    refused_and_unchanged(work, "demo", "--headless", work / "in.nii.gz" / "demo", words=("in.nii.gz",))


def test_demo_headless_into_an_unwritable_folder(work):
    refused_and_unchanged(work, "demo", "--headless", "/proc/napari-xai-demo", words=("/proc",))


def test_sanity_out_folder_under_a_file(work):
    refused_and_unchanged(work, "sanity", work / "in.nii.gz", "--model", "demo", "--method", "saliency",
                          "--layers", "1", "--out", work / "in.nii.gz" / "s", words=("in.nii.gz",))


def test_lrp_layers_write_config_under_a_file(work):
    refused_and_unchanged(work, "lrp-layers", work / "in.nii.gz", "--model", "demo", "--write-config",
                          work / "in.nii.gz" / "c.json", words=("in.nii.gz",))


def test_lrp_layers_write_config_over_the_input_volume(work):
    refused_and_unchanged(work, "lrp-layers", work / "in.nii.gz", "--model", "demo", "--write-config",
                          work / "in.nii.gz", "--overwrite", words=("in.nii.gz",))


def test_robustness_into_an_unwritable_folder(work):
    refused_and_unchanged(work, "robustness", work / "in.nii.gz", "--model", "demo", "--method", "saliency",
                          "--samples", "2", "--out", "/proc/r.json", words=("/proc",))


def test_compare_out_dir_under_a_file(work):
    refused_and_unchanged(work, "compare", work / "in.nii.gz", "--model", "demo", "--method", "saliency",
                          "--out-dir", work / "in.nii.gz" / "d", words=("in.nii.gz",))


def test_embed_into_an_unwritable_folder(work):
    vols = []
    for k in range(4):
        vols.append(nifti(work / f"e{k}.nii.gz", shape=(12, 12, 12), seed=k))
    refused_and_unchanged(work, "embed", *vols, "--model", "demo", "--out", "/proc/e", words=("/proc",))


def test_dissect_into_an_unwritable_folder(work):
    refused_and_unchanged(work, "dissect", work / "in.nii.gz", "--model", "demo", "--atlas", "aal",
                          "--out", "/proc/c.csv", words=("/proc",))
