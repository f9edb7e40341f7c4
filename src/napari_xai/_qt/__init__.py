"""Qt widgets of napari-xai: thin adapters over :mod:`napari_xai.core`."""
