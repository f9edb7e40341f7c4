"""Screenshots of the LRP designer's Check tab on the demo (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/check_screenshots.py [OUTDIR]

Runs the γ | ε | 0 composite on the demo brain for "atrophy", then

* flips a painted ball on the left hippocampus (zero baseline) and shows the
  prediction before and after;
* runs the flipping curves (MoRF, LeRF, random; regions of 3 voxels, up to 10 %)
  for that relevance and shows the flipped regions;
* ranks the channels of the last convolution and ablates the two most relevant.

Then compares four maps of "atrophy" (the composite, integrated gradients,
LRP-ε+ and Grad-CAM) and runs the flipping curves for every comparison cell.

Writes ``check_tab.png`` (window, 2D slice through the hippocampi) and
``check_cells.png`` (the Check tab with the per-cell AOPC table) and prints the
numbers used in docs/lrp-designer.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(outdir: str = "docs/images") -> int:
    import numpy as np

    from lrp_screenshots import demo_designer, settle, wait

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    viewer, w, app = demo_designer("napari-xai: check the relevance")
    layers = w.design.list_layers()
    w.manager.configs.clear()
    w.manager.new_config("γ | ε | 0 composite")
    w.run_tab.target.setCurrentText("atrophy")
    w.run_tab.run()
    wait(app, w)
    panel = w.check
    w.tabs.setCurrentIndex(3)

    # 1. a painted flip on the left hippocampus (ground truth tells where it is)
    gt = next(l for l in viewer.layers if "ground truth" in l.name.lower())
    ii, jj, kk = np.nonzero(np.asarray(gt.data))
    centre = np.array([ii.mean(), jj.mean(), kk.mean()])
    left = np.asarray(gt.data).copy()
    left[: int(centre[0])] = 0  # one hemisphere's part of the ground truth
    li, lj, lk = np.nonzero(left)
    c = np.array([li.mean(), lj.mean(), lk.mean()]).round().astype(int)
    mask_layer = panel.flip.new_flip_mask()
    grid = np.indices(mask_layer.data.shape)
    ball = ((grid[0] - c[0]) ** 2 + (grid[1] - c[1]) ** 2 + (grid[2] - c[2]) ** 2) <= 6 ** 2
    mask_layer.data = ball.astype(np.uint8)
    panel.flip.predict()
    wait(app, panel)
    print("painted flip:", panel.status.text())

    # 2. flipping curves for the LRP relevance
    rel_name = next(n for n in (panel.curves.relevance_layer.itemText(i) for i in range(panel.curves.relevance_layer.count()))
                    if "composite" in n)
    panel.curves.relevance_layer.setCurrentText(rel_name)
    for cb in panel.curves.order_boxes.values():
        cb.setChecked(True)
    panel.curves.max_fraction.setValue(0.1)
    panel.curves.run_curve()
    wait(app, panel)
    print("curves:", panel.status.text())

    # 3. channel ablation at the last convolution
    rule = [l.name for l in layers if l.kind == "rule"]
    conv = [n for n in rule if panel.channels.ablate_layer.findText(n) >= 0][-2]
    panel.channels.ablate_layer.setCurrentText(conv)
    panel.channels.rank_channels()
    wait(app, panel)
    top = [int(panel.channels.channel_table.item(r, 1).text()) for r in range(2)]
    panel.channels.tick_channels(top)
    panel.channels.ablate()
    wait(app, panel)
    print("ablation:", panel.channels.ablation_label.text())

    viewer.dims.ndisplay = 2
    viewer.dims.order = (2, 0, 1)  # axial
    viewer.dims.set_point(2, float(viewer.layers[0].data_to_world(c)[2]))
    for layer in viewer.layers:
        if "(−)" in layer.name or "boundary" in layer.name or " · at " in layer.name:
            layer.visible = False
    viewer.reset_view()
    settle(app, 20)
    viewer.screenshot(str(out / "check_tab.png"), canvas_only=False, flash=False)
    print("wrote check_tab.png")

    # 4. flipping curves for every cell of a comparison of four maps of "atrophy"
    w.compare_tab.compare_3d.setChecked(False)
    w.compare_tab.compare(["config: γ | ε | 0 composite", "method: integrated-gradients", "method: lrp-epsilon-plus",
               "method: grad-cam"], targets=["atrophy"])
    wait(app, w)
    w.tabs.setCurrentIndex(3)
    for key, cb in panel.curves.order_boxes.items():
        cb.setChecked(key != "lerf")
    panel.curves.run_cell_curves()
    wait(app, panel)
    for label, curves in panel.curves.last_cell_curves:
        print(f"cell {label:28s} " + "  ".join(f"{c.order} AOPC {c.aopc:.4g}" for c in curves))
    settle(app, 10)
    panel.grab().save(str(out / "check_cells.png"))
    print("wrote check_cells.png;", panel.status.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
