"""Images in: sources, decoding, splits, loaders, augmentation and mixing, imbalance, data report.

Config groups: conf/data (`data.config.DataConfig`), conf/augment (`data.augment.AugmentConfig`).
Imports only `errors`, `repro`, `signals` and `tracking` (the data report's run).
"""
