"""The Atlas dock's entry point (napari.yaml, the explorer and scripts import it from here); the code is in
:mod:`napari_xai._qt.atlas`."""

from ..core.geometry import layer_affine  # noqa: F401  (the one layer -> affine, as the widget uses it)
from .atlas import CUSTOM, AtlasWidget, atlas_grid_for_viewer, atlas_widget_for_viewer, cursor_voxel

__all__ = ["CUSTOM", "AtlasWidget", "atlas_grid_for_viewer", "atlas_widget_for_viewer", "cursor_voxel", "layer_affine"]
