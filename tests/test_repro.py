"""Seeds reach every random source: python, numpy, torch, loader workers, albumentations."""

import random

import numpy as np
import pytest
import torch

from pipeline.augment import AugmentConfig, build_train_transform
from pipeline.data import ImageDataset, ImageSet, build_loader
from pipeline.repro import load_rng_state, rng_state, seed_transform, set_deterministic


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


def test_rng_state_round_trip_covers_every_source():
    loader = _augmented_loader(num_workers=0)
    state = rng_state(loader)

    def draw():
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(())),
            [b[0] for b in loader],  # shuffle generator + albumentations generators
        )

    before = draw()
    load_rng_state(state, loader)
    after = draw()
    assert before[:3] == after[:3]
    assert all(torch.equal(a, b) for a, b in zip(before[3], after[3], strict=True))
    assert set(state) == {"python", "numpy", "torch", "cuda", "loader", "augment"}


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
