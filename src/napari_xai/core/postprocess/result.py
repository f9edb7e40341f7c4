"""The chain's result and its explanatory messages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import geometry
from .clusters import Labelling
from .params import PostParams
from .tables import ClusterTable, SizeHistogram, masked_to_clusters


@dataclass
class PostResult:
    """Everything the chain produces for one parameter set."""

    params: PostParams
    filtered: np.ndarray  # float32 map after smoothing, scaling, filter and sign selection
    labels: np.ndarray  # uint16 cluster labels 1..K, largest first
    table: ClusterTable  # rows of the kept clusters (K rows)
    histogram: SizeHistogram  # sizes of all clusters at the threshold (before the size filter)
    profiles: list[tuple[np.ndarray, np.ndarray]]  # per-slice (pos, neg) sums of ``filtered``
    affine: np.ndarray
    n_clusters_before_size: int
    min_voxels: float
    max_abs: float  # max |filtered|, the top of the threshold slider
    divisor: float  # what the scaling divided by
    messages: list[str] = field(default_factory=list)
    sizes_all: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # voxels of all clusters at the threshold, descending
    box: tuple | None = None  # bounding box (slices) of every voxel above the threshold
    labelling: Labelling | None = None  # every cluster at the threshold (``labels`` keeps ranks 1..n_clusters)

    def masked(self) -> np.ndarray:
        """The filtered relevance inside the kept clusters only (0 elsewhere)."""
        return masked_to_clusters(self.filtered, self.labels, self.box)

    @property
    def n_clusters(self) -> int:
        return len(self.table)

    def summary(self) -> str:
        if self.n_clusters == 0:
            return "no clusters"
        vv = geometry.voxel_volume_mm3(self.affine)
        return (
            f"{self.n_clusters} clusters (of {self.n_clusters_before_size} at threshold {self.params.threshold:g}); "
            f"largest {int(self.table.voxels[0])} voxels = {self.table.voxels[0] * vv:.1f} mm³"
        )


def empty_messages(params: PostParams, max_abs: float, labelling: Labelling, k: int, min_voxels: float, vv: float) -> list[str]:
    """Why a result is empty (or nothing), as one-line messages."""
    if max_abs == 0:
        return ["the filtered relevance is all zeros; there are no clusters (check the filter range and sign)."]
    if labelling.n == 0:
        return [
            f"threshold {params.threshold:g} is at or above the largest |relevance| {max_abs:.4g} after filtering; "
            "no voxel passes it. Lower the threshold."
        ]
    if k == 0:
        big = int(labelling.sizes[0])
        return [
            f"no cluster has at least {min_voxels:g} voxels ({min_voxels * vv:.1f} mm³); the largest has {big} voxels "
            f"({big * vv:.1f} mm³). Lower the minimum cluster size."
        ]
    return []
