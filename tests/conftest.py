"""Shared fixtures: tiny NIfTI volumes and tiny models (CPU, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._dynamo  # noqa: F401  - load triton before any OpenGL context (see napari_xai/_qt/__init__.py)
import torchvision  # noqa: F401

# Tiny test models are fastest on one thread, and a loaded 2-core machine makes
# OpenMP thread contention dominate otherwise.
torch.set_num_threads(1)


@pytest.fixture
def oblique_affine():
    """A non-trivial affine: 2x3x2.5 mm voxels, rotated about z, LAS-like flip, offset."""
    theta = np.deg2rad(10)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    lin = rot @ np.diag([-2.0, 3.0, 2.5])
    aff = np.eye(4)
    aff[:3, :3] = lin
    aff[:3, 3] = [40.0, -60.0, -30.0]
    return aff


@pytest.fixture
def write_nifti(tmp_path):
    import nibabel as nib

    def _write(data, affine=None, name="vol.nii.gz"):
        aff = np.eye(4) if affine is None else affine
        img = nib.Nifti1Image(np.asarray(data), aff)
        path = tmp_path / name
        nib.save(img, str(path))
        return path

    return _write
