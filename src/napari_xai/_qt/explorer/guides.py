"""The guides under the sliders: the cluster-size histogram and the per-slice relevance plots (matplotlib)."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from ...core import postprocess as pp
from ...core.geometry import voxel_volume_mm3

BG = "#262930"
FG = "#d6d6d6"


def axis_names(affine: np.ndarray) -> list[str]:
    """Axis labels such as 'axis 0 (L→R)' from the affine's orientation."""
    try:
        import nibabel as nib

        codes = nib.orientations.aff2axcodes(affine)
    except Exception:  # pragma: no cover - degenerate affine
        return ["axis 0", "axis 1", "axis 2"]
    opposite = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}
    return [f"axis {i} ({opposite.get(c, '?')}→{c})" for i, c in enumerate(codes)]


def style(ax) -> None:
    ax.set_facecolor(BG)
    ax.tick_params(colors=FG, labelsize=7)
    for side in ax.spines.values():
        side.set_color("#6a6a6a")
    ax.title.set_color(FG)
    ax.xaxis.label.set_color(FG)
    ax.yaxis.label.set_color(FG)


def plot_canvas(width: float, height: float, rows: int = 1):
    """A dark matplotlib canvas of fixed height with ``rows`` stacked axes."""
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=90, facecolor=BG)
    axes = [fig.add_subplot(rows, 1, r + 1) for r in range(rows)]
    fig.subplots_adjust(left=0.16, right=0.98, bottom=0.22 if rows == 1 else 0.06, top=0.86 if rows == 1 else 0.93,
                        hspace=0.35)
    for ax in axes:
        style(ax)
    canvas = FigureCanvasQTAgg(fig)
    canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    canvas.setFixedHeight(int(height * 90))
    return canvas, axes


class Guides(QWidget):
    """Histogram of cluster sizes (red line: the minimum size) and per-slice sums (white line: current slice)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        self.hist_canvas, (self.hist_ax,) = plot_canvas(4.2, 1.7)
        root.addWidget(self.hist_canvas)
        self.slice_canvas, self.slice_axes = plot_canvas(4.2, 3.3, rows=3)
        root.addWidget(self.slice_canvas)
        self.slice_lines: list = []
        self._stale: set = set()
        self._hist_key = self._slices_key = None
        self._hist_line = self._hist_title = None
        self._result: pp.PostResult | None = None
        self._unit = "voxels"
        self._names = ["axis 0", "axis 1", "axis 2"]
        self._ijk = np.zeros(3)

    def show_result(self, res: pp.PostResult | None, unit: str, names: list[str]) -> None:
        self._result, self._unit, self._names = res, unit, names
        self._draw_histogram()
        self._draw_slices()

    def set_marker(self, ijk: np.ndarray) -> None:
        """Move the current-slice lines to voxel ``ijk``."""
        self._ijk = np.asarray(ijk, dtype=float)[:3]
        self._update_slice_markers()

    # -- drawing -----------------------------------------------------------------------
    def _redraw(self, canvas) -> None:
        """Draw a plot now if it is on screen, else when the widget is shown (drawing costs ~0.1 s)."""
        if canvas.isVisible():
            canvas.draw_idle()
        else:
            self._stale.add(canvas)

    def showEvent(self, event):  # noqa: N802 (Qt API)
        super().showEvent(event)
        for canvas in list(self._stale):
            canvas.draw_idle()
        self._stale.clear()

    def _draw_histogram(self) -> None:
        """Bars when the labelling changed, else only the min-size line and the title (cheaper)."""
        ax, res, unit = self.hist_ax, self._result, self._unit
        key = (id(res.histogram) if res is not None else None, unit)
        if key != self._hist_key:
            ax.clear()
            style(ax)
            self._hist_line = self._hist_title = None
            self._hist_key = key
            if res is None or res.sizes_all.size == 0:
                ax.text(0.5, 0.5, "no clusters at this threshold", color=FG, ha="center", va="center",
                        transform=ax.transAxes)
                self._redraw(self.hist_canvas)
                return
            h = res.histogram
            edges = h.edges_mm3 if unit == "mm3" else h.edges_voxels
            ax.stairs(h.counts, edges, fill=True, color="#8fb3ff")
            ax.set_xscale("log")
            if h.counts.max() > 20:
                ax.set_yscale("log")
                ax.set_ylim(0.8, h.counts.max() * 1.3)
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xlabel("cluster size (" + ("mm³" if unit == "mm3" else "voxels") + ")", fontsize=7)
            ax.set_ylabel("clusters", fontsize=7)
            self._hist_line = ax.axvline(edges[0], color="#ff5a5a", lw=1.5, ls="--")
            self._hist_title = ax.set_title("", fontsize=8)
        if res is None or self._hist_line is None:
            return
        scale = voxel_volume_mm3(res.affine) if unit == "mm3" else 1.0
        ms = max(res.min_voxels * scale, float(res.histogram.edges_voxels[0] * scale))
        self._hist_line.set_xdata([ms, ms])
        self._hist_title.set_text(f"{res.n_clusters} of {res.n_clusters_before_size} clusters ≥ min size (red)")
        self._redraw(self.hist_canvas)

    def _draw_slices(self) -> None:
        """Per-slice sums; they depend only on the filtered map, so redrawn only when it changed."""
        res = self._result
        key = id(res.profiles) if res is not None else None
        if key == self._slices_key and self.slice_lines:
            self._update_slice_markers()
            return
        self._slices_key = key
        self.slice_lines = []
        for ax_i, ax in enumerate(self.slice_axes):
            ax.clear()
            style(ax)
            if res is None:
                continue
            pos, neg = res.profiles[ax_i]
            edges = np.arange(pos.size + 1) - 0.5
            ax.stairs(pos, edges, fill=True, color="#ff6a3d")
            ax.stairs(neg, edges, fill=True, color="#3d9bff")
            ax.axhline(0, color="#888888", lw=0.5)
            ax.set_xlim(-0.5, pos.size - 0.5)
            ax.set_ylabel(self._names[ax_i], fontsize=7)
            self.slice_lines.append(ax.axvline(0, color="#ffffff", lw=1.0))
        if self.slice_axes and res is not None:
            self.slice_axes[0].set_title("relevance per slice: positive (red), negative (blue); white = current slice",
                                         fontsize=7)
        self._update_slice_markers()

    def _update_slice_markers(self) -> None:
        if not self.slice_lines:
            return
        for line, v in zip(self.slice_lines, self._ijk):
            line.set_xdata([v, v])
        self._redraw(self.slice_canvas)
