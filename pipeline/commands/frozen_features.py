"""The frozen backbone's features of some images, as every stage computes them from the
config: the eval transform at the backbone's size (`augment.crop_pct` if set), the eval batch
size, the loader's workers and training's AMP, read from and added to `data.feature_cache`.
One function, so that stage=inspect, baseline and finetune=auto's probe key the cache alike.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import RunConfig
from pipeline.data.sources import ImageSet
from pipeline.models.backbone import InputSpec
from pipeline.training.feature_cache import CachedFeatures, cached_image_features
from pipeline.training.precision import resolve_amp


def frozen_features(
    cfg: RunConfig, backbone: nn.Module, spec: InputSpec, images: ImageSet, device: torch.device
) -> CachedFeatures:
    return cached_image_features(
        cfg.data.feature_cache,
        backbone,
        spec,
        images,
        cfg.data.eval_batch_size or 2 * cfg.data.batch_size,
        cfg.data.num_workers,
        device,
        resolve_amp(cfg.train.amp, device),
        cfg.augment.crop_pct,
    )
