"""3D level of detail for relevance layers: in 3D each (+)/(−) layer holds only the box where it can show.

A 3D view ray-casts every voxel of a volume's box, on every repaint. napari-xai's relevance layers (the
(+) and (−) halves of a signed map, :func:`napari_xai._layers.relevance_layer_data`) are MIPs with additive
blending and a colormap that is black at its low end, so a voxel at or below the layer's lower contrast
limit adds nothing to the picture: a ray's maximum there maps to black, and black adds zero (the positive
half's "hot" starts at black for this; napari's own starts at a dark red, see :data:`BLACK_TOLERANCE`). Integrated
gradients and most other maps are non-zero almost everywhere (44 % of a 1 mm brain grid for the demo), but only
a few per mille of the voxels lie above the lower limit (the 90th percentile of |r|, see
:data:`napari_xai._layers.LOW_PERCENTILE`), all in a small box. In 3D each such layer is shown cropped to the
box of its voxels above the lower limit, one voxel wider (linear interpolation), and placed by its affine, so
the picture is the same up to the ray's sampling phase, and a software renderer paints it in a tenth of the
time (``benchmarks/bench_gui.py``: 0.29 s → 0.03 s per layer at 1 mm). In 2D the full arrays come back.

The crop follows the layer: a new lower contrast limit crops again, and a setting under which voxels below
the limit could show (another rendering, blending or colormap, auto-contrast) brings the full array back.
While cropped, the layer's metadata holds ``xai_crop`` (offset, full shape and affine), as the explorer's own
layers do, so the writer saves the full grid; the signed map stays whole in ``xai_relevance``.
The full arrays are kept here, not in the layer; every widget reads the signed map from the metadata.

One instance per viewer (:func:`install`), for every layer of that viewer; the Explain, explorer, Concepts and LRP designer docks
install it.
"""

from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import QTimer

from ..core.geometry import above_box, cropped_affine
from ._events import connect_all, disconnect_all

CROP_KEY = "xai_crop"  # the same record as the explorer's cropped layers: {"offset", "shape", "affine"}
#: Volumes of at most this many voxels are shown whole: their 3D paint is cheap already.
MIN_VOXELS = 64 ** 3
_INSTANCES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def install(viewer) -> "RelevanceCrop3D":
    """The viewer's :class:`RelevanceCrop3D` (made and connected on the first call)."""
    crop = _INSTANCES.get(viewer)
    if crop is None:
        crop = _INSTANCES[viewer] = RelevanceCrop3D(viewer)
    return crop


#: The brightest low end of a colormap that still counts as black (per RGB channel, 0-1): half a level of an
#: 8-bit screen. napari's own "hot" starts at (0.0416, 0, 0) and would tint the crop's box only; napari-xai's
#: positive layers use a "hot" that starts at black (``napari_xai._layers.POS_COLORMAP``).
BLACK_TOLERANCE = 0.5 / 255


def black_at_low_end(colormap) -> bool:
    """True if ``colormap`` maps its low end (values at or below the lower contrast limit) to black (within
    :data:`BLACK_TOLERANCE`) or to full transparency, i.e. to nothing under additive blending."""
    rgba = np.asarray(colormap.map(np.array([0.0])), dtype=float).reshape(-1)
    return bool(rgba[3] <= 1e-6 or np.all(rgba[:3] <= BLACK_TOLERANCE))


