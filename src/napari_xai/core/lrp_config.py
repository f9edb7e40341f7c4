"""Former home of the LRP configurations; kept so that old imports work. Import from :mod:`napari_xai.core.lrp`."""

from .lrp import (  # noqa: F401
    CONSERVATION_TOLERANCE, FORMAT, LAYER_RULES, LIBRARY_FORMAT, LayerFilter, LayerInfo, LrpConfig, Resolved, Segment,
    boundary_points, default_config, list_layers, load_config, load_configs, resolve, run_config, save_configs,
)
