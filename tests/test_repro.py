"""Seeds reach every random source: python, numpy, torch, loader workers, albumentations."""

import random

import numpy as np
import pytest
import torch

from pipeline.data.augment import AugmentConfig, build_train_transform
from pipeline.data.loader import ImageDataset, build_loader
from pipeline.data.sources import ImageSet
from pipeline.repro import (
    epoch_seed,
    load_rng_state,
    rng_state,
    seed_transform,
    set_deterministic,
)


def _augmented_loader(num_workers: int, seed: int = 0):
    """One image repeated: every difference between samples is augmentation."""
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    images = ImageSet([image] * 8, np.zeros(8, dtype=np.int64), ["x"])
    transform = build_train_transform(AugmentConfig(preset="strong"), 24, 1.0, "bilinear")
    seed_transform(transform, seed)
    return build_loader(
        ImageDataset(images, transform), 4, train=True, num_workers=num_workers, seed=seed
    )


def test_worker_augmentations_are_seeded_and_distinct():
    first = [b[0] for b in _augmented_loader(num_workers=2)]
    again = [b[0] for b in _augmented_loader(num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # repeatable
    # Batch 0 comes from worker 0, batch 1 from worker 1: they must not draw the same crops.
    assert not torch.equal(first[0], first[1])
    other_seed = [b[0] for b in _augmented_loader(num_workers=2, seed=1)]
    assert not torch.equal(first[0], other_seed[0])


def test_rng_state_round_trip_covers_every_global_source():
    state = rng_state()

    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    before = draw()
    load_rng_state(state)
    assert draw() == before
    assert set(state) == {"python", "numpy", "torch", "cuda"}


def _distinct_images_loader(num_workers: int, seed: int = 0, weighted: bool = False):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(12)]
    labels = np.arange(12) % 3
    transform = build_train_transform(AugmentConfig(preset="strong"), 24, 1.0, "bilinear")
    return build_loader(
        ImageDataset(ImageSet(images, labels, ["a", "b", "c"]), transform),
        4,
        train=True,
        num_workers=num_workers,
        seed=seed,
        sample_weights=np.linspace(1, 2, 12) if weighted else None,
    )


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _same(a, b) -> bool:
    return all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("weighted", [False, True])
def test_training_batches_are_a_function_of_seed_and_epoch_only(weighted):
    """Order and augmentations: the same with and without workers, and for a resumed run."""
    no_workers = _distinct_images_loader(0, weighted=weighted)
    epochs = [_epoch(no_workers) for _ in range(2)]
    assert not _same(epochs[0], epochs[1])  # each epoch shuffles and augments anew
    workers = _distinct_images_loader(2, weighted=weighted)
    assert _same(epochs[0], _epoch(workers)) and _same(epochs[1], _epoch(workers))
    # A resumed run builds a new loader (and new workers) and starts at epoch 1.
    resumed = _distinct_images_loader(2, weighted=weighted)
    resumed.sampler.set_epoch(1)
    assert _same(epochs[1], _epoch(resumed))
    assert not _same(epochs[0], _epoch(_distinct_images_loader(0, seed=1, weighted=weighted)))


def test_epoch_seeds_do_not_overlap_across_seeds():
    seeds = {epoch_seed(seed, epoch) for seed in range(20) for epoch in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)


@pytest.fixture
def restore_determinism():
    yield
    set_deterministic(False)


def test_deterministic_flag_sets_torch_and_cudnn(restore_determinism, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    set_deterministic(True)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    import os

    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_a_given_sampler_is_used_even_when_it_is_empty():
    # A DDP shard can be empty (fewer images than ranks): it must not become a full shuffle.
    from torch.utils.data import SubsetRandomSampler

    loader = _distinct_images_loader(0)
    empty = build_loader(
        loader.dataset, 4, train=True, num_workers=0, seed=0, sampler=SubsetRandomSampler([])
    )
    assert list(empty) == []
