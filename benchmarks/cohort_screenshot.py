"""Render a cohort's mean relevance map over the demo template (run under Xvfb).

    .venv/bin/python scripts/make_demo_cohort.py cohort --n 16
    .venv/bin/napari-xai cohort cohort/subjects.csv --model demo --method lrp-epsilon-plus --target atrophy \\
        --atlas harvard-oxford --out-dir cohort/results
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/cohort_screenshot.py cohort/results [OUTDIR]

Writes ``cohort_mean.png``: the mean map (hot: positive, cyan: negative) over
the MNI152 template that the demo subjects are built from, axial slice through
the hippocampi (MNI z = -16 mm).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch._dynamo  # noqa: F401  - before OpenGL (see napari_xai/_qt/__init__.py)

import napari
from qtpy.QtWidgets import QApplication

from napari_xai._layers import relevance_layer_data, upsert
from napari_xai._sample_data import demo_brain
from napari_xai.core.geometry import world_to_vox
from napari_xai.core.provenance import read_sidecar
from napari_xai.core.volumes import load_nifti

results = Path(sys.argv[1])
out = Path(sys.argv[2] if len(sys.argv) > 2 else "docs/images")
out.mkdir(parents=True, exist_ok=True)
mean = load_nifti(results / "mean_relevance.nii.gz")
side = read_sidecar(results / "mean_relevance.nii.gz") or {}


class _Rel:  # what relevance_layer_data reads
    data = mean.data
    affine = mean.affine
    header = None
    label = f"cohort mean ({side.get('subjects', '?')} subjects)"
    provenance = side
    warnings: list = []


viewer = napari.Viewer(show=True, title="napari-xai: cohort mean relevance")
viewer.window.resize(1600, 1000)
for data, kwargs, kind in demo_brain():
    if kind == "image":
        getattr(viewer, f"add_{kind}")(data, **kwargs)
upsert(viewer, relevance_layer_data(_Rel()))
brain = viewer.layers["demo brain"]
k = int(round(world_to_vox(brain.metadata["affine"], [0.0, 0.0, -16.0])[2]))
viewer.dims.order = (2, 1, 0)
viewer.dims.set_current_step(2, k)

viewer.reset_view()
app = QApplication.instance()
for _ in range(5):
    app.processEvents()
viewer.screenshot(str(out / "cohort_mean.png"), canvas_only=True, flash=False)
print("wrote", out / "cohort_mean.png")
viewer.close()
