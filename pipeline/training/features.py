"""Cached backbone features for frozen-backbone training (`train.cache_features=true`).

With a frozen backbone and no augmentation, every epoch feeds the backbone the same pixels
and gets the same features back. Computing them once per split and training the head on
the cached tensors turns a linear probe into a few matrix multiplies per epoch.

The head is trained through the ordinary `fit` loop: `HeadOnFeatures` wraps the classifier so
that `fit` sees a model that takes features, while checkpoints hold the whole classifier's
state dict (loadable like any other), and `FeatureLoader` yields feature batches in exactly
the order the image loader would have yielded the images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from pipeline.data.augment import build_eval_transform
from pipeline.data.loader import DeviceNormalize, EpochSampler, ImageDataset, build_loader
from pipeline.data.sources import ImageSet
from pipeline.models.backbone import InputSpec
from pipeline.models.classifier import Classifier
from pipeline.training.batches import Batches
from pipeline.training.config import check_cache_features as check_cache_features
from pipeline.training.precision import autocast


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: DataLoader, batches: Batches, amp_dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, D) as float32 and labels (N,), in the loader's order, on the device.

    `no_grad`, not `inference_mode`: inference tensors could not be saved for the head's
    backward pass later."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    for images, targets in loader:
        x, y = batches(images, targets)
        with autocast(batches.device, amp_dtype):
            features.append(backbone(x).float())
        labels.append(y)
    backbone.train(was_training)
    return torch.cat(features), torch.cat(labels)


class FeatureLoader:
    """Batches of cached (features, labels), shuffled like `build_loader` would shuffle.

    The same `EpochSampler` over the same seeded generator draws the same permutation as the
    image loader each epoch, so cached and uncached runs see identical batches; each batch
    is then one gather on the device instead of per-sample collation."""

    def __init__(
        self,
        features: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        seed: int,
    ):
        self.features, self.labels, self.batch_size = features, labels, batch_size
        n = len(labels)
        # `sampler`, as on a DataLoader: fit calls its set_epoch. None: in order (eval).
        self.sampler = None
        if train:
            order = torch.Generator()  # reseeded each epoch by the EpochSampler
            self.sampler = EpochSampler(
                RandomSampler(range(n), generator=order), seed, order, with_seeds=False
            )
        self.drop_last = train and n > batch_size

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        if self.sampler is not None:
            order = torch.tensor(list(self.sampler), dtype=torch.long)
        else:
            order = torch.arange(len(self.labels))
        # One host-to-device copy per epoch: a copy from pageable memory per batch would
        # wait for the GPU to finish each step first.
        order = order[: len(self) * self.batch_size].to(self.features.device)  # drop_last
        for index in order.split(self.batch_size):
            yield self.features[index], self.labels[index]


@dataclass
class FeatureBatches:
    """The `Batches` role for cached features: they are already normalised and on the device."""

    device: torch.device

    def __call__(
        self, features: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return features.to(self.device, non_blocking=True), labels.to(
            self.device, non_blocking=True
        )


class HeadOnFeatures(nn.Module):
    """The classifier's head applied to cached features. Its state dict is the whole
    classifier's, so best-epoch checkpoints and restores work as in uncached training."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier.head(features)

    def state_dict(self, *args, **kwargs):
        return self.classifier.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.classifier.load_state_dict(state_dict, strict=strict, assign=assign)


def cached_feature_loaders(
    model: Classifier,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    batch_sizes: tuple[int, int],
    device: torch.device,
    seed: int,
) -> tuple[HeadOnFeatures, FeatureLoader, FeatureLoader, FeatureBatches]:
    """What `fit` needs to train the head on the (features, labels) of train and val, each
    in its split's order (`image_features`, through the feature cache): the train loader
    shuffles with `seed` and the train batch size, as the image loader does."""
    train_x, train_y = (t.to(device) for t in train)
    val_x, val_y = (t.to(device) for t in val)
    return (
        HeadOnFeatures(model),
        FeatureLoader(train_x, train_y, batch_sizes[0], train=True, seed=seed),
        FeatureLoader(val_x, val_y, batch_sizes[1], train=False, seed=seed),
        FeatureBatches(device),
    )


def image_features(
    backbone: nn.Module,
    spec: InputSpec,
    images: ImageSet,
    batch_size: int,
    num_workers: int | None,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    crop_pct: float | None = None,
) -> torch.Tensor:
    """Pooled features (N, D), float32 on the CPU, of every image of `images` in order, with
    the frozen backbone and the eval transform (resize, center crop) at its input size: what
    stage=inspect and stage=screen fit on (`crop_pct`: augment.crop_pct, else the backbone's).
    The loader's workers decode."""
    crop_pct = crop_pct or spec.crop_pct
    transform = build_eval_transform(spec.img_size, crop_pct, spec.interpolation)
    dataset = ImageDataset(images, transform, round(spec.img_size / crop_pct))
    loader = build_loader(dataset, batch_size, train=False, num_workers=num_workers, seed=0)
    batches = Batches(DeviceNormalize(spec.mean, spec.std).to(device), device, False)
    features, _ = extract_features(backbone.to(device), loader, batches, amp_dtype)
    return features.cpu()
