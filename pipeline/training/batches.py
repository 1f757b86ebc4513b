"""What a training or evaluation pass reads, and how a batch reaches the device.

`fit`, `train_one_epoch` and `predict` take any `BatchSource` and `ToDevice`: image batches
from a DataLoader with `Batches`, or cached backbone features (training/features.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


class BatchSource(Protocol):
    """Where a pass reads its (images, labels) batches: a DataLoader, or a FeatureLoader."""

    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class ToDevice(Protocol):
    """Readies a batch for the model on `device`: Batches, or FeatureBatches."""

    device: torch.device

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor, /
    ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class Batches:
    """Moves uint8 NHWC batches to the device and normalises them there."""

    normalize: nn.Module
    device: torch.device
    channels_last: bool

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = self.normalize(images.to(self.device, non_blocking=True))
        if not self.channels_last:
            images = images.contiguous()
        return images, labels.to(self.device, non_blocking=True)
