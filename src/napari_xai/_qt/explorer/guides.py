"""The guides under the sliders: the cluster-size histogram and the per-slice relevance plots (matplotlib)."""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from ...core import postprocess as pp
from ...core.geometry import voxel_volume_mm3
from .plots import FG, Blitter, plot_canvas, style

GUIDES_MS = 60  # the guides follow the layers at most this often (coalesced: only the latest state is drawn)
SLICE_TITLE = "relevance per slice: positive (red), negative (blue); white = current slice"


def nice_ceiling(x: float) -> float:
    """The smallest of 1, 2, 5 × 10^k that is ≥ ``x`` (axis limits that stay put while the data moves)."""
    if x <= 0:
        return 1.0
    k = math.floor(math.log10(x))
    return next(m * 10.0 ** k for m in (1, 2, 5, 10) if m * 10.0 ** k >= x - 1e-12)


def axis_names(affine: np.ndarray) -> list[str]:
    """Axis labels such as 'axis 0 (L→R)' from the affine's orientation."""
    try:
        import nibabel as nib

        codes = nib.orientations.aff2axcodes(affine)
    except Exception:  # pragma: no cover - degenerate affine
        return ["axis 0", "axis 1", "axis 2"]
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    return [f"axis {i} ({opposite.get(c, '?')}→{c})" for i, c in enumerate(codes)]


