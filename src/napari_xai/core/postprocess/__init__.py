"""The relevance post-processing chain (smooth, scale, filter, sign, threshold, clusters) as pure functions;
:class:`napari_xai.core.explorer.Explorer` caches it for live sliders. Steps and conventions: docs/explorer.md.
"""

from .clusters import (  # noqa: F401
    Labelling,
    index_in_box,
    keep_min_size,
    label_clusters,
    size_step,
    structure,
    too_many_clusters_message,
)
from .filters import (  # noqa: F401
    filter_map,
    fraction_filter,
    max_profiles,
    sanitize,
    scale_map,
    select_sign,
    slice_profiles,
    smooth,
    support_box,
)
from .params import (  # noqa: F401
    CONNECTIVITIES,
    FILTERS,
    FRACTION_TOL,
    GAUSS_TRUNCATE,
    MAX_LABEL,
    SCALES,
    SIGNS,
    SIZE_UNITS,
    PostParams,
    min_size_voxels,
)
from .result import PostResult, empty_messages  # noqa: F401
from .tables import (  # noqa: F401
    SIGN_NAMES,
    TABLE_COLUMNS,
    ClusterTable,
    SizeHistogram,
    cluster_table,
    empty_table,
    masked_to_clusters,
    size_histogram,
)
