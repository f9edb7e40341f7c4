"""The Relevance explorer dock (Plugins › napari-xai › Relevance explorer), composed of small widgets.

``dock.ExplorerWidget`` composes: ``source`` (the relevance-layer picker), ``filter_box`` (σ, scale, filter,
sign), ``cluster_box`` (the threshold and **cluster-size sliders**), ``guides`` (size histogram, per-slice
plots), ``table`` (the cluster table), ``regions`` (atlas columns, region under the cursor), ``layers`` (the
two output layers) and ``export`` (Save…); ``scheduler`` runs the cached core chain
(:class:`napari_xai.core.explorer.Explorer`) off the GUI thread and coalesces slider events.
"""

from .dock import ExplorerWidget
from .layers import CLUSTERS_NAME, FILTERED_NAME, relevance_colormap
from .source import layer_relevance
from .table import COLUMNS, REGION_COLUMNS

__all__ = ["CLUSTERS_NAME", "COLUMNS", "ExplorerWidget", "FILTERED_NAME", "REGION_COLUMNS", "layer_relevance",
           "relevance_colormap"]
