"""The Atlas dock's outline layers: all regions, the selected ones and the one under the cursor.

Outlines are Labels layers holding boundary volumes (voxels inside a region that touch another label): in-plane
boundaries for 2D slices, 3D boundaries in the 3D view (napari's ``contour`` does not draw in 3D).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from qtpy.QtWidgets import QGroupBox, QHBoxLayout

from ...core import atlas as at
from .._forms import checkbox
from .viewers import GRID_KEY, displayed_data_axes

ROLE_KEY = "xai_atlas_role"  # layer metadata: which outline layer this is
ROLES = ("all", "selected", "cursor")  # bottom to top: the live one is never hidden
CURSOR_COLOUR = "#ff3cff"  # magenta: not used by the relevance colormaps (hot / cyan)
SELECTED_COLOUR = "#3cff3c"


def single_colour(colour: str):
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict={None: colour, 0: "transparent"})


def region_colours(grid):
    """Colours from the labels file (FreeSurfer LUT), else None (napari's cyclic colours)."""
    from napari.utils.colormaps import DirectLabelColormap

    cols = {v: r.color for v, r in grid.atlas.regions.items() if r.color is not None}
    if not cols:
        return None
    d = {None: "white", 0: "transparent"}
    d.update({v: (c[0], c[1], c[2], 1.0) for v, c in cols.items()})
    return DirectLabelColormap(color_dict=d)


def style_3d(role: str, three: bool) -> dict:
    """3D: translucent boundary shells, so clusters inside a region stay visible; 2D: crisp lines."""
    if not three:
        return {"rendering": "iso_categorical", "opacity": 0.9}
    return {"rendering": "translucent", "opacity": 0.35 if role != "all" else 0.25}


class OutlineBox(QGroupBox):
    """The three check boxes: outline under the cursor, the selected regions, all regions."""

    def __init__(self, on_toggle: Callable, parent=None):
        super().__init__("Outlines", parent)
        self.cursor_check = checkbox("Under cursor", True, slot=on_toggle)
        self.selected_check = checkbox("Selected", True, "Regions selected in the table (ctrl/shift-click for several)",
                                       on_toggle)
        self.all_check = checkbox("All regions", slot=on_toggle)
        lay = QHBoxLayout(self)
        for w in (self.cursor_check, self.selected_check, self.all_check):
            lay.addWidget(w)


class OutlineLayers:
    """Creates, updates and removes the outline layers of one viewer; ``on_added`` runs after a layer is added."""

    def __init__(self, viewer, on_added: Callable[[], None]):
        self.viewer = viewer
        self.layers: dict[str, object] = {}
        self.cursor_value: int | None = None
        self._on_added = on_added

    def mine(self) -> list:
        return [lay for lay in self.layers.values() if lay is not None]

    def shown(self, role: str):
        layer = self.layers.get(role)
        return layer if layer is not None and layer in self.viewer.layers else None

    def upsert(self, grid, role: str, data: np.ndarray, name: str, affine=None, **kwargs):
        affine = grid.affine if affine is None else affine
        meta = {ROLE_KEY: role, GRID_KEY: grid}
        layer = self.shown(role)
        if layer is not None:
            if not np.array_equal(layer.affine.affine_matrix, affine):
                layer.affine = affine
            if layer.data is not data:
                layer.data = data
            layer.name = name
            layer.metadata = meta
            for k, v in kwargs.items():
                setattr(layer, k, v)
            return layer
        viewer = self.viewer
        active = viewer.layers.selection.active  # adding a layer selects it; give the user's choice back
        layer = viewer.add_labels(data, name=name, affine=affine, metadata=meta,
                                  opacity=kwargs.pop("opacity", 0.9), blending="translucent")
        for k, v in kwargs.items():
            setattr(layer, k, v)
        self.layers[role] = layer
        if viewer.dims.ndisplay == 3:
            for k, v in style_3d(role, True).items():
                setattr(layer, k, v)
        self.order()
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active
        self._on_added()
        return layer

    def order(self) -> None:
        """Outline layers on top, in the order all < selected < cursor (the live one is never hidden)."""
        layers = self.viewer.layers
        for role in ROLES:
            layer = self.shown(role)
            if layer is not None:
                idx = layers.index(layer)
                if idx != len(layers) - 1:
                    layers.move(idx, len(layers))

    def remove(self, role: str) -> None:
        layer = self.layers.pop(role, None)
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        if role == "cursor":
            self.cursor_value = None

    def update(self, grid, data: np.ndarray, box: OutlineBox, selected: list[int], cursor_value: int) -> None:
        """Create, update or remove the three layers to match the check boxes (``data``: the plane outlines)."""
        title = grid.atlas.name
        if box.all_check.isChecked():
            layer = self.upsert(grid, "all", data, f"{title} outlines")
            cmap = region_colours(grid)
            if cmap is not None:
                layer.colormap = cmap
        else:
            self.remove("all")
        if box.selected_check.isChecked() and selected:
            self.upsert(grid, "selected", at.select_regions(data, selected), f"{title} outline (selected)",
                        colormap=single_colour(SELECTED_COLOUR))
        else:
            self.remove("selected")
        if box.cursor_check.isChecked():
            self.set_cursor(grid, cursor_value, axes=None, create=True)
        else:
            self.remove("cursor")
        for layer in self.layers.values():
            if layer is not None:
                layer.editable = False

    def set_cursor(self, grid, value: int, axes, create: bool = False) -> None:
        """Show the outline of region ``value`` in the cursor layer: a small crop, fast to update."""
        crop, aff = grid.region_outline_crop(value, axes if axes is not None else self.axes(grid))
        layer = self.shown("cursor")
        if layer is None and not create:
            return
        name = f"{grid.atlas.name} outline (cursor)"
        meta = {ROLE_KEY: "cursor", GRID_KEY: grid, "region_value": int(value)}
        if layer is None:
            layer = self.upsert(grid, "cursor", crop, name, affine=aff, colormap=single_colour(CURSOR_COLOUR))
        else:
            layer.affine = aff
            layer.data = crop
            layer.name = name
        layer.metadata = meta
        self.cursor_value = value

    def axes(self, grid) -> tuple[int, ...]:
        return displayed_data_axes(self.viewer, grid.affine)

    def restyle(self) -> None:
        three = self.viewer.dims.ndisplay == 3
        for role, layer in self.layers.items():
            if layer in self.viewer.layers:
                for k, v in style_3d(role, three).items():
                    setattr(layer, k, v)

    def forget(self) -> None:
        """Drop every outline layer; they leave the viewer once the running layer event ends."""
        from qtpy.QtCore import QTimer

        leftovers, self.layers, self.cursor_value = list(self.layers.values()), {}, None
        viewer = self.viewer
        # never change the layer list inside its own removal event (napari is iterating over it)
        QTimer.singleShot(0, lambda: [viewer.layers.remove(ly) for ly in leftovers if ly in viewer.layers])
