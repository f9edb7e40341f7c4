"""The napari window as a user meets it: the README flow through Plugins › napari-xai, at two screen sizes.

Run under Xvfb (screenshots have content only with show=True)::

    xvfb-run -a -s "-screen 0 1600x1200x24" .venv/bin/python scripts/gui_screenshots.py docs/images

File › Open Sample, then Explain (run), Relevance explorer, Atlas (AAL, all
outlines) and LRP designer, opened from the Plugins menu path and tabbed on the
right. Writes gui_1280x800_2d.png, gui_1280x800_3d.png, gui_1600x1200_2d.png and
gui_1600x1200_3d.png (whole window; at 1600 px the dock is dragged to 440 px
wide, as a user would), and prints each canvas width.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch._dynamo  # noqa: F401  - before OpenGL (see napari_xai/_qt/__init__.py)

import napari
from qtpy.QtWidgets import QApplication

from napari_xai._demo_app import dock_widgets
from napari_xai.core.geometry import world_to_vox

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
out.mkdir(parents=True, exist_ok=True)
app = QApplication.instance() or QApplication([])


def settle(n: int = 10) -> None:
    for _ in range(n):
        app.processEvents()


viewer = napari.Viewer(show=True, title="napari-xai")
viewer.open_sample("napari-xai", "demo_brain")
explain, explorer, atlas, _lrp = dock_widgets(viewer, ("Explain", "Relevance explorer", "Atlas", "LRP designer"))
explain.method.value = "integrated-gradients"
explain.run_btn.native.click()
while explain.busy:
    app.processEvents()
print(explain.status.value)
explorer.wait()
atlas.volume_combo.setCurrentText("demo brain")
atlas.set_atlas("aal")
atlas.load(sync=True)
atlas.all_check.setChecked(True)
explorer.wait()
brain = viewer.layers["demo brain"]
k = int(round(world_to_vox(brain.metadata["affine"], [0.0, 0.0, -16.0])[2]))  # axial, through the hippocampi
window = explain.native.window()  # the QMainWindow (Qt API)
for w, h in ((1280, 800), (1600, 1200)):
    window.resize(w, h)
    settle()
    if w > 1280:  # on a larger screen the user drags the dock wider (docks open at most 280 px wide)
        from qtpy.QtCore import Qt

        window.resizeDocks([explorer.parentWidget()], [440], Qt.Orientation.Horizontal)
    for nd in (2, 3):
        viewer.dims.ndisplay = nd
        if nd == 2:
            viewer.dims.order = (2, 1, 0)
            viewer.dims.set_current_step(2, k)
        explorer.parentWidget().raise_()  # its dock: the explorer tab in front
        viewer.reset_view()
        settle()
        path = out / f"gui_{w}x{h}_{nd}d.png"
        window.grab().save(str(path))
        print(f"{path}: window {window.width()}x{window.height()}, canvas {window.centralWidget().width()} px wide")
viewer.close()
