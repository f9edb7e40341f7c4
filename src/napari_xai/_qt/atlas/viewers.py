"""Which atlas is in use in a viewer, and the voxel under its mouse (for the explorer and the Atlas dock).

Other widgets (the relevance explorer) find the atlas in use with :func:`atlas_grid_for_viewer` and the dock
itself with :func:`atlas_widget_for_viewer` (to follow its ``atlas_changed`` signal).
"""

from __future__ import annotations

import weakref

import numpy as np

from ...core import atlas as at

GRID_KEY = "xai_atlas_grid"  # layer metadata: the AtlasOnGrid the layer shows

_WIDGETS: "weakref.WeakValueDictionary[int, object]" = weakref.WeakValueDictionary()


def camera(viewer):
    """The viewer's camera: ``viewer.scene.camera`` since napari 0.9 (``viewer.camera`` is deprecated there)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def viewer_key(viewer) -> int:
    """One key per viewer: napari hands each plugin dock its own proxy of the same viewer."""
    return id(getattr(viewer, "__wrapped__", viewer))


def register(viewer, widget) -> None:
    """Remember ``widget`` as the Atlas dock of ``viewer`` (weakly: a closed dock goes away)."""
    _WIDGETS[viewer_key(viewer)] = widget


def atlas_widget_for_viewer(viewer):
    """The atlas widget docked in ``viewer`` (to connect to its ``atlas_changed`` signal), or None."""
    return _WIDGETS.get(viewer_key(viewer))


def atlas_grid_for_viewer(viewer, shape=None, affine=None):
    """The atlas in use in ``viewer`` as an :class:`~napari_xai.core.atlas.AtlasOnGrid`, or None.

    With ``shape``/``affine`` the atlas is returned resampled onto that grid
    (cached), e.g. the grid of a cluster label volume.
    """
    w = _WIDGETS.get(viewer_key(viewer))
    grid = w.grid if w is not None else None
    if grid is None:
        for layer in viewer.layers:
            g = layer.metadata.get(GRID_KEY) if hasattr(layer, "metadata") else None
            if g is not None:
                grid = g
                break
    if grid is None or shape is None or affine is None:
        return grid
    return at.atlas_on_grid(grid.atlas, shape, affine, threshold=grid_threshold(grid))


def grid_threshold(grid) -> float:
    """The max-probability threshold of an atlas grid (label atlases: the default, which they ignore)."""
    return grid.threshold if grid.threshold is not None else at.DEFAULT_PROB_THRESHOLD


def cursor_voxel(viewer, grid) -> tuple[int, int, int] | None:
    """Voxel of an atlas ``grid`` under the mouse: at the cursor in 2D, the first labelled voxel on the view ray in 3D."""
    pos = np.asarray(viewer.cursor.position, dtype=float)
    if pos.size < 3:
        return None
    xyz = pos[-3:]
    if viewer.dims.ndisplay == 3:
        # the camera's viewing direction (public API): the ray under the mouse in napari's default orthographic
        # view; with perspective the rays spread and this is the central one
        direction = camera(viewer).calculate_nd_view_direction(viewer.dims.ndim, viewer.dims.displayed)
        if direction is None:
            return None
        return at.first_nonzero_along_ray(grid.labels, grid.affine, xyz, np.asarray(direction, dtype=float)[-3:])
    return grid.voxel_of(xyz)


def displayed_data_axes(viewer, affine) -> tuple[int, ...]:
    """Data axes of a grid with this affine shown on screen (all three in 3D, or without an affine)."""
    dims = viewer.dims
    if dims.ndisplay == 3 or affine is None:
        return (0, 1, 2)
    nd = dims.ndim
    world_axes = [d - (nd - 3) for d in dims.displayed if d >= nd - 3]
    lin = np.abs(np.asarray(affine)[:3, :3])
    axes = sorted({int(np.argmax(lin[w])) for w in world_axes})
    return tuple(axes) if len(axes) == 2 else (0, 1, 2)


def centre_on(viewer, world) -> None:
    """Move the slices and the camera to a world point (mm)."""
    nd = viewer.dims.ndim
    point = list(viewer.dims.point)
    for i in range(3):
        point[nd - 3 + i] = float(world[i])
    for axis in range(nd - 3, nd):
        viewer.dims.set_point(axis, point[axis])
    camera(viewer).center = tuple(point[d] for d in viewer.dims.displayed)
