"""Atlas regions for the explorer: the table's region columns and the region under the cursor.

The atlas is the one loaded in the Atlas widget (:mod:`napari_xai._qt.atlas_widget`), resampled onto the
explored map's grid. Region columns are cached per labelling and computed once the sliders rest
(:data:`REGIONS_DELAY_MS`; ≈ 40 ms at 2 mm, 0.3 s at 1 mm).
"""

from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ...core import atlas as at
from ...core import postprocess as pp
from ...core.errors import UserError
from ..atlas_widget import atlas_grid_for_viewer, atlas_widget_for_viewer, cursor_voxel

REGIONS_DELAY_MS = 120


class RegionColumns(QObject):
    """Keeps the region columns of the current result; emits :attr:`changed` with new columns (or None)."""

    changed = Signal(object)  # the columns (dict) now known, or None
    atlas_changed = Signal()  # the viewer's atlas changed (messages and the cursor readout follow)

    def __init__(self, viewer, parent=None):
        super().__init__(parent)
        self.viewer = viewer
        self.base = None  # the viewer's atlas (on its own grid)
        self.grid: at.AtlasOnGrid | None = None  # ... resampled onto the result's grid
        self.message = ""
        self._widget_ref = None
        self._res: pp.PostResult | None = None
        self._cache: dict[int, tuple[str, str]] = {}  # cluster id -> (peak region, regions)
        self._cache_key: tuple | None = None  # (labelling's histogram, grid) the cache is for
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(REGIONS_DELAY_MS)
        self.timer.timeout.connect(self.compute)

    # -- following the Atlas widget ---------------------------------------------------
    def follow_atlas_widget(self) -> None:
        """Follow the atlas widget's ``atlas_changed`` (it may be docked after the explorer: called lazily)."""
        w = atlas_widget_for_viewer(self.viewer)
        if w is None or (self._widget_ref is not None and self._widget_ref() is w):
            return
        w.atlas_changed.connect(self._on_atlas_changed)
        self._widget_ref = weakref.ref(w)  # weak: a closed atlas widget must be able to go away

    def disconnect_all(self) -> None:
        w = self._widget_ref() if self._widget_ref is not None else None
        if w is not None:
            try:
                w.atlas_changed.disconnect(self._on_atlas_changed)
            except (TypeError, RuntimeError):  # pragma: no cover - already gone
                pass
        self.timer.stop()

    def _on_atlas_changed(self, *_args) -> None:
        self.sync(self._res, force=True)

    def refresh_base(self) -> None:
        self.follow_atlas_widget()
        self.base = atlas_grid_for_viewer(self.viewer)

    def sync(self, res: pp.PostResult | None, force: bool = False) -> bool:
        """Refresh the columns if the viewer's atlas changed; True if it did (or ``force``)."""
        self.follow_atlas_widget()
        base = atlas_grid_for_viewer(self.viewer)
        if base is self.base and not force:
            return False
        self.base = base
        if res is not None:
            self.changed.emit(self.columns_for(res))
            self.atlas_changed.emit()
        return True

    # -- the columns -----------------------------------------------------------------
    def _check_cache(self, res: pp.PostResult, grid) -> None:
        if self._cache_key is None or self._cache_key[0] is not res.histogram or self._cache_key[1] is not grid:
            self._cache = {}
            self._cache_key = (res.histogram, grid)

    def columns_for(self, res: pp.PostResult) -> dict[str, list[str]] | None:
        """The columns of ``res`` known now (cached per labelling); schedules the rest.

        Sets :attr:`grid` (None without an atlas). Cells of clusters not computed yet are empty until the
        debounced :meth:`compute` fills them in.
        """
        self._res = res
        self.message = ""
        grid = None
        if self.base is not None:
            try:
                grid = atlas_grid_for_viewer(self.viewer, res.labels.shape, res.affine)
            except UserError as exc:
                self.message = str(exc)
        self.grid = grid
        if grid is None:
            self.timer.stop()
            return None
        self._check_cache(res, grid)
        known = [self._cache.get(int(c)) for c in res.table.id]
        if any(k is None for k in known):
            self.timer.start()  # (re)start: computed once the sliders rest
        return {"peak_region": [k[0] if k else "" for k in known], "regions": [k[1] if k else "" for k in known]}

    def compute(self) -> dict[str, list[str]] | None:
        """Compute every column of the current result now (the timer's job); the columns, None on an error."""
        res, grid = self._res, self.grid
        if res is None or grid is None:
            return None
        try:
            cols = at.cluster_region_columns(res.table, res.labels, grid)
        except UserError as exc:
            self.message = str(exc)
            self.atlas_changed.emit()
            return None
        self._check_cache(res, grid)
        for cid, peak, regions in zip(res.table.id, cols["peak_region"], cols["regions"]):
            self._cache[int(cid)] = (peak, regions)
        self.changed.emit(cols)
        return cols

    def columns_now(self, res: pp.PostResult | None) -> dict[str, list[str]] | None:
        """``peak_region`` and ``regions`` of every row (computed now if pending); None without an atlas."""
        self.sync(res)
        if res is None or self.grid is None:
            return None
        cols = self.columns_for(res)
        if self.timer.isActive():
            self.timer.stop()
            return self.compute()
        return cols

    def forget(self) -> None:
        self._res = None
        self.timer.stop()

    # -- the region under the cursor ----------------------------------------------------
    def under_cursor(self) -> str | None:
        """The atlas region under the mouse ("" outside every region), None without an atlas.

        2D: the region at the cursor; 3D: the first labelled region along the view ray (as the Atlas widget).
        """
        grid = self.grid
        if grid is None:
            return None
        if self.viewer.dims.ndisplay == 3:
            ijk = cursor_voxel(self.viewer, grid)
            if ijk is None:
                return ""
            lk = grid.lookup_voxel(ijk)
        else:
            lk = grid.lookup(np.asarray(self.viewer.cursor.position, dtype=float)[-3:])
        if lk.name and lk.probability is not None:
            return f"{lk.name} {lk.probability * 100:.0f}%"
        return lk.name
