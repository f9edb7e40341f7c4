"""Screenshots of the Explain widget and of 3D relevance for docs/user-guide.md.

Run under Xvfb (screenshots have content only with show=True)::

    xvfb-run -a -s "-screen 0 1700x1100x24" .venv/bin/python scripts/make_screenshots.py docs/images [METHOD]

Writes explain_widget_2d.png (window with the widget, axial slice through the
hippocampi) and explain_3d.png (canvas, 3D view).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch._dynamo  # noqa: F401  - before OpenGL (see napari_xai/_qt/__init__.py)

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_xai._qt.explain_widget import ExplainWidget
from napari_xai._sample_data import demo_brain
from napari_xai.core.geometry import world_to_vox

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
method = sys.argv[2] if len(sys.argv) > 2 else "integrated-gradients"
out.mkdir(parents=True, exist_ok=True)

viewer = napari.Viewer(show=True, title="napari-xai")
viewer.window.resize(1700, 1100)
for data, kwargs, kind in demo_brain():
    getattr(viewer, f"add_{kind}")(data, **kwargs)
widget = ExplainWidget(viewer)
viewer.window.add_dock_widget(widget, name="Explain (napari-xai)", area="right")
widget.method.value = method
widget.run_btn.native.click()
app = QApplication.instance()
while widget.busy:
    app.processEvents()
print(widget.status.value)
brain = viewer.layers["demo brain"]
# axial slice through the hippocampi: MNI z = -16 mm
k = int(round(world_to_vox(brain.metadata["affine"], [0.0, 0.0, -16.0])[2]))
viewer.dims.ndisplay = 2
viewer.dims.order = (2, 1, 0)  # slice along z: axial view (y vertical, x horizontal)
viewer.dims.set_current_step(2, k)
viewer.layers["demo atrophy (ground truth)"].visible = True
viewer.layers["demo atrophy (ground truth)"].contour = 1
viewer.reset_view()
for _ in range(5):
    app.processEvents()
viewer.screenshot(str(out / "explain_widget_2d.png"), canvas_only=False, flash=False)

# colour scales and the brain's 3D rendering are napari-xai's defaults (_layers.relevance_limits, anatomy_style)
viewer.layers["demo atrophy (ground truth)"].visible = False
viewer.dims.order = (0, 1, 2)
viewer.dims.ndisplay = 3
viewer.reset_view()
viewer.camera.angles = (-15.0, 35.0, 145.0)
for _ in range(5):
    app.processEvents()
viewer.screenshot(str(out / "explain_3d.png"), canvas_only=True, flash=False)
print("wrote", out / "explain_widget_2d.png", out / "explain_3d.png")
viewer.close()
