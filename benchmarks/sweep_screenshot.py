"""The α sweep of Joa et al. on the demo: the composite with pass filters inside LRP, readouts per cell (Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/sweep_screenshot.py [OUTDIR]

Writes ``lrp_sweep.png`` (the window: 2D grid and the Compare tab's table) and
prints the table (relevance sum, mass in the ground truth, rank accuracy,
inclusivity) for docs/lrp-designer.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(outdir: str = "docs/images") -> int:
    from lrp_screenshots import demo_designer, settle, wait

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    viewer, w, app = demo_designer("napari-xai: α sweep")
    w.design.list_layers()
    w.manager.configs.clear()
    w.manager.new_config("γ | ε | 0 composite")
    w.run_tab.target.setCurrentText("atrophy")
    assert "ground truth" in w.run_tab.truth_layer.currentText()
    w.tabs.setCurrentIndex(2)
    w.compare_tab.sweep_filter("pass", (0.2, 0.4, 0.6, 0.8))
    w.compare_tab.compare_3d.setChecked(False)
    w.compare_tab.compare()
    wait(app, w)
    viewer.dims.order = (2, 0, 1)
    viewer.dims.set_current_step(2, 28)
    viewer.reset_view()
    settle(app, 20)
    viewer.screenshot(str(out / "lrp_sweep.png"), canvas_only=False, flash=False)
    print("| cell | Σ relevance | mass in GT | rank accuracy | D(R, y_GT) | D(R, x) |")
    for r in w.compare_tab.cell_readouts:
        print(f"| {r['cell']} | {r['sum']:.3f} | {r['relevance_mass']:.3f} | {r['rank_accuracy']:.3f} | "
              f"{r['ground_truth_inclusivity']:.3f} | {r['input_inclusivity']:.3f} |")
    print("wrote", out / "lrp_sweep.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
