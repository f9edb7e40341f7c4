"""The pure napari-xai engine: volumes, geometry, models, attribution, post-processing.

Nothing in this package imports Qt, napari or magicgui; a test enforces it.
"""
