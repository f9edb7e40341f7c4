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


# ---------------------------------------------------------------------------
# storage order vs display order; the one layer -> affine
# ---------------------------------------------------------------------------

STORAGE_CODES = ["RAS", "LAS", "LPI", "PIR", "PIL", "ASR", "SRA", "IPL"]


def _reoriented_affine(codes: str, zooms=(1.0, 2.0, 3.0)):
    """nibabel's affine for a 4x5x6 grid stored in ``codes`` (from an RAS grid with ``zooms``), and that grid."""
    import nibabel as nib

    ras = np.diag([*zooms, 1.0])
    ras[:3, 3] = [-10.0, 20.0, 5.0]
    img = nib.Nifti1Image(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6), ras)
    ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                           nib.orientations.axcodes2ornt(codes))
    out = img.as_reoriented(ornt)
    assert nib.aff2axcodes(out.affine) == tuple(codes)
    return out


def test_view_axes_put_array_axes_in_world_order_for_every_storage():
    import nibabel as nib

    for codes in STORAGE_CODES:
        img = _reoriented_affine(codes)
        axes = geometry.view_axes(img.affine)
        shown = geometry.permute_affine(img.affine, axes)
        # nibabel: the shown array's axis d runs along world axis d (flips allowed)
        np.testing.assert_array_equal(nib.orientations.io_orientation(shown)[:, 0], [0, 1, 2])
        data = np.asarray(img.dataobj)
        view = geometry.to_view(data, axes)
        assert np.shares_memory(view, data)  # a view, no copy
        np.testing.assert_array_equal(geometry.from_view(view, axes), data)
        # every voxel keeps its world position: nibabel's apply_affine on both grids
        rng = np.random.default_rng(0)
        for _ in range(10):
            t = [int(rng.integers(0, n)) for n in view.shape]
            s = [0, 0, 0]
            for d, a in enumerate(axes):
                s[a] = t[d]
            assert view[tuple(t)] == data[tuple(s)]
            np.testing.assert_allclose(nib.affines.apply_affine(shown, t), nib.affines.apply_affine(img.affine, s))
        # the displayed volume is nibabel's closest canonical (RAS) volume up to axis flips
        canon = nib.as_closest_canonical(img)
        flips = [d for d in range(3) if shown[d, d] < 0]
        np.testing.assert_array_equal(np.flip(view, axis=flips) if flips else view, np.asarray(canon.dataobj))


def test_view_axes_hand_computed_and_oblique(oblique_affine):
    pir = np.array([[0, 0, 2.0, -90], [-2.0, 0, 0, 120], [0, -2.0, 0, 80], [0, 0, 0, 1]])
    assert geometry.view_axes(pir) == (2, 0, 1)  # i runs along y, j along z, k along x
    assert geometry.view_axes(np.diag([-2.0, 2.0, 2.0, 1.0])) == (0, 1, 2)  # LAS: shown as stored
    assert geometry.view_axes(oblique_affine) == (0, 1, 2)  # 10° rotation: still closest to its own order
    perm = oblique_affine[:, [1, 2, 0, 3]]  # the oblique grid with permuted axes
    assert geometry.view_axes(perm) == (2, 0, 1)
    np.testing.assert_array_equal(geometry.permute_affine(perm, (2, 0, 1)), oblique_affine)
    assert geometry.view_axes(np.zeros((4, 4))) == (0, 1, 2)  # degenerate: as stored


class _FakeLayer:
    """Duck-typed layer: data_to_world through a 4x4 matrix on its last three axes."""

    def __init__(self, affine, ndim=3, metadata=None):
        self.a = np.asarray(affine, dtype=float)
        self.ndim = ndim
        self.metadata = metadata or {}
        self.data = np.zeros((2,) * ndim)

    def data_to_world(self, p):
        p = np.asarray(p, dtype=float)
        return np.r_[p[:-3], self.a[:3, :3] @ p[-3:] + self.a[:3, 3]]


def test_layer_affine_from_transforms_and_metadata(oblique_affine):
    perm = oblique_affine[:, [1, 2, 0, 3]]
    for aff in (oblique_affine, perm):
        np.testing.assert_allclose(geometry.layer_affine(_FakeLayer(aff)), aff, atol=1e-12)
        np.testing.assert_allclose(geometry.layer_affine(_FakeLayer(aff, ndim=4)), aff, atol=1e-12)
    # metadata (exact, as stored in the file) wins over the transform
    np.testing.assert_array_equal(geometry.layer_affine(_FakeLayer(np.eye(4), metadata={"affine": perm})), perm)
    # a stored view: the layer's grid is the transposed one, the file's is given back with its voxel order
    layer = _FakeLayer(oblique_affine, metadata={"affine": oblique_affine,
                                                 geometry.STORAGE_KEY: {"affine": perm, "axes": [2, 0, 1]}})
    layer.data = np.arange(24.0).reshape(2, 3, 4)
    data, aff = geometry.layer_stored(layer)
    np.testing.assert_array_equal(aff, perm)
    assert data.shape == (3, 4, 2)
    np.testing.assert_array_equal(geometry.to_view(data, (2, 0, 1)), layer.data)
