"""Settings of stage=inspect (conf/inspect): `InspectConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass
class InspectConfig:
    # Cosine similarity of the frozen backbone's pooled features at or above which two images
    # are near-duplicates. 0.90 from ants/bees with efficientnet_lite0 at 224 px: no two
    # different photos above 0.82, JPEG-recompressed copies 0.975 and up, copies resized to
    # 0.8x and recompressed 0.89-0.95 (median 0.92), to 0.6x at quality 75 only 0.74-0.85
    # (docs/data.md#data-health). Data sets of near-identical pictures (digits, CIFAR) need
    # it higher: the report prints the closest pair's score to tune it by.
    near_dup_threshold: float = 0.90
    label_folds: int = 5  # cross-validation folds of the linear probe behind the label check
    max_grid_items: int = 12  # suspects shown per PNG grid (every one is in the CSVs)
    block_size: int = 2048  # rows of the similarity matrix computed at once (memory: rows x N)
    min_side: int = 32  # images with a shorter side (pixels) are flagged small
    dark_brightness: float = 20.0  # mean grey level (0..255) below which an image is dark
    # Variance of the Laplacian of the grey image (at most 256 px a side) below which it is
    # blurred; sharp photos score in the hundreds, a flat or out-of-focus image near 0.
    blur_threshold: float = 20.0

    def __post_init__(self) -> None:
        if not 0 < self.near_dup_threshold <= 1:
            raise ConfigError(
                f"inspect.near_dup_threshold must be in (0, 1], got {self.near_dup_threshold}"
            )
        if self.label_folds < 2:
            raise ConfigError(f"inspect.label_folds must be >= 2, got {self.label_folds}")
        for key in ("max_grid_items", "block_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"inspect.{key} must be >= 1, got {getattr(self, key)}")
