"""Screenshots of the LRP designer for docs/lrp-designer.md (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/lrp_screenshots.py [OUTDIR]

Uses the demo brain and the demo model. Writes ``lrp_segment_editor.png`` (the
Design tab), ``lrp_intermediate.png`` (relevance at a segment boundary beside the
input relevance, 2D) and ``lrp_compare_3d.png`` (five configurations side by side
in napari's grid mode, 3D, one colour limit), and the configurations as
``lrp_configs_example.json`` next to them.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


ANGLES = (0.0, 0.0, 90.0)  # 3D camera (degrees); overridden by the second command-line argument "a,b,c"


def settle(app, n: int = 8) -> None:
    for _ in range(n):
        app.processEvents()


def wait(app, widget) -> None:
    import time

    while widget.busy:
        app.processEvents()
        time.sleep(0.02)
    settle(app)
    if widget.status.text().startswith("error"):
        raise SystemExit(widget.status.text())


def demo_designer(title: str = "napari-xai LRP designer"):
    """A shown viewer (1800x1150) with the demo brain and the LRP designer docked: (viewer, widget, app)."""
    import torch
    import torch._dynamo  # noqa: F401  - before OpenGL (see napari_xai/_qt/__init__.py)

    import napari
    from qtpy.QtCore import QCoreApplication

    from napari_xai._qt.lrp.designer import LrpDesignerWidget
    from napari_xai._sample_data import demo_brain

    torch.set_num_threads(1)
    viewer = napari.Viewer(show=True, title=title)
    viewer.window.resize(1800, 1150)
    for data, kwargs, kind in demo_brain():
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    w = LrpDesignerWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="LRP designer", area="right")
    from qtpy.QtCore import Qt

    w.window().resizeDocks([dock], [560], Qt.Orientation.Horizontal)  # a user drags the dock wider on a large screen
    app = QCoreApplication.instance()
    settle(app)
    return viewer, w, app


def main(outdir: str = "docs/images", angles: str | None = None) -> int:
    global ANGLES
    if angles:
        ANGLES = tuple(float(v) for v in angles.split(","))
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    viewer, w, app = demo_designer()

    layers = w.design.list_layers()
    print(f"{len(layers)} layers:", ", ".join(l.name for l in layers))
    names = [l.name for l in layers]
    rule = [l.name for l in layers if l.kind == "rule"]

    # five configurations; the first is the composite default (gamma | epsilon | 0)
    w.manager.configs.clear()
    comp = w.manager.new_config("γ | ε | 0 composite")
    w.manager.new_config("LRP-ε everywhere", from_layers=False)
    w.segments.add_segment(rule[0], rule[-1], "lrp-epsilon", name="all", epsilon=0.25)
    w.manager.new_config("z⁺ convs | ε dense", from_layers=False)
    w.segments.add_segment(rule[0], rule[-2], "lrp-z-plus", name="convs")
    w.segments.add_segment(rule[-1], rule[-1], "lrp-epsilon", name="dense", epsilon=0.25)
    w.manager.new_config("flat | αβ | 0", from_layers=False)
    w.segments.add_segment(rule[0], rule[0], "lrp-flat", name="input")
    w.segments.add_segment(rule[1], rule[-2], "lrp-alpha-beta", name="middle")
    w.manager.new_config("custom γ+ε", from_layers=False)
    w.segments.add_segment(rule[0], rule[-2], "custom", name="convs", alpha=1.0, beta=0.0, epsilon=0.1, theta0=0.0,
                  theta1=1.0, gamma0=0.0, gamma1=1.0, gamma1p=0.5, gamma2=0.0)
    w.manager.save_configs(out / "lrp_configs_example.json")

    # the segment editor: the composite, its middle segment selected
    w.manager.config_combo.setCurrentText(comp.name)
    w.manager.activate(comp.name)
    w.design.set_intermediate([names[names.index(rule[1]) + 2]] if len(names) > names.index(rule[1]) + 2 else [])
    w.segments.segment_table.selectRow(1)
    w.tabs.setCurrentIndex(0)
    settle(app, 20)
    dock = w.parentWidget() or w
    dock.grab().save(str(out / "lrp_segment_editor.png"))
    print("wrote lrp_segment_editor.png")

    # run: input relevance and intermediate relevance at the segment boundaries
    w.tabs.setCurrentIndex(1)
    w.run_tab.run()
    wait(app, w)
    print(w.status.text())
    print({w.run_tab.readout_table.item(r, 0).text(): w.run_tab.readout_table.item(r, 1).text() for r in range(w.run_tab.readout_table.rowCount())})
    import numpy as np

    brain = viewer.layers["demo brain"]
    truth = np.asarray(viewer.layers["demo atrophy (ground truth)"].data)
    k = int(round(np.argwhere(truth > 0)[:, 2].mean())) if truth.any() else brain.data.shape[2] // 2
    for layer in viewer.layers:
        layer.visible = False
    base = f"demo · {comp.name}"
    cells = [("relevance after segment 'middle'", f"{base} · at after middle"), ("input relevance", base)]
    order = []
    added = []
    for title, rel in cells:
        anat = viewer.add_image(brain.data, name=title, affine=brain.affine, colormap="gray", opacity=0.6)
        anat.name_overlay.visible = True
        added.append(anat)
        order += [title, f"{rel} (+)", f"{rel} (−)"]
    for name in order:
        viewer.layers[name].visible = True
    for i, name in enumerate(order):
        viewer.layers.move(viewer.layers.index(viewer.layers[name]), i)
    viewer.canvas.grid.stride = 3
    viewer.canvas.grid.enabled = True
    viewer.dims.ndisplay = 2
    viewer.dims.order = (2, 0, 1)  # axial slices through the hippocampi
    viewer.dims.set_point(2, float(brain.data_to_world((0, 0, k))[2]))
    viewer.reset_view()
    settle(app, 20)
    viewer.screenshot(str(out / "lrp_intermediate.png"), canvas_only=False, flash=False)
    print("wrote lrp_intermediate.png at axial slice", k)
    viewer.canvas.grid.enabled = False
    for anat in added:
        viewer.layers.remove(anat)
    viewer.dims.order = (0, 1, 2)
    brain.visible = True

    # comparison of the five configurations, 3D grid
    w.tabs.setCurrentIndex(2)
    w.compare_tab.set_compare_items([f"config: {c.name}" for c in w.manager.configs])
    w.compare_tab.compare_3d.setChecked(True)
    w.compare_tab.compare()
    wait(app, w)
    viewer.camera.angles = ANGLES
    settle(app, 20)
    w.compare_tab.save_comparison(out / "lrp_compare_3d.png")
    print("wrote lrp_compare_3d.png;", w.status.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
