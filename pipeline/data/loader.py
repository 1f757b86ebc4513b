"""From an ImageSet to batches: dataset, per-epoch sampler, DataLoader and device normalisation.

Images travel as uint8 HWC tensors from the loader workers; conversion to float and
normalisation happen on the training device (see `DeviceNormalize`), which keeps worker
output small and lets a GPU do the arithmetic.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from pipeline.data.decode import load_image
from pipeline.data.sources import ImageSet
from pipeline.repro import (
    epoch_seed,
    seed_transform,
)


class ImageDataset(Dataset):
    """Applies an albumentations transform per sample; yields (uint8 HWC tensor, label)."""

    def __init__(self, images: ImageSet, transform: Callable, decode_size: int | None = None):
        self.images = images
        self.transform = transform
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list) -> list[tuple[torch.Tensor, int]]:
        """One batch (the DataLoader hands a worker whole batches). From an `EpochSampler`
        the items are (index, epoch seed, position), and the batch's augmentations are
        seeded from its first item: the same batch is augmented the same way in whichever
        worker builds it, or in none."""
        if items and isinstance(items[0], tuple):
            _, key, position = items[0]
            seed_transform(self.transform, epoch_seed(key, position))
            items = [item[0] for item in items]
        return [self._sample(index) for index in items]

    def _sample(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.images.items[index]
        image = load_image(item, self.decode_size) if isinstance(item, str) else item
        image = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.images.labels[index])


class EpochSampler(Sampler):
    """A training sampler whose randomness is a function of (seed, epoch) alone.

    Each epoch reseeds `generator` (the one the wrapped sampler shuffles or draws with) and
    yields (index, epoch seed, position); `ImageDataset` seeds each batch's augmentations
    from that. Nothing carries over from epoch to epoch, so a resumed run and a run with
    another `data.num_workers` see the very same batches. Epochs count up from 0 by
    themselves; `set_epoch` (called by `fit`) sets the next one, e.g. on resume.
    """

    def __init__(
        self,
        sampler: Sampler,
        seed: int,
        generator: torch.Generator | None = None,
        *,
        with_seeds: bool = True,  # False: plain indices, for a dataset that does not augment
    ):
        self.sampler, self.seed, self.generator = sampler, seed, generator
        self.with_seeds = with_seeds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        assert isinstance(self.sampler, Sized)  # every sampler this wraps has a length
        return len(self.sampler)

    def __iter__(self):
        epoch, key = self.epoch, epoch_seed(self.seed, self.epoch)
        self.epoch = epoch + 1  # the next pass, unless set_epoch says otherwise
        if hasattr(self.sampler, "set_epoch"):  # a DistributedSampler shuffles by its epoch
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(key)
        if not self.with_seeds:
            yield from self.sampler
            return
        for position, index in enumerate(self.sampler):
            yield index, key, position


def default_num_workers() -> int:
    """Leave one core to the training process; a small box is better off without workers."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus - 1)


def _seed_worker(worker_id: int) -> None:
    # Each worker gets a distinct, reproducible seed for the global generators, derived from
    # the loader's base seed. (Augmentations are seeded per batch: see EpochSampler.)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int | None,
    seed: int,
    pin_memory: bool = False,
    sample_weights: np.ndarray | None = None,
    sampler: Sampler | None = None,  # e.g. a DistributedSampler; replaces shuffling
) -> DataLoader:
    """Train: shuffled (or drawn by `sample_weights`, with replacement) and augmented as a
    function of (seed, epoch) through an `EpochSampler`. Eval: in order.
    A weighted sampler under DDP is not sharded: each rank draws its own weighted sample."""
    workers = default_num_workers() if num_workers is None else num_workers
    assert isinstance(dataset, Sized)  # map-style: the samplers need its length
    assert sampler is None or isinstance(sampler, Sized)
    # What this process draws: a DDP rank's shard, not the whole set.
    drawn = len(sampler) if sampler is not None else len(dataset)
    if train:
        order = torch.Generator()  # reseeded each epoch by EpochSampler
        if sample_weights is not None:
            sampler = WeightedRandomSampler(
                sample_weights.tolist(),  # torch makes it a float64 tensor again
                num_samples=len(dataset),
                replacement=True,
                generator=order,
            )
        sampler = EpochSampler(
            sampler if sampler is not None else RandomSampler(dataset, generator=order),
            seed,
            order,
            # ImageDataset seeds its augmentations from the items; a wrapper (Subset) would
            # need to pass them on, or all loader workers would draw the same augmentations.
            with_seeds=isinstance(dataset, ImageDataset),
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and drawn > batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        # Its own generator for the workers' base seed: without one the DataLoader draws it
        # from the global torch RNG, and dropout would depend on how loaders were made.
        generator=torch.Generator().manual_seed(seed),
    )


class DeviceNormalize(torch.nn.Module):
    """uint8 NHWC batch -> normalised float NCHW (channels_last strides), on the device."""

    scale: torch.Tensor  # buffers, registered in __init__
    shift: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32)
        # (x/255 - mean) / std == x * scale + shift: one fused multiply-add per pixel.
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1), persistent=False)
        shift = -torch.tensor(mean, dtype=torch.float32) / std_t
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # NHWC storage is NCHW channels_last: no copy
        return torch.addcmul(self.shift, x, self.scale)


def shut_down_loader_workers(loaders: dict[str, DataLoader]) -> None:
    """Stop the (persistent) loader workers now, not at exit: a group-wide SIGTERM killed
    them, and an upload while their iterator lives can end in 'DataLoader worker is killed'."""
    for loader in loaders.values():
        iterator = getattr(loader, "_iterator", None)  # where persistent_workers keeps it
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
            loader._iterator = None
