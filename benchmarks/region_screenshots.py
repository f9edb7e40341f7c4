"""Screenshot of KernelSHAP over Harvard-Oxford regions on the demo, from the Explain widget (run under Xvfb).

    xvfb-run -a -s "-screen 0 1700x1100x24" .venv/bin/python benchmarks/region_screenshots.py [OUTDIR]

Writes ``region_shap_2d.png``: the window with the Explain widget (method
kernel-shap, regions harvard-oxford, 400 coalitions) and an axial slice
through the hippocampi; prints the largest region values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch._dynamo  # noqa: F401  - before OpenGL (see napari_xai/_qt/__init__.py)

import napari
from qtpy.QtWidgets import QApplication

from napari_xai._qt.explain_widget import ExplainWidget
from napari_xai._sample_data import demo_brain
from napari_xai.core.geometry import world_to_vox

out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/images")
out.mkdir(parents=True, exist_ok=True)
viewer = napari.Viewer(show=True, title="napari-xai")
viewer.window.resize(1700, 1100)
for data, kwargs, kind in demo_brain():
    getattr(viewer, f"add_{kind}")(data, **kwargs)
widget = ExplainWidget(viewer)
viewer.window.add_dock_widget(widget, name="Explain (napari-xai)", area="right")
widget.method.value = "kernel-shap"
for w in widget.params:
    if w.name == "regions":
        w.value = "harvard-oxford"
    if w.name == "samples":
        w.value = 400
widget.target.value = "atrophy"
widget.run_btn.native.click()
app = QApplication.instance()
while widget.busy:
    app.processEvents()
print(widget.status.value)
rel = next(l for l in viewer.layers if "xai_relevance" in l.metadata)
for f in rel.metadata["provenance"]["params"]["features"][:8]:
    print(f"{f['feature']:50s} {f['value']:+.4f}  ({f['voxels']} voxels)")
brain = viewer.layers["demo brain"]
k = int(round(world_to_vox(brain.metadata["affine"], [0.0, 0.0, -16.0])[2]))
viewer.dims.order = (2, 1, 0)
viewer.dims.set_current_step(2, k)
viewer.reset_view()
for _ in range(5):
    app.processEvents()
viewer.screenshot(str(out / "region_shap_2d.png"), canvas_only=False, flash=False)
print("wrote", out / "region_shap_2d.png")
viewer.close()
