"""Data health at the data level: content hashes, exact duplicates (leakage across splits),
and per-image statistics. The embedding-based checks (near-duplicates, label issues) need the
backbone and live in `pipeline.evaluation.health`."""