class Guides(QWidget):
    """Histogram of cluster sizes (red line: the minimum size) and per-slice sums (white line: current slice).

    Off the sliders' critical path: :meth:`show_result` and :meth:`set_marker` only note the latest state;
    a single-shot timer draws it at most every :data:`GUIDES_MS` (coalesced: intermediate states of a drag
    are never drawn). Their data is cached by the core per stage (histogram counts per labelling, per-slice
    sums per filtered map): bars are drawn again only when those change; a cluster-size step or a new slice
    moves the animated lines and the title only (blitting).
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        self.hist_canvas, (self.hist_ax,) = plot_canvas(4.2, 1.7)
        root.addWidget(self.hist_canvas)
        self.slice_canvas, self.slice_axes = plot_canvas(4.2, 3.3, rows=3)
        root.addWidget(self.slice_canvas)
        self.hist_blit, self.slice_blit = Blitter(self.hist_canvas), Blitter(self.slice_canvas)
        self.slice_lines: list = []
        self._slice_bars: list = []
        self._slice_sizes = None
        self._slices_ijk = None
        self._hist_key = self._slices_key = self._hist_drawn = self._hist_axes = None
        self._bars = self._hist_line = self._hist_title = self._empty_text = None
        self._result: pp.PostResult | None = None
        self._unit = "voxels"
        self._names = ["axis 0", "axis 1", "axis 2"]
        self._ijk = np.zeros(3)
        self._dirty = False
        self._stale: set = set()
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(GUIDES_MS)
        self.timer.timeout.connect(self.draw_now)

    @property
    def pending(self) -> bool:
        """True while a state waits to be drawn."""
        return self._dirty

    def show_result(self, res: pp.PostResult | None, unit: str, names: list[str]) -> None:
        """Draw ``res`` soon (coalesced)."""
        self._result, self._unit, self._names = res, unit, names
        self._request()

    def set_marker(self, ijk: np.ndarray) -> None:
        """Move the current-slice lines to voxel ``ijk`` soon (coalesced)."""
        self._ijk = np.asarray(ijk, dtype=float)[:3]
        self._request()

    def _request(self) -> None:
        self._dirty = True
        if not self.timer.isActive():
            self.timer.start()  # not restarted by later requests: drawn at most every GUIDES_MS during a drag

    def showEvent(self, event):  # noqa: N802 (Qt API)
        super().showEvent(event)
        for blit in list(self._stale):
            blit.draw()
        self._stale.clear()

    def draw_now(self) -> None:
        """Draw the latest state (the timer's job; hidden plots are rendered when shown)."""
        self._dirty = False
        self._draw_histogram()
        self._draw_slices()

    def _render(self, blit: Blitter, full: bool) -> None:
        if not blit.canvas.isVisible():
            self._stale.add(blit)  # rendering costs tens of ms: only what is on screen
        elif full or blit in self._stale:
            self._stale.discard(blit)
            blit.draw()
        else:
            blit.update()

    # -- the size histogram --------------------------------------------------------------
    def _draw_histogram(self) -> None:
        """New bars in place when the labelling changed; a full draw only when the axes change (limits are kept
        at whole decades, so a threshold drag mostly blits the bars, the min-size line and the title)."""
        res, unit = self._result, self._unit
        state = (id(res) if res is not None else None, unit)
        if state == self._hist_drawn:
            return
        self._hist_drawn = state
        key = (id(res.histogram) if res is not None else None, unit)
        axes_key = self._hist_axes
        if key != self._hist_key:
            self._hist_key = key
            self._set_bars(res, unit)
        if res is not None and res.sizes_all.size:
            self._move_size_line(res, unit)
        self._render(self.hist_blit, full=self._hist_axes != axes_key)

    def _make_histogram(self) -> None:
        ax = self.hist_ax
        self._bars = ax.stairs([0.0], [1.0, 2.0], fill=True, color="#8fb3ff")
        self._hist_line = ax.axvline(1.0, color="#ff5a5a", lw=1.5, ls="--")
        self._hist_title = ax.set_title("", fontsize=8)
        self._empty_text = ax.text(0.5, 0.5, "no clusters at this threshold", color=FG, ha="center", va="center",
                                   transform=ax.transAxes)
        ax.set_xscale("log")
        ax.set_ylabel("clusters", fontsize=7)
        self.hist_blit.set_artists([self._bars, self._hist_line, self._hist_title])

    def _set_bars(self, res: pp.PostResult | None, unit: str) -> None:
        """The histogram's bars for ``res`` (in place); limits, scales and labels change only when needed."""
        if self._bars is None:
            self._make_histogram()
        ax = self.hist_ax
        empty = res is None or res.sizes_all.size == 0
        for artist in (self._bars, self._hist_line, self._hist_title):
            artist.set_visible(not empty)
        self._empty_text.set_visible(empty)
        if empty:
            self._hist_axes = ("empty",)
            return
        h = res.histogram
        edges = h.edges_mm3 if unit == "mm3" else h.edges_voxels
        self._bars.set_data(h.counts, edges)
        top = float(h.counts.max())
        log_y = top > 20
        ylim = (0.8, 10.0 ** math.ceil(math.log10(top * 1.3))) if log_y else (0.0, nice_ceiling(top * 1.05))
        xlim = (float(edges[0]), 10.0 ** math.ceil(math.log10(max(float(edges[-1]), 10.0)) - 1e-9))
        axes = (unit, log_y, xlim, ylim)
        if axes == self._hist_axes:
            return
        self._hist_axes = axes
        if log_y != (ax.get_yscale() == "log"):
            ax.set_ylim(0.8, top * 1.3)  # fixed limits first: no autoscaling over the old data on a log scale
            ax.set_yscale("log" if log_y else "linear")
        ax.set_ylim(*ylim)
        ax.set_xlim(*xlim)
        ax.set_xlabel("cluster size (" + ("mm³" if unit == "mm3" else "voxels") + ")", fontsize=7)

    def _move_size_line(self, res: pp.PostResult, unit: str) -> None:
        scale = voxel_volume_mm3(res.affine) if unit == "mm3" else 1.0
        ms = max(res.min_voxels * scale, float(res.histogram.edges_voxels[0] * scale))
        self._hist_line.set_xdata([ms, ms])
        self._hist_title.set_text(f"{res.n_clusters} of {res.n_clusters_before_size} clusters ≥ min size (red)")

    # -- the per-slice plots -------------------------------------------------------------
    def _draw_slices(self) -> None:
        """Per-slice sums depend only on the filtered map: new sums (in place) and a full draw when it changed,
        else only the current-slice lines (blit)."""
        res = self._result
        key = id(res.profiles) if res is not None else None
        full = key != self._slices_key
        if not full and np.array_equal(self._ijk, self._slices_ijk):
            return
        if full:
            self._slices_key = key
            self._set_profiles(res)
        self._slices_ijk = self._ijk.copy()
        for line, v in zip(self.slice_lines, self._ijk):
            line.set_xdata([v, v])
        self._render(self.slice_blit, full)

    def _set_profiles(self, res: pp.PostResult | None) -> None:
        sizes = [p[0].size for p in res.profiles] if res is not None else None
        if sizes != self._slice_sizes:  # a new grid: new artists
            self._slice_sizes = sizes
            self._slice_bars, self.slice_lines = [], []
            for ax_i, ax in enumerate(self.slice_axes):
                ax.clear()
                style(ax)
                if sizes is None:
                    continue
                edges = np.arange(sizes[ax_i] + 1) - 0.5
                pos_bars = ax.stairs(np.zeros(sizes[ax_i]), edges, fill=True, color="#ff6a3d")
                neg_bars = ax.stairs(np.zeros(sizes[ax_i]), edges, fill=True, color="#3d9bff")
                self._slice_bars.append((pos_bars, neg_bars))
                ax.axhline(0, color="#888888", lw=0.5)
                ax.set_xlim(-0.5, sizes[ax_i] - 0.5)
                ax.set_ylabel(self._names[ax_i], fontsize=7)
                self.slice_lines.append(ax.axvline(0, color="#ffffff", lw=1.0))
            if sizes is not None:
                self.slice_axes[0].set_title(SLICE_TITLE, fontsize=7)
            self.slice_blit.set_artists(self.slice_lines)
        if res is None:
            return
        for ax_i, ((pos, neg), (pos_bars, neg_bars)) in enumerate(zip(res.profiles, self._slice_bars)):
            pos_bars.set_data(pos)
            neg_bars.set_data(neg)
            lo, hi = float(min(neg.min(), 0.0)), float(max(pos.max(), 0.0))
            pad = 0.05 * (hi - lo) or 1.0
            self.slice_axes[ax_i].set_ylim(lo - pad, hi + pad)
            self.slice_axes[ax_i].set_ylabel(self._names[ax_i], fontsize=7)
