"""Former home of the unified LRP rule; kept so that old imports work. Import from :mod:`napari_xai.core.lrp`."""

from .lrp import (  # noqa: F401
    CUSTOM, PARAM_HELP, PARAM_NAMES, PRESETS, STABILIZER, STEPS, Preset, RuleParams, conserves, describe, formula,
    get_preset, match_preset, preset_params,
)
from .lrp.rules import UnifiedRule  # noqa: F401
