"""The one table of baselines (no torch: the CLI builds its options from it); made by ``_model.make_baseline``."""

#: Every baseline napari-xai makes (:func:`._model.make_baseline`): all zeros, each channel's minimum or mean intensity, or a
#: strong Gaussian blur of the input. Each command offers the members that suit it, all from this one table:
#: the attribution methods (--param baseline=) take a reference input, where the minimum (background of a scan)
#: is the usual choice; flipping and infidelity (--baseline) replace voxels of the image, where the mean keeps
#: the intensity level. The two sets are part of the CLI contract (docs/cli.md), so they stay as they are.
BASELINE_KINDS = ("zero", "min", "mean", "blur")
#: The baselines of the attribution methods (integrated gradients, occlusion, region methods ...).
BASELINES = tuple(k for k in BASELINE_KINDS if k != "mean")
#: The baselines of region flipping and infidelity's square removal.
REPLACEMENTS = tuple(k for k in BASELINE_KINDS if k != "min")
