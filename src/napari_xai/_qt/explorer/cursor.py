"""The readout under the table: the cluster (and atlas region) under the mouse; centring on a cluster."""

from __future__ import annotations

import numpy as np
from qtpy.QtWidgets import QLabel

from ...core import postprocess as pp

NO_CLUSTER = "cluster under cursor: –"


def camera(viewer):
    scene = getattr(viewer, "scene", None)  # napari >= 0.9
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def centre_on(viewer, world_mm) -> None:
    """Move the dims point and the camera centre to a world position (mm)."""
    world = np.asarray(world_mm, dtype=float)
    nd = viewer.dims.ndim
    viewer.dims.set_point(list(range(nd - 3, nd)), tuple(world))
    full = np.asarray(viewer.dims.point, dtype=float)
    full[-3:] = world
    camera(viewer).center = tuple(full[d] for d in viewer.dims.displayed)


def cluster_text(row: dict | None) -> str:
    if row is None:
        return NO_CLUSTER
    return (f"cluster {row['id']} ({row['sign']}): {row['voxels']} voxels = {row['mm3']:.1f} mm³, "
            f"mean {row['mean']:.4g}, peak {row['peak']:.4g} at ({', '.join(f'{c:.1f}' for c in row['peak_mm'])}) mm")


class CursorReadout(QLabel):
    """One or two lines: the cluster under the cursor and, with an atlas, the region there."""

    def __init__(self, parent=None):
        super().__init__(NO_CLUSTER, parent)
        self.setWordWrap(True)

    def show_at(self, res: pp.PostResult, cluster_id: int, atlas_name: str | None, region: str | None) -> None:
        text = cluster_text(res.table.row(cluster_id) if cluster_id else None)
        if region is not None:
            text += f"\nregion ({atlas_name}): {region or 'none'}"
        self.setText(text)

    def clear(self) -> None:
        self.setText(NO_CLUSTER)
