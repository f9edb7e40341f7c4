"""Matplotlib plumbing for the explorer's guides: dark canvases and blitting of the moving artists."""

from __future__ import annotations

from qtpy.QtWidgets import QSizePolicy

BG = "#262930"
FG = "#d6d6d6"


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


class Blitter:
    """Redraws a canvas's animated artists over a cached background (no full matplotlib draw).

    A full draw (:meth:`draw`, or Qt resizing the canvas) caches the background without the animated
    artists; :meth:`update` then restores it, draws only those artists and blits (a few ms).
    """

    def __init__(self, canvas):
        self.canvas = canvas
        self.artists: list = []
        self.background = None
        canvas.mpl_connect("draw_event", self._on_draw)

    def set_artists(self, artists: list) -> None:
        for a in artists:
            a.set_animated(True)
        self.artists = artists

    def _on_draw(self, _event) -> None:
        self.background = self.canvas.copy_from_bbox(self.canvas.figure.bbox)
        self._draw_artists()

    def _draw_artists(self) -> None:
        for a in self.artists:
            self.canvas.figure.draw_artist(a)

    def draw(self) -> None:
        self.background = None
        self.canvas.draw()

    def update(self) -> None:
        if self.background is None:
            self.draw()
            return
        self.canvas.restore_region(self.background)
        self._draw_artists()
        self.canvas.update()  # Qt paints the new buffer with the next event-loop turn (blit() would repaint the
        # whole window synchronously, napari's canvas included)
