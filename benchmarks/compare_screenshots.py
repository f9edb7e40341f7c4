"""Screenshots of the LRP designer's Compare tab across targets and models (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/compare_screenshots.py [OUTDIR]

Models: the trained demo model and the same network with freshly initialised
weights (a model-randomisation sanity check: a faithful explanation must
change when the weights do). Targets: both classes. One configuration (the
γ | ε | 0 composite). The input is the demo brain already on the model grid
(48×56×48) and z-scored, so both models see the same numbers (the random copy
is a ``file.py:Class`` source without metadata, so it neither resizes nor
normalises).

Writes ``lrp_compare_models_targets.png`` (the window: grid in 3D and the
Compare tab, one colour scale) and ``lrp_compare_models_targets_grid.png`` (the
grid alone, each cell on its own colour scale).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

RANDOM_NET = '''
from napari_xai.core.demo_net import DemoNet as RandomDemoNet  # same architecture, weights from the .pt file
'''


def main(outdir: str = "docs/images") -> int:
    import napari
    import numpy as np
    import torch
    from qtpy.QtCore import QCoreApplication

    from napari_xai._qt.lrp.designer import LrpDesignerWidget
    from napari_xai.core.demo import demo_volume
    from napari_xai.core.demo_net import DemoNet
    from napari_xai.core.explain import prepare_input
    from napari_xai.core.models import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lrp_screenshots import settle, wait

    torch.set_num_threads(1)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="napari-xai-shots-"))
    demo = load_model("demo")
    meta = json.loads((Path(__file__).resolve().parents[1] / "src/napari_xai/data/demo_metadata.json").read_text())
    torch.manual_seed(1)
    random_net = DemoNet(**meta["net_kwargs"]).eval()
    torch.save(random_net.state_dict(), tmp / "random_weights.pt")
    (tmp / "random_demo.py").write_text(RANDOM_NET)
    (tmp / "kwargs.json").write_text(json.dumps(meta["net_kwargs"]))

    volume, mask = demo_volume(seed=0, condition=True)
    x, *_ = prepare_input(volume, demo)  # model grid, z-scored
    grid = x[0, 0].numpy()
    scale = np.array(volume.shape) / np.array(grid.shape) * 2.0  # keep the 2 mm field of view

    viewer = napari.Viewer(show=True, title="napari-xai: compare models and targets")
    viewer.window.resize(1800, 1150)
    viewer.add_image(grid, name="demo brain (model grid, z-scored)", scale=scale, colormap="gray")
    w = LrpDesignerWidget(viewer)
    viewer.window.add_dock_widget(w, name="LRP designer", area="right")
    app = QCoreApplication.instance()
    settle(app)
    w.design.list_layers()
    w.manager.configs.clear()
    w.manager.new_config("γ | ε | 0 composite")
    key_demo = w.compare_tab.add_compare_model()
    w.picker.source.value = "Python file + weights"
    w.picker.path.value = str(tmp / "random_demo.py")
    w.picker.class_name.value = "RandomDemoNet"
    w.picker.weights.value = str(tmp / "random_weights.pt")
    w.picker.kwargs.value = str(tmp / "kwargs.json")
    key_random = w.compare_tab.add_compare_model()
    w.picker.source.value = "demo model"
    w.tabs.setCurrentIndex(2)
    w.compare_tab.set_compare_items(["config: γ | ε | 0 composite"], targets=["healthy", "atrophy"], models=[key_demo, key_random])
    w.compare_tab.compare_3d.setChecked(True)
    w.compare_tab.compare()
    wait(app, w)
    viewer.camera.angles = (0.0, 0.0, 90.0)
    settle(app, 20)
    viewer.screenshot(str(out / "lrp_compare_models_targets.png"), canvas_only=False, flash=False)
    print("common scale:", w.status.text())
    # the same cells, each on its own colour scale: the random model's (much weaker) map becomes visible
    w.compare_tab.compare_common.setChecked(False)
    w.compare_tab.compare()
    wait(app, w)
    viewer.camera.angles = (0.0, 0.0, 90.0)
    settle(app, 20)
    w.compare_tab.save_comparison(out / "lrp_compare_models_targets_grid.png")
    for label, rel in w.compare_tab.last_comparison:
        r = rel.data.sum(axis=0)
        print(f"{label:40s} sum {r.sum():9.4f}  positive {r[r > 0].sum():9.4f}  logit {rel.provenance['params'].get('output_relevance', float('nan')):9.4f}")
    print("wrote lrp_compare_models_targets.png and lrp_compare_models_targets_grid.png;", w.status.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
