"""Screenshot of the explorer's atlas columns for docs/explorer.md (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/explorer_regions_screenshot.py [OUTDIR]

The demo brain and relevance of ``explorer_screenshots.py`` (integrated gradients
of the demo model, or its synthetic stand-in), the AAL atlas loaded through the
atlas widget, and the cursor on the peak of the largest cluster whose peak lies
in a hippocampus. Writes ``explorer_regions.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))


def main(outdir: str = "docs/images") -> int:
    import napari
    from qtpy.QtCore import QCoreApplication

    from explorer_screenshots import relevance_for
    from napari_xai._qt.atlas_widget import AtlasWidget
    from napari_xai._qt.explorer import CLUSTERS_NAME, ExplorerWidget
    from napari_xai.core import postprocess as pp
    from napari_xai.core.demo import demo_volume

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    vol, region = demo_volume(seed=3, condition=True)
    rel, prov, note = relevance_for(vol, region)
    print("relevance:", note)

    viewer = napari.Viewer(show=True, title="napari-xai relevance explorer + atlas")
    viewer.window.resize(1800, 1150)
    viewer.add_image(vol.data[0], name="demo brain", affine=vol.affine, colormap="gray", metadata={"affine": vol.affine})
    viewer.add_image(np.clip(rel, 0, None), name="relevance (+)", affine=vol.affine, colormap="hot",
                     blending="additive", visible=False,
                     metadata={"affine": vol.affine, "xai_relevance": rel, "provenance": prov})
    widget = ExplorerWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Relevance explorer", area="right")
    widget.set_params(pp.PostParams(sigma_mm=4.0, scale="max", threshold=0.3, min_size=20, connectivity=18))
    widget.wait(120000)

    atlas = AtlasWidget(viewer)
    viewer.window.add_dock_widget(atlas, name="Atlas", area="right", tabify=True)
    atlas.volume_combo.setCurrentText("demo brain")
    atlas.set_atlas("aal")
    atlas.load(sync=True)
    widget.wait(60000)
    dock.raise_()

    def settle(n=40):
        for _ in range(n):
            QCoreApplication.processEvents()

    settle()
    cols = widget.region_columns()
    res = widget.result
    print(res.summary())
    for i in range(min(8, len(res.table))):
        print(int(res.table.id[i]), pp.SIGN_NAMES[int(res.table.sign[i])], int(res.table.voxels[i]),
              cols["peak_region"][i], "|", cols["regions"][i])
    rows = [i for i, name in enumerate(cols["peak_region"]) if "Hippocampus" in name] or [0]
    cid = int(res.table.id[rows[0]])
    viewer.dims.order = (2, 1, 0)  # axial slices: x across, y up
    cam = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    try:
        cam.orientation2d = ("up", "right")
    except Exception as exc:  # older napari
        print("camera orientation not set:", exc)
    widget.focus_cluster(cid)
    widget.highlight_check.setChecked(False)
    viewer.layers.selection.active = viewer.layers[CLUSTERS_NAME]
    viewer.cursor.position = tuple(res.table.peak_mm[cid - 1])
    widget.table_view.selectRow(widget.table_proxy.mapFromSource(widget.table_model.index(cid - 1, 0)).row())
    settle(80)
    viewer.screenshot(str(out / "explorer_regions.png"), canvas_only=False)
    print("cursor readout:", widget.cursor_label.text().replace("\n", " | "))
    print("wrote", out / "explorer_regions.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
