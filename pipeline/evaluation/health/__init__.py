"""stage=inspect's checks on the frozen backbone's embeddings (near-duplicates, label issues),
its settings, and its report. The data-level checks: `pipeline.data.health`."""
