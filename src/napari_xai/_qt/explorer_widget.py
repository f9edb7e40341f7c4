"""Kept for old imports: the Relevance explorer now lives in the package :mod:`napari_xai._qt.explorer`."""

from .explorer import CLUSTERS_NAME, COLUMNS, FILTERED_NAME, ExplorerWidget, layer_relevance, relevance_colormap

__all__ = ["CLUSTERS_NAME", "COLUMNS", "ExplorerWidget", "FILTERED_NAME", "layer_relevance", "relevance_colormap"]
