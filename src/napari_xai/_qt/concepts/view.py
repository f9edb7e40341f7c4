"""Concepts as napari layers: one concept as ± relevance layers, several side by side in the grid.

Both go through :mod:`napari_xai._layers` (the Explain dock's styling: ``hot`` for positive and ``cyan`` for
negative relevance, additive MIP, the map's own affine, scans stored with permuted axes shown transposed), so a
concept layer lands on the volume's world voxels and saves like any relevance layer. The grid uses one colour
scale for all cells (:func:`napari_xai.core.compare.common_limit`).
"""

from __future__ import annotations

import copy

import numpy as np

from ..._layers import comparison_layer_data, show_grid, signed_layers, upsert

#: Metadata key of every layer this dock makes; ``kind`` is ``concept`` or ``compare``.
META_KEY = "xai_concepts"


def concept_record(result, concept) -> dict:
    """The run's provenance record with the concept it shows (channel, layer, share, regions)."""
    record = copy.deepcopy(result.provenance)
    record["concept"] = {"channel": concept.channel, "layer": result.layer, "rank": concept.rank + 1,
                         "relevance": concept.relevance, "share": concept.share, "map_sum": concept.map_sum,
                         "atlas": result.atlas, "regions": [[r, float(s)] for r, s in concept.regions]}
    return record


def concept_name(result, concept) -> str:
    return f"concept {concept.channel} · {result.layer} · {result.target_name}"


def concept_tuples(result, concept) -> list[tuple]:
    """Layer tuples (positive, negative) of one concept's conditional heatmap on the volume's grid."""
    meta = {"provenance": concept_record(result, concept), "warnings": list(result.warnings),
            META_KEY: {"kind": "concept", "channel": concept.channel, "layer": result.layer}}
    return signed_layers(concept.map, concept_name(result, concept), result.affine, meta)


def show_concept(viewer, result, concept) -> list:
    """Replace the dock's concept layers by this concept's (+)/(−) layers; returns the layers."""
    for layer in [ly for ly in viewer.layers if ly.metadata.get(META_KEY, {}).get("kind") == "concept"]:
        viewer.layers.remove(layer)
    return upsert(viewer, concept_tuples(result, concept))


def compare_tuples(result, channels: list[int], anatomy: np.ndarray) -> tuple[list[tuple], float]:
    """Grid layer tuples for these concepts (anatomy + ± relevance per cell) at one colour limit, and the limit."""
    from types import SimpleNamespace

    from ...core.compare import common_limit

    concepts = [result.concept(c) for c in channels]
    limit = common_limit([c.map for c in concepts])
    cells = [(cell_title(c), SimpleNamespace(data=c.map[None], affine=result.affine, header=None,
                                       provenance=concept_record(result, c), warnings=list(result.warnings)))
             for c in concepts]
    tuples = comparison_layer_data(anatomy, cells, limit, meta_key=META_KEY)
    for _, kw, _ in tuples:
        kw["metadata"][META_KEY]["kind"] = "compare"
    return tuples, limit


def cell_title(concept) -> str:
    """A grid cell's short title: ``ch 15 · 16 % · ParaHippocampal_L``."""
    region = concept.top_region[0]
    return f"ch {concept.channel} · {100 * concept.share:.0f} %" + (f" · {region}" if region else "")


#: The grid cells' title size (napari's default is larger: four titles overflow their cells at 1280 px).
TITLE_FONT_SIZE = 9


class Grid:
    """napari's grid mode for a comparison: other layers hidden while it is on, restored by :meth:`exit`."""

    def __init__(self, viewer):
        self._viewer = viewer
        self._state: dict | None = None

    @property
    def active(self) -> bool:
        return self._state is not None

    def enter(self, tuples: list[tuple]) -> list:
        viewer = self._viewer
        point = tuple(viewer.dims.point)  # the user's slice: replacing the cells must not move it
        self.remove_cells()
        if self._state is None:
            self._state = {"visible": {ly.name: ly.visible for ly in viewer.layers},
                           "stride": viewer.canvas.grid.stride}
        for layer in viewer.layers:
            layer.visible = False
        layers = show_grid(viewer, tuples, three_d=viewer.dims.ndisplay == 3)  # keeps the user's 2D or 3D
        for layer in layers:
            layer.name_overlay.font_size = TITLE_FONT_SIZE
        if len(point) == viewer.dims.ndim:
            for axis, value in enumerate(point):
                viewer.dims.set_point(axis, value)
        return layers

    def remove_cells(self) -> None:
        viewer = self._viewer
        for layer in [ly for ly in viewer.layers if ly.metadata.get(META_KEY, {}).get("kind") == "compare"]:
            viewer.layers.remove(layer)

    def exit(self) -> None:
        """Grid off, the comparison's layers removed, the other layers' visibility as before."""
        if self._state is None:
            return
        viewer = self._viewer
        viewer.canvas.grid.enabled = False
        self.remove_cells()
        for layer in viewer.layers:
            if layer.name in self._state["visible"]:
                layer.visible = self._state["visible"][layer.name]
        viewer.canvas.grid.stride = self._state["stride"]
        self._state = None
        viewer.reset_view()
