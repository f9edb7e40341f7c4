import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_xai.core.errors import UserError
from napari_xai.core.volumes import load_nifti, save_nifti, stack_channels


def test_roundtrip_keeps_geometry_and_header(write_nifti, oblique_affine, tmp_path):
    data = np.random.default_rng(0).normal(size=(6, 7, 5)).astype(np.float32)
    src = write_nifti(data, oblique_affine)
    vol = load_nifti(src)
    assert vol.data.shape == (1, 6, 7, 5)
    np.testing.assert_allclose(vol.affine, oblique_affine, atol=1e-5)
    out = save_nifti(tmp_path / "back.nii.gz", vol.data[0], vol.affine, header=vol.header)
    a, b = nib.load(str(src)), nib.load(str(out))
    np.testing.assert_allclose(b.affine, a.affine, atol=1e-5)
    assert b.header.get_xyzt_units() == a.header.get_xyzt_units()
    assert int(b.header["sform_code"]) == int(a.header["sform_code"])
    np.testing.assert_array_equal(np.asarray(b.dataobj), data)


def test_4d_becomes_channels(write_nifti):
    data = np.arange(4 * 5 * 6 * 2, dtype=np.float32).reshape(4, 5, 6, 2)
    vol = load_nifti(write_nifti(data))
    assert vol.channels == 2
    np.testing.assert_array_equal(vol.data[1], data[..., 1])


def test_not_nifti(tmp_path):
    p = tmp_path / "scan.png"
    p.write_bytes(b"\x89PNG....")
    with pytest.raises(UserError, match="not a NIfTI"):
        load_nifti(p)


def test_garbage_with_nifti_suffix(tmp_path):
    p = tmp_path / "fake.nii"
    p.write_bytes(b"hello world" * 10)
    with pytest.raises(UserError, match="could not be read|truncated"):
        load_nifti(p)


def test_truncated_gz(write_nifti):
    data = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    for keep in (0.3, 0.9):  # cut inside the header, and inside the voxel data
        p = write_nifti(data, name=f"cut{keep}.nii.gz")
        raw = p.read_bytes()
        p.write_bytes(raw[: int(len(raw) * keep)])
        with pytest.raises(UserError, match="truncated or corrupt"):
            load_nifti(p)


def test_2d_and_5d_rejected(write_nifti):
    with pytest.raises(UserError, match="2D"):
        load_nifti(write_nifti(np.ones((8, 8), np.float32), name="a.nii"))
    with pytest.raises(UserError, match="2D"):
        load_nifti(write_nifti(np.ones((8, 8, 1), np.float32), name="b.nii"))
    with pytest.raises(UserError, match="5D"):
        load_nifti(write_nifti(np.ones((4, 4, 4, 1, 2), np.float32), name="c.nii"))


def test_nan_inf_warned_and_replaced_only_in_model_copy(write_nifti):
    data = np.ones((4, 4, 4), np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    vol = load_nifti(write_nifti(data))
    assert any("2 NaN/Inf" in w for w in vol.warnings)
    copy = vol.model_copy()
    assert copy[0, 0, 0, 0] == 0 and copy[0, 1, 1, 1] == 0
    assert np.isnan(vol.data[0, 0, 0, 0]), "the volume itself must stay unchanged"


def test_integer_and_all_zero_warn(write_nifti):
    vol = load_nifti(write_nifti(np.zeros((4, 4, 4), np.int16)))
    text = " ".join(vol.warnings)
    assert "integer type int16" in text and "all zeros" in text


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_nifti(tmp_path / "nope.nii.gz")


def test_stack_channels_checks_grid(write_nifti, oblique_affine):
    a = load_nifti(write_nifti(np.ones((4, 4, 4), np.float32), oblique_affine, name="a.nii"))
    b = load_nifti(write_nifti(np.zeros((4, 4, 4), np.float32), oblique_affine, name="b.nii"))
    c = load_nifti(write_nifti(np.zeros((4, 4, 5), np.float32), oblique_affine, name="c.nii"))
    both = stack_channels([a, b])
    assert both.channels == 2 and both.data[0].sum() == 64 and both.data[1].sum() == 0
    with pytest.raises(UserError, match="one grid"):
        stack_channels([a, c])


def test_save_is_atomic_and_refuses_wrong_suffix(tmp_path):
    with pytest.raises(UserError, match=".nii"):
        save_nifti(tmp_path / "x.png", np.ones((2, 2, 2)), np.eye(4))
    out = save_nifti(tmp_path / "x.nii.gz", np.ones((2, 2, 2), np.float32), np.eye(4))
    assert gzip.decompress(out.read_bytes())[:4] == (348).to_bytes(4, "little")
    assert [p.name for p in tmp_path.iterdir()] == ["x.nii.gz"], "no temporary file left behind"


def test_check_fits_refuses_what_memory_cannot_hold_and_skips_small_arrays(monkeypatch):
    """Only allocations from CHECK_FITS_FROM bytes read /proc (explain's fixed costs, issue 13); those are still
    refused, in one line, when the memory available is smaller."""
    from napari_xai.core import volumes

    reads = []
    monkeypatch.setattr(volumes, "available_memory", lambda: reads.append(1) or 2**30)  # 1 GiB left
    volumes.check_fits(volumes.CHECK_FITS_FROM - 1, "a small array")
    assert reads == []
    volumes.check_fits(512 * 2**20, "half a GiB")
    with pytest.raises(UserError, match=r"^the grid would need 2\.0 GiB, more than the 1\.0 GiB of memory available; "):
        volumes.check_fits(2 * 2**30, "the grid")
    assert len(reads) == 2
