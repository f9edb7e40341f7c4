"""3D composition screenshots for docs/explorer.md (run under Xvfb; needs the demo model).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/composition_screenshots.py [OUTDIR]

The user's path: the demo brain as File › Open Sample adds it, the demo model's
integrated gradients as the Explain widget adds them (``relevance_layer_data``),
the Relevance explorer and the Atlas widget opened from the Plugins menu
(``add_plugin_dock_widget``), AAL loaded with all outlines. In 3D, one canvas
screenshot per combination of layers the docs show; writes
``explorer_3d_composition.png`` (a 2×2 montage with captions) and the single
views ``explorer_3d.png`` (brain + clusters + outlines) and
``explorer_3d_relevance.png`` (brain + filtered relevance + outlines).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch._dynamo  # noqa: E402,F401  - before OpenGL (see napari_xai/_qt/__init__.py)

ANGLES = (-15.0, 35.0, 145.0)  # the demo's view (see _demo_app.populate_viewer)

COMBINATIONS = [
    ("brain + relevance (+ and - layers)", ["brain", "pos", "neg"]),
    ("brain + filtered relevance + AAL outlines", ["brain", "filtered", "outlines"]),
    ("brain + clusters + AAL outlines", ["brain", "clusters", "outlines"]),
    ("all: brain, +/- relevance, filtered, clusters, outlines", ["brain", "pos", "neg", "filtered", "clusters", "outlines"]),
]


def main(outdir: str = "docs/images") -> int:
    import napari
    from PIL import Image, ImageDraw
    from qtpy.QtWidgets import QApplication

    from napari_xai._layers import relevance_layer_data, upsert
    from napari_xai._qt.explorer import CLUSTERS_NAME, FILTERED_NAME
    from napari_xai._sample_data import demo_layer_data
    from napari_xai.core import postprocess as pp
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.explain import explain
    from napari_xai.core.models import load_model

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([])

    def settle(n=20):
        for _ in range(n):
            app.processEvents()

    viewer = napari.Viewer(show=True, title="napari-xai 3D composition")
    viewer.window.resize(1700, 1100)
    for data, kw, kind in demo_layer_data():  # what File › Open Sample adds
        getattr(viewer, f"add_{kind}")(data, **kw)
    vol, _ = demo_volume(seed=0, condition=True)
    rel = explain(vol, load_model("demo", device="cpu"), "integrated-gradients")
    pos, neg = upsert(viewer, relevance_layer_data(rel))
    _, explorer = viewer.window.add_plugin_dock_widget("napari-xai", "Relevance explorer")
    explorer.set_params(pp.PostParams(sigma_mm=4.0, scale="max", threshold=0.3, min_size=20, connectivity=18))
    explorer.wait(120000)
    _, atlas = viewer.window.add_plugin_dock_widget("napari-xai", "Atlas", tabify=True)
    atlas.volume_combo.setCurrentText("demo brain")
    atlas.set_atlas("aal")
    atlas.load(sync=True)
    atlas.cursor_check.setChecked(False)
    atlas.all_check.setChecked(True)
    explorer.wait(60000)
    print(explorer.result.summary())
    viewer.dims.ndisplay = 3
    settle()
    outlines = [ly for ly in viewer.layers if ly.name.endswith("outlines")]
    layers = {"brain": viewer.layers["demo brain"], "pos": pos, "neg": neg, "filtered": viewer.layers[FILTERED_NAME],
              "clusters": viewer.layers[CLUSTERS_NAME], "outlines": outlines[0]}
    for key, ly in layers.items():
        print(f"{key:9s} {ly.name!r}: blending {ly.blending}, rendering {getattr(ly, 'rendering', '')}, "
              f"opacity {ly.opacity}, {ly.data.dtype} {ly.data.shape}")
    print("layer order (bottom first):", [ly.name for ly in viewer.layers])
    viewer.reset_view()
    viewer.camera.angles = ANGLES
    shots = []
    for caption, keys in COMBINATIONS:
        for ly in viewer.layers:
            ly.visible = False
        for k in keys:
            layers[k].visible = True
        settle()
        shots.append((caption, viewer.screenshot(canvas_only=True, flash=False)))
    h, w = shots[0][1].shape[:2]
    scale = 560 / w
    tw, th = int(w * scale), int(h * scale)
    montage = Image.new("RGB", (2 * tw, 2 * (th + 28)), (38, 41, 48))
    draw = ImageDraw.Draw(montage)
    for i, (caption, img) in enumerate(shots):
        x, y = (i % 2) * tw, (i // 2) * (th + 28)
        montage.paste(Image.fromarray(np.asarray(img)[..., :3]).resize((tw, th)), (x, y + 28))
        draw.text((x + 8, y + 8), caption, fill=(230, 230, 230))
    montage.save(out / "explorer_3d_composition.png")
    Image.fromarray(np.asarray(shots[2][1])[..., :3]).save(out / "explorer_3d.png")
    Image.fromarray(np.asarray(shots[1][1])[..., :3]).save(out / "explorer_3d_relevance.png")
    print("wrote", out / "explorer_3d_composition.png", out / "explorer_3d.png", out / "explorer_3d_relevance.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