class RelevanceCrop3D:
    """Crops napari-xai's relevance layers in 3D and restores them in 2D (see the module docstring)."""

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)  # the per-viewer table is keyed weakly by the viewer: no cycle
        self._full: dict[int, tuple] = {}  # id(layer) -> (full data, full affine 4x4, crop record)
        self._layers: dict[int, object] = {}  # id(layer) -> layer, for the layers watched
        self._connections: dict[int, list] = {}  # id(layer) -> its (emitter, callback) pairs
        self._busy = False  # our own layer.data / affine sets
        self._enabled = True
        self._pending: set[int] = set()
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._refresh_pending)
        # before napari reslices for the new view, so the full volume is not sliced and uploaded first
        viewer.dims.events.ndisplay.connect(self._on_ndisplay, position="first")
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)
        for layer in list(viewer.layers):
            self._watch(layer)
        self.refresh_all()

    # -- public ---------------------------------------------------------------------------------------------
    @property
    def viewer(self):
        return self._viewer()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, on: bool) -> None:
        """Switch the crop off (every layer whole, e.g. to compare) or on again."""
        self._enabled = bool(on)
        self.refresh_all()

    def is_cropped(self, layer) -> bool:
        return id(layer) in self._full

    def full_data(self, layer):
        """The layer's whole array (what it holds in 2D)."""
        full = self._full.get(id(layer))
        return layer.data if full is None else full[0]

    def refresh_all(self) -> None:
        for layer in list(self._layers.values()):
            self.refresh(layer)

    def refresh(self, layer) -> None:
        """Crop ``layer`` to its box above the lower contrast limit, or give it back its full array."""
        if self.wanted(layer):
            self._crop(layer)
        else:
            self._restore(layer)

    def wanted(self, layer) -> bool:
        """Whether ``layer`` is shown cropped now: 3D view, a napari-xai relevance half large enough, and
        settings under which voxels at or below the lower limit add nothing to the picture."""
        from napari.layers import Image

        viewer = self.viewer
        if not (self._enabled and viewer is not None and viewer.dims.ndisplay == 3 and isinstance(layer, Image)
                and layer in viewer.layers):
            return False
        md = layer.metadata or {}
        data = self.full_data(layer)
        if ("xai_relevance" not in md or getattr(layer, "multiscale", False) or getattr(layer, "rgb", False)
                or np.ndim(data) != 3 or int(np.prod(np.shape(data))) <= MIN_VOXELS):
            return False
        if getattr(layer, "auto_contrast", False):  # new data would move the limits: keep it whole
            return False
        if id(layer) not in self._full and not (  # the crop is placed through the affine alone
                np.allclose(layer.scale, 1) and np.allclose(layer.translate, 0)
                and np.allclose(layer.rotate, np.eye(len(layer.rotate))) and np.allclose(layer.shear, 0)):
            return False
        return (str(layer.rendering) == "mip" and str(layer.blending) == "additive"
                and black_at_low_end(layer.colormap))

    # -- crop / restore -------------------------------------------------------------------------------------
    def _crop(self, layer) -> None:
        data, affine = self._full.get(id(layer), (layer.data, np.asarray(layer.affine.affine_matrix, float)))[:2]
        arr = np.asarray(data)
        lo = float(layer.contrast_limits[0])
        box = above_box(arr, lo, pad=1)
        crop = {"offset": [int(s.start) for s in box], "shape": [int(n) for n in arr.shape],
                "affine": np.asarray(affine, dtype=float).tolist()}
        md = layer.metadata
        if id(layer) in self._full and md.get(CROP_KEY) == crop:
            return  # the same box
        self._full[id(layer)] = (data, affine, crop)
        self._busy = True
        try:
            layer.data = arr[box]
            layer.affine = cropped_affine(affine, box)
            md[CROP_KEY] = crop
        finally:
            self._busy = False

    def _restore(self, layer) -> None:
        full = self._full.pop(id(layer), None)
        if full is None:
            return
        self._busy = True
        try:
            layer.data = full[0]
            layer.affine = full[1]
            (layer.metadata or {}).pop(CROP_KEY, None)
        finally:
            self._busy = False

    # -- events ---------------------------------------------------------------------------------------------
    def _watch(self, layer) -> None:
        from napari.layers import Image

        if not isinstance(layer, Image) or id(layer) in self._layers:
            return
        self._layers[id(layer)] = layer
        ev = layer.events
        settings = [getattr(ev, name) for name in ("contrast_limits", "rendering", "blending", "colormap",
                                                   "auto_contrast") if hasattr(ev, name)]
        self._connections[id(layer)] = connect_all(
            [(e, self._on_setting) for e in settings] + [(ev.data, self._on_data), (ev.metadata, self._on_metadata)])

    def _layer_of(self, event):
        src = getattr(event, "source", None)
        return src if src is not None and id(src) in self._layers else None

    def _on_ndisplay(self, _event=None) -> None:
        self.refresh_all()

    def _on_inserted(self, event) -> None:
        self._watch(event.value)
        self._schedule(event.value)

    def _on_removed(self, event) -> None:
        layer = event.value
        self._restore(layer)  # a removed layer keeps its whole array
        self._layers.pop(id(layer), None)
        self._pending.discard(id(layer))
        disconnect_all(self._connections.pop(id(layer), []))

    def _on_setting(self, event) -> None:
        layer = self._layer_of(event)
        if layer is not None and not self._busy:
            self.refresh(layer)

    def _on_data(self, event) -> None:
        """New data from elsewhere (e.g. a new explanation into the same layer): that is the full array now, on
        the full grid; shown whole at once and cropped again after the caller's other changes (metadata,
        contrast limits) are in."""
        layer = self._layer_of(event)
        if layer is None or self._busy:
            return
        full = self._full.pop(id(layer), None)
        if full is not None:
            self._busy = True
            try:
                layer.affine = full[1]
                (layer.metadata or {}).pop(CROP_KEY, None)
            finally:
                self._busy = False
        self._schedule(layer)

    def _on_metadata(self, event) -> None:
        """New metadata while cropped (``layer.metadata = {...}`` clears our record): put the record back."""
        layer = self._layer_of(event)
        if layer is None or self._busy or id(layer) not in self._full:
            return
        layer.metadata[CROP_KEY] = self._full[id(layer)][2]
        self._schedule(layer)

    def _schedule(self, layer) -> None:
        self._pending.add(id(layer))
        self._timer.start()

    def _refresh_pending(self) -> None:
        ids, self._pending = self._pending, set()
        for i in ids:
            layer = self._layers.get(i)
            if layer is not None:
                self.refresh(layer)
