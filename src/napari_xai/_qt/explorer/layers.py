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


def same_key(a: tuple | None, b: tuple | None) -> bool:
    """Two (labelling, kept clusters, crop box, id of the filtered map) keys: the same labelling object and
    equal rest."""
    return a is not None and b is not None and a[0] is b[0] and a[1:] == b[1:]


def box_volume(box) -> int:
    return int(np.prod([b.stop - b.start for b in box]))


class LayerUpdater:
    """Puts results into the two layers of one viewer (GUI thread only).

    The cropped arrays it shows are kept: a cluster-size step with the same labelling and box rewrites only the
    voxels of the clusters that appear or disappear (:func:`napari_xai.core.postprocess.size_step`), in place,
    instead of building the crop again.
    """

    def __init__(self, viewer):
        self.viewer = viewer
        self.layers: dict[str, Any] = {}  # "image" / "labels" -> layer
        self._crop_boxes: dict[str, tuple] = {}  # kind -> (crop box, full shape) of the cropped layers
        self._shown: dict[str, tuple] = {}  # kind -> (array shown, key): what an in-place step may update
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
        shape = res.labels.shape
        box = self.stable_box("labels", crop_box(shape, res.box), shape)
        before = self._shown.get("labels")
        step = self._step("labels", res, box)
        if step is None:
            data = np.ascontiguousarray(res.labels[box])
        else:
            data = before[0]
            data.reshape(-1)[step[1]] = step[2]
        image = self._shown.get("image")
        same = before is not None and image is not None and same_key(image[1], before[1])
        self.show_filtered(res, masked, step if same else None)  # first: the clusters layer goes on top of it
        self._shown["labels"] = (data, (res.labelling, res.n_clusters, box, id(res.filtered)))
        self._put(res, "labels", CLUSTERS_NAME, data, box)

    def _step(self, kind: str, res: pp.PostResult, box: tuple):
        """(whole-volume indices, indices in the crop, new labels) of a size step from what ``kind`` shows, or
        None when the layer must be built again (new labelling, box or filtered map, or a replaced layer)."""
        shown = self._shown.get(kind)
        layer = self.layer(kind)
        if shown is None or shown[1] is None or layer is None or layer.data is not shown[0] or res.labelling is None:
            return None
        if not same_key(shown[1], (res.labelling, shown[1][1], box, id(res.filtered))):
            return None
        idx, values = pp.size_step(res.labelling, shown[1][1], res.n_clusters)
        return idx, pp.index_in_box(idx, res.labels.shape, box), values

    def show_filtered(self, res: pp.PostResult, masked: bool, step=None) -> None:
        """The filtered relevance: the whole map, or (``masked``) its crop inside the kept clusters only.

        ``step``: the labels' size step, applied in place when this layer showed the same state as the labels.
        """
        if not masked:
            shown = self._shown.get("image")
            if shown is None or shown[0] is not res.filtered or self.layer("image") is None:
                self._shown["image"] = (res.filtered, None)
                self._put(res, "image", FILTERED_NAME, res.filtered, None, limits=(-res.max_abs, res.max_abs))
            return
        box = self.stable_box("labels", crop_box(res.labels.shape, res.box), res.labels.shape)
        shown = self._shown.get("image")
        layer = self.layer("image")
        if step is None or shown is None or layer is None or layer.data is not shown[0]:
            data = np.where(res.labels[box] > 0, res.filtered[box], np.float32(0))  # the crop only, never full size
        else:
            data = shown[0]
            data.reshape(-1)[step[1]] = np.where(step[2] > 0, res.filtered.reshape(-1)[step[0]], np.float32(0))
        self._shown["image"] = (data, (res.labelling, res.n_clusters, box, id(res.filtered)))
        m = float(np.abs(res.table.peak).max()) if len(res.table) else 0.0  # the largest |r| shown
        self._put(res, "image", FILTERED_NAME, data, box, limits=(-m, m))

    def _find(self, kind: str, name: str):
        layer = self.layer(kind)
        if layer is None and name in self.viewer.layers:
            cand = self.viewer.layers[name]
            if type(cand).__name__.lower() == kind:
                layer = cand
        return layer

    def _put(self, res, kind: str, name: str, data: np.ndarray, box: tuple | None, limits=None) -> None:
        """Put ``data`` (the crop ``box`` of the full grid, or the full grid) into the layer of ``kind``."""
        affine = self.affine if box is None else cropped_affine(self.affine, box)
        if limits is not None and not limits[1] > 0:
            limits = (-1.0, 1.0)
        v = self.viewer
        layer = self._find(kind, name)
        if layer is None and kind == "image":
            layer = v.add_image(data, name=name, affine=affine, colormap=relevance_colormap(),
                                contrast_limits=limits, **FILTERED_STYLE, metadata={"affine": self.affine})
        elif layer is None:
            layer = v.add_labels(data, name=name, affine=affine, **CLUSTERS_STYLE, metadata={"affine": affine})
        else:
            layer.data = data  # the same array after an in-place step: napari refreshes what it shows
            if limits is not None and tuple(layer.contrast_limits) != tuple(limits):
                layer.contrast_limits = limits
        if not np.allclose(np.asarray(layer.affine.affine_matrix)[-4:, -4:], affine):
            layer.affine = affine
        meta = {k: val for k, val in (layer.metadata or {}).items() if k != CROP_KEY}
        if box is not None:
            meta[CROP_KEY] = {"offset": [int(s.start) for s in box], "shape": [int(n) for n in res.labels.shape],
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
