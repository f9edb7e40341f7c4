"""Screenshots of the relevance explorer for docs/explorer.md (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/explorer_screenshots.py [OUTDIR]

Uses the demo brain. The relevance is the demo model's integrated gradients when
the demo model is installed; otherwise a synthetic map (smoothed noise in the
brain plus positive blobs in the hippocampi/amygdalae) -- the script prints which.
Writes ``explorer_widget.png`` and ``explorer_window_2d.png``; the 3D views
(``explorer_3d*.png``) come from ``composition_screenshots.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def relevance_for(volume, region):
    """(signed relevance, provenance, note)."""
    try:
        from napari_xai.core.explain import explain
        from napari_xai.core.models import load_model

        model = load_model("demo", device="cpu")
        rel = explain(volume, model, "integrated-gradients")
        return rel.data[0], rel.provenance, f"demo model, integrated gradients, target {rel.target_name}"
    except Exception as exc:
        rng = np.random.default_rng(4)
        brain = ndimage.binary_erosion(volume.data[0] > np.percentile(volume.data[0], 60), iterations=1)
        noise = ndimage.gaussian_filter(rng.standard_normal(brain.shape), 1.0) * brain
        blobs = ndimage.gaussian_filter(region.astype(np.float32), 1.0)
        data = (1.0 * noise / np.abs(noise).max() + 0.8 * blobs / blobs.max()).astype(np.float32)
        note = f"synthetic relevance (demo model unavailable: {type(exc).__name__})"
        return data, {"kind": "relevance", "method": "synthetic (screenshot only)"}, note


def main(outdir: str = "docs/images") -> int:
    import napari
    from qtpy.QtCore import QCoreApplication

    from napari_xai._qt.explorer import CLUSTERS_NAME, ExplorerWidget
    from napari_xai.core import postprocess as pp
    from napari_xai.core.demo import demo_volume

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    vol, region = demo_volume(seed=3, condition=True)
    rel, prov, note = relevance_for(vol, region)
    print("relevance:", note)

    viewer = napari.Viewer(show=True, title="napari-xai relevance explorer")
    viewer.window.resize(1700, 1150)
    viewer.add_image(vol.data[0], name="demo brain", affine=vol.affine, colormap="gray",
                            metadata={"affine": vol.affine})
    pos = np.clip(rel, 0, None)
    src = viewer.add_image(pos, name="relevance (+)", affine=vol.affine, colormap="hot", blending="additive",
                           metadata={"affine": vol.affine, "xai_relevance": rel, "provenance": prov}, visible=False)
    widget = ExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Relevance explorer", area="right")
    widget.set_params(pp.PostParams(sigma_mm=4.0, scale="max", threshold=0.3, min_size=20, connectivity=18))
    widget.wait(120000)

    def settle(n=40):
        for _ in range(n):
            QCoreApplication.processEvents()

    settle()
    print(widget.result.summary())
    print("messages:", widget.result.messages)
    viewer.dims.order = (2, 1, 0)  # axial slices: x across, y up
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    try:
        cam.orientation2d = ("up", "right")
    except Exception as exc:  # older napari
        print("camera orientation not set:", exc)
    widget.focus_cluster(1)
    widget.highlight_check.setChecked(False)
    viewer.layers.selection.active = viewer.layers[CLUSTERS_NAME]
    cid = 1
    viewer.cursor.position = tuple(widget.result.table.peak_mm[cid - 1])
    widget.wait()  # the guides follow through their coalescing timer
    settle()
    viewer.screenshot(str(out / "explorer_window_2d.png"), canvas_only=False)
    # the widget on its own, its dock widened so that the plots and the table show whole
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    dock = widget.parent()
    while dock is not None and not isinstance(dock, QDockWidget):
        dock = dock.parent()
    if dock is not None:
        viewer.window._qt_window.resizeDocks([dock], [560], Qt.Orientation.Horizontal)
    settle()
    widget.wait()
    settle()
    widget.grab().save(str(out / "explorer_widget.png"))

    print("wrote", sorted(p.name for p in out.glob("explorer_*.png")))
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
