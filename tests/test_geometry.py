import numpy as np

from napari_xai.core import geometry


def test_voxel_sizes_and_volume(oblique_affine):
    np.testing.assert_allclose(geometry.voxel_sizes(oblique_affine), [2.0, 3.0, 2.5])
    assert abs(geometry.voxel_volume_mm3(oblique_affine) - 15.0) < 1e-9


def test_world_roundtrip(oblique_affine):
    ijk = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 7.25]])
    xyz = geometry.vox_to_world(oblique_affine, ijk)
    np.testing.assert_allclose(geometry.world_to_vox(oblique_affine, xyz), ijk, atol=1e-9)
    # hand-computed: voxel (0,0,0) is the affine's translation
    np.testing.assert_allclose(geometry.vox_to_world(oblique_affine, [0, 0, 0]), [40, -60, -30])


def test_resize_identity_is_untouched():
    data = np.random.default_rng(0).normal(size=(2, 5, 6, 7)).astype(np.float32)
    out = geometry.resize(data, (5, 6, 7))
    np.testing.assert_array_equal(out, data)


def test_resize_linear_ramp_is_exact_inside():
    # trilinear interpolation reproduces a linear function of world position exactly
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    shape, mshape = (8, 8, 8), (4, 4, 4)
    i = np.arange(8, dtype=np.float32)
    ramp = np.broadcast_to(i[:, None, None], shape).astype(np.float32)
    out = geometry.resize(ramp, mshape)
    maff = geometry.model_grid_affine(aff, shape, mshape)
    # model voxel m lies at source index 2m + 0.5
    centres = geometry.world_to_vox(aff, geometry.vox_to_world(maff, np.stack([np.arange(4)] * 3, 1).astype(float)))
    np.testing.assert_allclose(out[:, 0, 0], centres[:, 0], atol=1e-5)
    np.testing.assert_allclose(centres[:, 0], 2 * np.arange(4) + 0.5)


def test_relevance_to_grid_keeps_total():
    rng = np.random.default_rng(1)
    rel = rng.normal(size=(1, 4, 4, 4)).astype(np.float32) + 1.0
    back = geometry.relevance_to_grid(rel, (8, 8, 8))
    assert back.shape == (1, 8, 8, 8)
    assert abs(back.sum() - rel.sum()) / abs(rel.sum()) < 0.05


def test_resample_to_grid_through_world():
    # a label volume in LAS orientation resampled onto a RAS grid covering the same box
    data = np.zeros((4, 4, 4), np.uint8)
    data[0, 1, 2] = 7
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    las[0, 3] = 3.0  # i=0 -> x=3
    ras = np.eye(4)
    out = geometry.resample_to_grid(data, las, (4, 4, 4), ras, order=0)
    assert out[3, 1, 2] == 7 and out.sum() == 7
