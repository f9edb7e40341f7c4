"""Is the map any good: flipping curves and AOPC, channel ablation, the randomization sanity check,
max-sensitivity and infidelity, and readouts against a mask. Definitions: docs/evaluation.md."""
