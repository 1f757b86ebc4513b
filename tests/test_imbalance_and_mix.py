"""Class weights, the weighted sampler, mixup/cutmix soft targets, the strong preset."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.data.augment import AugmentConfig, build_train_transform
from pipeline.data.imbalance import balanced_sample_weights, inverse_frequency_weights
from pipeline.data.loader import ImageDataset, build_loader
from pipeline.data.mix import MixBatch, build_batch_transform
from pipeline.data.sources import ImageSet
from pipeline.errors import ConfigError
from pipeline.training.config import TrainConfig


def test_inverse_frequency_weights_balance_the_loss():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = inverse_frequency_weights(labels, 4)
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3, 0.0])
    counts = np.bincount(labels, minlength=4)
    assert (weights * counts)[:3] == pytest.approx([10 / 3] * 3)  # every class weighs the same
    assert weights[labels].mean() == pytest.approx(1.0)  # the loss keeps its scale


def test_weighted_sampler_draws_classes_about_equally():
    labels = np.array([0] * 90 + [1] * 10)
    images = ImageSet([np.zeros((2, 2, 3), np.uint8)] * 100, labels, ["a", "b"])
    loader = build_loader(
        ImageDataset(images, lambda image: {"image": image}),
        50,
        train=True,
        num_workers=0,
        seed=0,
        sample_weights=balanced_sample_weights(labels, 2),
    )
    drawn = torch.cat([y for _ in range(10) for _, y in loader])
    share = (drawn == 1).float().mean().item()
    assert 0.4 < share < 0.6  # 10% of the data, half of the draws


def test_mixup_and_cutmix_give_soft_targets_matching_the_pixels():
    x = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    y = torch.tensor([0, 2])
    mix = MixBatch(3, mixup_alpha=0.4, seed=0)
    mixed, soft = mix(x, y)
    lam = 1 - mixed[0, 0, 0, 0].item()  # image 0 (zeros) mixed with image 1 (ones)
    assert soft[0].tolist() == pytest.approx([lam, 0, 1 - lam])
    assert soft.sum(1).tolist() == pytest.approx([1, 1])
    cut = MixBatch(3, cutmix_alpha=1.0, seed=1)
    for _ in range(5):
        mixed, soft = cut(x, y)
        pasted = mixed[0].mean().item()  # share of image 0 covered by image 1's ones
        assert soft[0, 2].item() == pytest.approx(pasted)
        assert soft[0, 0].item() == pytest.approx(1 - pasted)
    assert build_batch_transform(0.0, 0.0, 1.0, 3, 0) is None


def test_soft_target_loss_takes_label_smoothing_and_class_weights():
    logits = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    hard = F.cross_entropy(logits, y, label_smoothing=0.1)
    soft = F.cross_entropy(logits, F.one_hot(y, 3).float(), label_smoothing=0.1)
    assert soft.item() == pytest.approx(hard.item())  # one path for mixed and plain batches
    w = torch.tensor([1.0, 2.0, 0.5])
    F.cross_entropy(logits, F.one_hot(y, 3).float(), weight=w)  # accepted together


def test_strong_preset_is_random_per_call_and_sized_from_the_backbone():
    transform = build_train_transform(AugmentConfig(preset="strong"), 48, 0.875, "bicubic")
    image = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    outs = [transform(image=image)["image"] for _ in range(4)]
    assert all(o.shape == (48, 48, 3) and o.dtype == np.uint8 for o in outs)
    assert not np.array_equal(outs[0], outs[1])
    names = {type(t).__name__ for t in transform.transforms}
    assert {"Affine", "ColorJitter", "CoarseDropout", "SomeOf", "HorizontalFlip"} <= names


def test_bad_values_fail_in_one_line():
    with pytest.raises(ConfigError, match="class_weights"):
        TrainConfig(class_weights="inverse")
    with pytest.raises(ConfigError, match="mixup_alpha"):
        AugmentConfig(mixup_alpha=-1)


@pytest.mark.parametrize("preset", ["none", "light", "strong"])
def test_random_erasing_changes_pixels_with_p1_and_never_with_p0(preset):
    image = np.full((40, 40, 3), 128, dtype=np.uint8)
    for p, erased in ((0.0, False), (1.0, True)):
        cfg = AugmentConfig(
            preset=preset, random_erasing=p, random_erasing_scale=[0.1, 0.2], hflip=0
        )
        transform = build_train_transform(cfg, 32, 1.0, "bilinear")
        names = [type(t).__name__ for t in transform.transforms]
        assert ("Erasing" in names) == erased and (not erased or names[-1] == "Erasing")
        if preset != "none":  # the photometric steps move a flat image's pixels on their own
            continue
        for seed in range(5):
            transform.set_random_seed(seed)
            out = transform(image=image)["image"]
            changed = (out != 128).any(axis=-1).mean()  # fraction of pixels erased
            if erased:
                assert 0.05 < changed <= 0.2 + 0.02
            else:
                assert changed == 0


def test_random_erasing_settings_are_checked():
    with pytest.raises(ConfigError, match="random_erasing is a probability"):
        AugmentConfig(random_erasing=1.5)
    with pytest.raises(ConfigError, match="random_erasing_scale"):
        AugmentConfig(random_erasing_scale=[0.5, 0.1])
