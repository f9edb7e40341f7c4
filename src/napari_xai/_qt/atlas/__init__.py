"""The Atlas dock (Plugins › napari-xai › Atlas), one small widget per file.

``widget.py`` composes ``source_box`` (atlas, threshold, layers), ``cursor_box`` (the region under the mouse),
``outlines`` (the outline layers and their check boxes), ``region_table`` and ``status`` (napari's status bar);
``viewers`` tells other docks which atlas a viewer uses.
"""

from .source_box import CUSTOM
from .viewers import atlas_grid_for_viewer, atlas_widget_for_viewer, cursor_voxel
from .widget import AtlasWidget

__all__ = ["CUSTOM", "AtlasWidget", "atlas_grid_for_viewer", "atlas_widget_for_viewer", "cursor_voxel"]
