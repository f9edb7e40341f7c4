"""Screenshot of the Check tab's channel ranking with atlas regions on the demo (run under Xvfb).

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python benchmarks/dissect_screenshot.py [OUTDIR]

Runs the γ | ε | 0 composite on the demo brain for "atrophy", ranks the channels
of the last ReLU (features.8) by relevance with the Harvard-Oxford regions they
fire on, shows the most relevant channel's relevance and activation, and writes
``check_channels_regions.png`` (the Check tab's channel group).
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
    viewer, w, app = demo_designer("napari-xai: channels and regions")
    w.design.list_layers()
    w.manager.configs.clear()
    w.manager.new_config("γ | ε | 0 composite")
    w.run_tab.target.setCurrentText("atrophy")
    w.tabs.setCurrentIndex(3)
    panel = w.check
    panel.channels.ablate_layer.setCurrentText("features.8")
    panel.channels.channel_atlas.setCurrentText("harvard-oxford")
    panel.channels.rank_channels()
    wait(app, panel)
    print(panel.status.text())
    for r in range(panel.channels.channel_table.rowCount()):
        print(" | ".join(panel.channels.channel_table.item(r, k).text() for k in range(1, 6)))
    box = panel.channels.channel_table.parentWidget()
    settle(app)
    box.grab().save(str(out / "check_channels_regions.png"))
    print("wrote", out / "check_channels_regions.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
