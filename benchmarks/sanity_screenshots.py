"""Screenshots of the randomization sanity check in the LRP designer's Check tab (run under Xvfb).

    QT_QPA_PLATFORM=xcb xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/sanity_screenshots.py \
        [OUTDIR] [METHOD] [COMMON]

On the demo brain and the demo model, target "atrophy": the cascading
randomization test (seed 0, every parametrised layer) of METHOD (default: the
designer's default LRP configuration, the γ | ε | 0 composite; or a method name
such as ``integrated-gradients``). Then *Show maps* puts the original map and
every step's map side by side in napari's grid (2D, axial slice through the
hippocampi), each map on its own colour scale (any non-empty COMMON: one scale).

Writes ``sanity_check_tab.png`` (the Check tab with the table and the verdict)
and ``sanity_grid.png`` (the canvas with the grid of maps), and prints the table.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(outdir: str = "docs/images", method: str = "", common: str = "") -> int:
    import numpy as np

    from lrp_screenshots import demo_designer, settle, wait
    from napari_xai._qt.lrp.check_tab import ACTIVE_CONFIG

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    viewer, w, app = demo_designer("napari-xai: randomization sanity check")
    viewer.window.resize(1800, 1200)
    w.design.list_layers()
    w.manager.configs.clear()
    w.manager.new_config("γ | ε | 0 composite")
    w.run_tab.target.setCurrentText("atrophy")
    panel = w.check
    w.tabs.setCurrentIndex(3)
    panel.sanity.sanity_method.setCurrentText(method or ACTIVE_CONFIG)
    panel.sanity.sanity_mode.setCurrentText("cascading")
    panel.sanity.sanity_seed.setValue(0)
    t0 = time.perf_counter()
    panel.sanity.run_sanity()
    wait(app, panel)
    print(f"{time.perf_counter() - t0:.1f} s:", panel.status.text())
    t = panel.sanity.sanity_table
    print(" | ".join(t.horizontalHeaderItem(c).text() for c in range(t.columnCount())))
    for r in range(t.rowCount()):
        print(" | ".join(t.item(r, c).text() for c in range(t.columnCount())))
    print(panel.sanity.sanity_verdict.text())
    # a randomized model scores near 0, so its LRP / IG maps are ~100x smaller than the original: on one
    # colour scale they look empty; each map on its own scale shows where they point (the metrics are scale-free)
    panel.sanity.sanity_common.setChecked(bool(common))
    bar = panel.scroll.verticalScrollBar()
    bar.setValue(bar.maximum())  # the sanity group is the last one of the tab
    settle(app, 20)
    # from the sanity group down to the status line (the flipping and ablation groups above are empty here)
    from qtpy.QtCore import QPoint, QRect

    top = panel.sanity.sanity_table.parentWidget().mapTo(panel, QPoint(0, 0)).y() - 6
    panel.grab(QRect(0, max(top, 0), panel.width(), panel.height() - max(top, 0))).save(str(out / "sanity_check_tab.png"))
    print("wrote sanity_check_tab.png")

    # the maps side by side: axial slice through the hippocampi (ground truth tells where)
    gt = next(l for l in viewer.layers if "ground truth" in l.name.lower())
    k = int(round(np.argwhere(np.asarray(gt.data) > 0)[:, 2].mean()))
    brain = viewer.layers["demo brain"]
    panel.sanity.sanity_3d.setChecked(False)
    panel.sanity.show_sanity_maps()
    viewer.dims.order = (2, 0, 1)
    viewer.dims.set_point(2, float(brain.data_to_world((0, 0, k))[2]))
    viewer.reset_view()
    settle(app, 30)
    viewer.screenshot(str(out / "sanity_grid.png"), canvas_only=True, flash=False)
    print("wrote sanity_grid.png at axial slice", k, ";", panel.status.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
