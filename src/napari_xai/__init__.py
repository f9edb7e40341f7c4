"""napari-xai: explain 3D medical-imaging models in napari.

The pure engine lives in :mod:`napari_xai.core` (no Qt, napari or magicgui).
napari adapters (reader, writer, sample data, widgets) live beside it.
"""

__version__ = "0.1.0"
