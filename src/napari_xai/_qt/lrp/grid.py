"""napari's grid mode for side-by-side maps (the Compare tab's cells, the Check tab's sanity maps).

Entering hides every other layer and remembers the view; leaving restores both. One instance per designer, so
both tabs share one remembered state.
"""

from __future__ import annotations

from .common import META_KEY


class GridMode:
    """Grid layers in, everything else hidden; :meth:`exit` gives the viewer back as it was."""

    def __init__(self, viewer):
        self.viewer = viewer
        self._state: dict | None = None

    def enter(self, tuples: list[tuple], three_d: bool, meta_key: str = META_KEY) -> list:
        """Add these grid layers (``_layers.comparison_layer_data``) and switch napari's grid on.

        The earlier grid layers tagged ``kind`` = the new ones' kind under
        ``meta_key`` go; every other layer is hidden while the grid is on
        (their visibility is restored by :meth:`exit`), never changed otherwise.
        """
        from ..._layers import show_grid

        viewer = self.viewer
        kinds = {kw["metadata"].get(meta_key, {}).get("kind") for _, kw, _ in tuples} - {None}
        for layer in [l for l in viewer.layers if l.metadata.get(meta_key, {}).get("kind") in kinds]:
            viewer.layers.remove(layer)
        if self._state is None:
            self._state = {"visible": {l.name: l.visible for l in viewer.layers},
                           "ndisplay": viewer.dims.ndisplay, "stride": viewer.canvas.grid.stride}
        for layer in viewer.layers:
            layer.visible = False
        return show_grid(viewer, tuples, three_d=three_d)

    def show(self, volume, cells: list, common: bool, three_d: bool, meta_key: str = META_KEY, tag=None,
             noun: str = "cell") -> str:
        """Show ``(label, Relevance)`` cells over ``volume``'s first channel, one colour limit for all (``common``)
        or one per cell; ``tag(layer kwargs)`` may add to each layer's metadata. Returns the scale's description."""
        from ..._layers import comparison_layer_data, faint_cells
        from ...core.compare import cell_limits, common_limit

        maps = [rel.data.sum(axis=0) for _, rel in cells]
        limit = common_limit(maps) if common else cell_limits(maps)
        tuples = comparison_layer_data(volume.data[0], cells, limit, meta_key)
        if tag is not None:
            for _, kw, _ in tuples:
                tag(kw)
        self.enter(tuples, three_d=three_d, meta_key=meta_key)
        scale = f"colour limit 0…{limit:.3g} for all" if common else f"each {noun} scaled to its own 99.99th percentile"
        faint = faint_cells(tuples, meta_key)
        if faint:
            scale += f" ({', '.join(faint)}: too faint at this scale; uncheck 'one colour scale' to see them)"
        return scale

    def exit(self) -> None:
        viewer = self.viewer
        viewer.canvas.grid.enabled = False
        state = self._state or {}
        for layer in viewer.layers:
            if layer.name in state.get("visible", {}):
                layer.visible = state["visible"][layer.name]
        if "ndisplay" in state:
            viewer.dims.ndisplay = state["ndisplay"]
            viewer.canvas.grid.stride = state["stride"]
        self._state = None
