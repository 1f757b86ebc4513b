"""data.cache_images=true: decode once, keep the arrays, train on the very same pixels."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.commands.train import run_train
from pipeline.data.augment import AugmentConfig, build_train_transform
from pipeline.data.decode import cache_in_memory, read_rgb
from pipeline.data.loader import ImageDataset
from pipeline.data.sources import ImageSet, scan_class_folders
from pipeline.errors import DataError
from pipeline.repro import seed_transform
from tests.conftest import write_image_folder


def _jpeg_folder(root: Path, per_class: int = 4) -> Path:
    """JPEGs large enough (96x72) for a 16 px decode to take libjpeg's 1/4 draft scale."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"img {i}.jpg", quality=90)
    return root


def test_cached_arrays_are_what_each_epoch_would_decode(tmp_path):
    images, _ = scan_class_folders(_jpeg_folder(tmp_path / "jpg"))
    cached = cache_in_memory(images, decode_size=16)
    assert cached.ids == images.ids  # the manifest still names the files
    assert np.array_equal(cached.labels, images.labels)
    for path, array in zip(images.items, cached.items, strict=True):
        assert isinstance(array, np.ndarray)
        assert array.shape == (18, 24, 3)  # draft mode: 96x72 decoded at 1/4 scale
        assert np.array_equal(array, read_rgb(path, 16))


def test_cached_and_file_datasets_yield_identical_augmented_samples(tmp_path):
    images, _ = scan_class_folders(_jpeg_folder(tmp_path / "jpg"))
    transform = build_train_transform(AugmentConfig(preset="strong"), 16, 0.875, "bicubic")
    samples = []
    for image_set in (images, cache_in_memory(images, 18)):
        seed_transform(transform, 7)
        dataset = ImageDataset(image_set, transform, decode_size=18)
        samples.append(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert torch.equal(samples[0], samples[1])


def test_in_memory_sets_are_returned_as_they_are():
    images = ImageSet([np.zeros((4, 4, 3), np.uint8)], np.array([0]), ["a"])
    assert cache_in_memory(images, 4) is images


def test_a_cache_that_would_not_fit_fails_before_decoding(tmp_path):
    images, _ = scan_class_folders(_jpeg_folder(tmp_path / "jpg"))
    # 8 images of 96x72x3 bytes need 166 kB; refuse when that is over half of what is free.
    with pytest.raises(DataError, match=r"needs .* GiB for 8 images .* data.cache_images=false"):
        cache_in_memory(images, None, available_bytes=300_000)


def test_training_from_the_cache_gives_the_same_run_as_from_files(tiny_cfg, tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=6)
    results = [
        run_train(
            tiny_cfg(
                "data=folder",
                f"data.root={root}",
                f"data.cache_images={cache}",
                "train.epochs=2",
                "tracking.enabled=false",
            ),
            tmp_path / f"out_{cache}",
        )
        for cache in (False, True)
    ]
    files, cached = (r.test_metrics for r in results)
    assert files == cached
    assert [h["train/loss"] for h in results[0].fit.history] == [
        h["train/loss"] for h in results[1].fit.history
    ]
