"""Screenshots of the Atlas widget for docs/atlas.md.

Run under Xvfb (screenshots have content only with show=True)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/atlas_screenshots.py docs/images

Writes atlas_2d_outlines.png, atlas_region_table.png and atlas_3d_outline.png. The
relevance is synthetic (a smooth positive cluster on the left hippocampus and
amygdala, shifted 4 mm anteriorly, and a weak negative one), on the demo brain.
"""

import sys

import napari
import numpy as np
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QApplication
from scipy import ndimage

from napari_xai._qt.atlas_widget import AtlasWidget
from napari_xai.core import atlas as at
from napari_xai.core.demo import demo_volume

OUT = sys.argv[1] if len(sys.argv) > 1 else "docs/images"

vol, _ = demo_volume(0, True)
aff = vol.affine
grid = at.atlas_on_grid(at.load_atlas("aal"), vol.shape, aff)
rng = np.random.default_rng(0)
pos = np.roll(ndimage.gaussian_filter(((grid.labels == 4101) | (grid.labels == 4201)).astype(np.float32), 1.5), 2, axis=1)
neg = ndimage.gaussian_filter((grid.labels == 8111).astype(np.float32), 1.5) * 0.5
rel = pos - neg + ndimage.gaussian_filter(rng.normal(0, 0.02, vol.shape).astype(np.float32), 1.0)
rel[np.abs(rel) < 0.03] = 0
rel[ndimage.binary_dilation(grid.labels > 0, iterations=2) == 0] = 0
clusters = ndimage.label(rel > 0.25)[0].astype(np.uint16)

v = napari.Viewer(show=True)
v.window._qt_window.resize(1500, 900)
v.add_image(vol.data[0], affine=aff, name="demo brain", colormap="gray")
meta = {"xai_relevance": rel}
lim = float(np.abs(rel).max()) * 1.1
common = dict(affine=aff, blending="additive", rendering="mip", contrast_limits=(0, lim), metadata=meta)
v.add_image(np.clip(rel, 0, None), name="relevance (+)", colormap="hot", **common)
v.add_image(np.clip(-rel, 0, None), name="relevance (−)", colormap="cyan", **common)
v.add_labels(clusters, affine=aff, name="clusters", opacity=0.0)
w = AtlasWidget(v)
v.window.add_dock_widget(w, area="right", name="Atlas")
w.set_atlas("aal")
w.load(sync=True)
w.relevance_combo.setCurrentText("relevance (+)")
w.clusters_combo.setCurrentText("clusters")
w.update_table()
app = QApplication.instance()

# 1. axial 2D view at the hippocampus: all outlines + the region under a real mouse move
v.dims.order = (2, 1, 0)
v.camera.orientation2d = ("up", "right")
v.dims.set_point(2, -16.0)
w.all_check.setChecked(True)
next(lay for lay in v.layers if lay.name.endswith("outlines")).opacity = 0.45
v.reset_view()
v.camera.zoom *= 1.15
v.camera.center = (-20.0, -26.0)  # (y, x): the mouse at the canvas centre is over the left hippocampus
app.processEvents()
canvas = v.window._qt_viewer.canvas.native
for dx in (0, 1):  # two moves, so napari's status thread computes the status from the cursor
    QTest.mouseMove(canvas, QPoint(canvas.width() // 2 + dx, canvas.height() // 2))
    for _ in range(20):
        app.processEvents()
        QTest.qWait(50)
print("2D status:", v.status, "| widget:", w.region_label.text())
v.screenshot(f"{OUT}/atlas_2d_outlines.png", canvas_only=False)

# 2. region table sorted by positive relevance; click the top row
w.all_check.setChecked(False)
w.table_widget.sortItems(w.TABLE_COLUMNS.index("Σ+"), Qt.SortOrder.DescendingOrder)
w.table_widget.selectRow(0)
w._on_row_clicked(0, 0)
app.processEvents()
v.screenshot(f"{OUT}/atlas_region_table.png", canvas_only=False)

# 3. 3D: the selected region's boundary shell over the cluster
w.cursor_check.setChecked(False)
v.dims.ndisplay = 3
v.layers["demo brain"].visible = False
v.reset_view()
v.camera.center = tuple(grid.region_center_world(4101))
v.camera.zoom *= 2.0
v.layers["relevance (+)"].contrast_limits = (0, lim * 1.6)
v.camera.angles = (30, -60, 100)
app.processEvents()
v.screenshot(f"{OUT}/atlas_3d_outline.png", canvas_only=False)
print("top rows:", [r["region"] for r in w.table.rows[:3]])
v.close()
