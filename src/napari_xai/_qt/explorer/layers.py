"""The explorer's two output layers, "filtered relevance" (Image) and "clusters" (uint16 Labels), updated in place.

Both are zero outside the clusters, and a 3D view casts rays through a layer's whole box: they are shown
cropped to the clusters' box (``CROP_KEY`` in the metadata; the writer pads them back). Cropped, a 3D frame at
1 mm costs ~0.1 s per layer instead of seconds (``benchmarks/bench_gui.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..._layers import CLUSTERS_STYLE, FILTERED_STYLE
from ...core import postprocess as pp
from ...core.geometry import crop_box, cropped_affine

FILTERED_NAME = "filtered relevance"
CLUSTERS_NAME = "clusters"
CROP_MARGIN = 6  # voxels around the clusters' box in a new crop, so small changes keep the box (and the affine)
CROP_SLACK = 8  # a crop is kept while at most this many times the volume it needs
CROP_KEY = "xai_crop"  # metadata of a cropped explorer layer: {"offset": ijk, "shape": full shape, "affine": full}


def relevance_colormap():
    """Diverging colormap that is transparent at zero (centre of symmetric limits).

    Negative relevance is blue-cyan, positive red-yellow; alpha grows with |r|,
    so a 3D view shows the clusters instead of an opaque box.
    """
    from napari.utils.colormaps import Colormap

    return Colormap(
        colors=[
            [0.2, 0.9, 1.0, 1.0],
            [0.0, 0.35, 1.0, 0.75],
            [0.0, 0.2, 0.9, 0.0],
            [0.9, 0.15, 0.0, 0.0],
            [1.0, 0.35, 0.0, 0.75],
            [1.0, 1.0, 0.2, 1.0],
        ],
        controls=[0.0, 0.3, 0.499, 0.501, 0.7, 1.0],
        name="xai signed (transparent zero)",
    )


def box_volume(box) -> int:
    return int(np.prod([b.stop - b.start for b in box]))


class LayerUpdater:
    """Puts results into the two layers of one viewer (GUI thread only)."""

    def __init__(self, viewer):
        self.viewer = viewer
        self.layers: dict[str, Any] = {}  # "image" / "labels" -> layer
        self._crop_boxes: dict[str, tuple] = {}  # kind -> (crop box, full shape) of the cropped layers
        self._filtered_key: tuple | None = None
        self.affine = np.eye(4)
        self.provenance: dict | None = None
        self.source_name: str | None = None

    def own(self) -> list:
        return [ly for ly in self.layers.values() if ly is not None]

    def layer(self, kind: str):
        """The live layer of ``kind`` ("image", "labels") or None."""
        layer = self.layers.get(kind)
        return layer if layer is not None and layer in self.viewer.layers else None

    def show(self, res: pp.PostResult, masked: bool) -> None:
        """Both layers for ``res``; ``masked``: the filtered relevance only inside the kept clusters."""
        self.show_filtered(res, masked)
        self._set_layer(res, "labels", CLUSTERS_NAME, res.labels, crop=True)

    def show_filtered(self, res: pp.PostResult, masked: bool) -> None:
        key = (id(res.filtered), id(res.labels) if masked else None)
        if key == self._filtered_key and self.layer("image") is not None:
            return  # unchanged (e.g. a size step with the whole map shown)
        # the largest |r| shown: the clusters' peaks when masked, else the whole map's
        m = (float(np.abs(res.table.peak).max()) if len(res.table) else 0.0) if masked else res.max_abs
        # masked: only the clusters' box, masked there (never a full-size copy on the GUI thread)
        self._set_layer(res, "image", FILTERED_NAME, res.filtered, crop=masked, mask=res.labels if masked else None,
                        limits=(-m, m) if m > 0 else (-1.0, 1.0))
        self._filtered_key = key

    def _find(self, kind: str, name: str):
        layer = self.layer(kind)
        if layer is None and name in self.viewer.layers:
            cand = self.viewer.layers[name]
            if type(cand).__name__.lower() == kind:
                layer = cand
        return layer

    def _set_layer(self, res, kind: str, name: str, data: np.ndarray, crop: bool = False,
                   mask: np.ndarray | None = None, limits=None) -> None:
        """Put ``data`` into the layer; ``crop``: only the box around the clusters; ``mask``: labels, ``data`` is
        shown only where they are non-zero."""
        full_shape = data.shape
        affine = self.affine
        if crop:
            box = self.stable_box(kind, crop_box(full_shape, res.box), full_shape)
            data = (np.where(mask[box] > 0, data[box], np.float32(0)) if mask is not None
                    else np.ascontiguousarray(data[box]))
            affine = cropped_affine(self.affine, box)
        v = self.viewer
        layer = self._find(kind, name)
        if kind == "image":
            if layer is None:
                layer = v.add_image(data, name=name, affine=affine, colormap=relevance_colormap(),
                                    contrast_limits=limits, **FILTERED_STYLE, metadata={"affine": self.affine})
            else:
                layer.data = data
                layer.contrast_limits = limits
        elif layer is None:
            layer = v.add_labels(data, name=name, affine=affine, **CLUSTERS_STYLE, metadata={"affine": affine})
        else:
            layer.data = data
        if not np.allclose(np.asarray(layer.affine.affine_matrix)[-4:, -4:], affine):
            layer.affine = affine
        meta = {k: val for k, val in (layer.metadata or {}).items() if k != CROP_KEY}
        if crop:
            meta[CROP_KEY] = {"offset": [int(s.start) for s in box], "shape": [int(n) for n in full_shape],
                              "affine": self.affine}
        layer.metadata = {**meta, "affine": affine, "provenance": self.record(res, kind)}
        self.layers[kind] = layer

    def stable_box(self, kind: str, want: tuple, shape: tuple) -> tuple:
        """The crop box of a layer: the last one while it holds ``want`` and is not much larger, else ``want``
        widened by :data:`CROP_MARGIN` voxels. A new box means a new layer affine, which costs napari as much as
        the data itself; this way most slider steps only replace the data."""
        cur = self._crop_boxes.get(kind)
        if cur is not None and cur[1] == shape and box_volume(cur[0]) <= CROP_SLACK * max(box_volume(want), 4096) \
                and all(c.start <= w.start and w.stop <= c.stop for c, w in zip(cur[0], want)):
            return cur[0]
        box = tuple(slice(max(0, w.start - CROP_MARGIN), min(int(n), w.stop + CROP_MARGIN)) for w, n in zip(want, shape))
        self._crop_boxes[kind] = (box, shape)
        return box

    def record(self, res: pp.PostResult | None, kind: str) -> dict:
        return {
            "kind": "clusters" if kind == "labels" else "filtered_relevance",
            "postprocess": res.params.to_dict() if res else None,
            "source_layer": self.source_name,
            "provenance": self.provenance,
        }

    # -- picking and highlighting -----------------------------------------------------
    def cluster_at(self, world_position, camera) -> int:
        """Cluster id under a world position (0 = none); in 3D the first cluster along the view ray."""
        layer = self.layer("labels")
        if layer is None:
            return 0
        try:
            if self.viewer.dims.ndisplay == 3:
                value = layer.get_value(world_position, view_direction=camera.view_direction,
                                        dims_displayed=list(self.viewer.dims.displayed), world=True)
            else:
                value = layer.get_value(world_position, world=True)
        except Exception:  # pragma: no cover - napari picking can fail on degenerate views
            return 0
        if isinstance(value, tuple):
            value = value[-1]
        return int(value) if value is not None else 0

    def highlight(self, cluster_id: int | None, on: bool) -> None:
        """Show only ``cluster_id`` (if given) when ``on``, else every cluster."""
        layer = self.layer("labels")
        if layer is None:
            return
        if cluster_id is not None:
            layer.selected_label = int(cluster_id)
        layer.show_selected_label = bool(on)
