"""The offscreen 3D picture (core/render.py, `napari-xai demo --headless`): drawn the right way round, from any
voxel order, and shaded as lit from the upper left."""

from __future__ import annotations

import numpy as np
import pytest

from napari_xai.core import geometry
from napari_xai.core.render import render_3d, view_basis


def _scene(shape=(40, 40, 40), vox=3.0):
    """A ball of 'tissue' (radius 45 mm) centred at world (0, 0, 0), RAS grid, and a relevance blob at world
    (+30, 0, 0) mm (the subject's right, inside the ball) and a negative one at (0, 0, +30) (superior)."""
    aff = np.diag([vox, vox, vox, 1.0])
    aff[:3, 3] = -vox * (np.asarray(shape) - 1) / 2
    ijk = np.indices(shape).reshape(3, -1).T
    xyz = geometry.vox_to_world(aff, ijk).reshape(shape + (3,))
    r = np.linalg.norm(xyz, axis=-1)
    anat = np.where(r < 45, 1000.0, 20.0).astype(np.float32)
    rel = np.zeros(shape, np.float32)
    rel[np.linalg.norm(xyz - [30, 0, 0], axis=-1) < 8] = 1.0
    rel[np.linalg.norm(xyz - [0, 0, 30], axis=-1) < 8] = -1.0
    return anat, rel, aff


def _centroid(mask):
    rows, cols = np.nonzero(mask)
    return rows.mean() / mask.shape[0], cols.mean() / mask.shape[1]


def test_view_basis_is_a_right_handed_camera():
    right, up, forward = view_basis(0.0, 0.0)  # in front of the face, looking back at it
    assert np.allclose(forward, [0, -1, 0]) and np.allclose(up, [0, 0, 1])
    assert np.allclose(right, [-1, 0, 0]), "facing the subject, its right is on the picture's left"
    for az, el in ((-45, -35), (120, 20)):
        r, u, f = view_basis(az, el)
        assert np.allclose(np.cross(r, u), -f)  # right x up points at the viewer
        assert abs(r @ u) < 1e-12 and abs(u @ f) < 1e-12


def test_picture_is_oriented_and_shaded():
    anat, rel, aff = _scene()
    img = render_3d(anat, aff, rel, (0.1, 1.0), view=(0.0, 0.0), upscale=1).astype(float)
    red = (img[..., 0] > 200) & (img[..., 2] < 150)  # hot: the positive blob
    cyan = (img[..., 2] > 200) & (img[..., 0] < 150)  # the negative blob
    assert red.sum() > 20 and cyan.sum() > 20
    ry, rx = _centroid(red)
    cy, cx = _centroid(cyan)
    assert rx < 0.4 and 0.35 < ry < 0.65, "the subject's right is on the left of a front view"
    assert cy < 0.4 and 0.35 < cx < 0.65, "superior is up"
    grey = img.mean(axis=-1)
    h, w = grey.shape
    assert grey[0, 0] == 0 and grey[h // 2, w // 2] > 100, "black background, lit tissue"
    upper_left, lower_right = grey[int(0.3 * h), int(0.3 * w)], grey[int(0.7 * h), int(0.7 * w)]
    assert upper_left > lower_right + 20, "lit from the upper left"


def test_same_picture_from_another_voxel_order():
    """A scan stored PIR is the same object: the picture is drawn through the affine, not the array order."""
    anat, rel, aff = _scene()
    ras = render_3d(anat, aff, rel, (0.1, 1.0), view=(-45.0, -35.0), upscale=1).astype(float)
    axes = (1, 2, 0)
    flip = [True, True, False]  # LPS-like flips on top of the permutation
    data_a, data_r = np.transpose(anat, axes), np.transpose(rel, axes)
    perm = np.zeros((4, 4))
    perm[3, 3] = 1.0
    shape = data_a.shape
    for new, old in enumerate(axes):
        perm[old, new] = 1.0
    for ax, f in enumerate(flip):
        if f:
            data_a, data_r = np.flip(data_a, ax), np.flip(data_r, ax)
            m = np.eye(4)
            m[ax, ax], m[ax, 3] = -1.0, shape[ax] - 1
            perm = perm @ m
    aff2 = aff @ perm
    assert geometry.axcodes(aff2) != geometry.axcodes(aff)
    other = render_3d(np.ascontiguousarray(data_a), aff2, np.ascontiguousarray(data_r), (0.1, 1.0),
                      view=(-45.0, -35.0), upscale=1).astype(float)
    assert other.shape == ras.shape
    assert np.abs(other - ras).mean() < 2.0


@pytest.mark.parametrize("upscale", [1, 3])
def test_size_and_dtype(upscale):
    anat, rel, aff = _scene()
    img = render_3d(anat, aff, None, upscale=upscale)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] % upscale == 0 and img.shape[0] >= 60 * upscale
