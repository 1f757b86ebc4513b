"""Albumentations presets, sized and interpolated from the backbone's data config.

Train transforms are random per sample and per epoch (online augmentation); eval transforms
are deterministic: resize the short side to img_size / crop_pct, then centre-crop.
"""

from __future__ import annotations

import albumentations as A
import cv2

from pipeline.data.config import PRESETS as PRESETS
from pipeline.data.config import AugmentConfig as AugmentConfig

INTERPOLATION = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def build_eval_transform(img_size: int, crop_pct: float, interpolation: str) -> A.Compose:
    interp = INTERPOLATION.get(interpolation, cv2.INTER_CUBIC)
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=round(img_size / crop_pct), interpolation=interp),
            A.CenterCrop(height=img_size, width=img_size),
        ]
    )


def build_train_transform(
    cfg: AugmentConfig, img_size: int, crop_pct: float, interpolation: str
) -> A.Compose:
    transform = _preset_transform(cfg, img_size, crop_pct, interpolation)
    if not cfg.random_erasing:
        return transform
    # Last, on the final crop, as timm's RandomErasing after normalisation. Random pixels
    # (its mode=pixel) rather than a constant: a grey box would be a cue of its own.
    erasing = A.Erasing(scale=cfg.random_erasing_scale, fill="random", p=cfg.random_erasing)
    return A.Compose([*transform.transforms, erasing])


def _preset_transform(
    cfg: AugmentConfig, img_size: int, crop_pct: float, interpolation: str
) -> A.Compose:
    if cfg.preset == "none":
        return build_eval_transform(img_size, crop_pct, interpolation)
    interp = INTERPOLATION.get(interpolation, cv2.INTER_CUBIC)
    steps = [
        A.RandomResizedCrop(size=(img_size, img_size), scale=cfg.scale, interpolation=interp),
        A.HorizontalFlip(p=cfg.hflip),
    ]
    if cfg.preset == "light":
        steps.append(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5))
    else:  # strong
        steps += [
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.1, 0.1),
                rotate=(-15, 15),
                interpolation=interp,
                p=0.5,
            ),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.3, hue=0.05, p=0.5),
            rand_augment(),
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.05, 0.2),
                hole_width_range=(0.05, 0.2),
                p=0.5,
            ),
        ]
    return A.Compose(steps)


def rand_augment(n: int = 2, p: float = 0.7) -> A.SomeOf:
    """RandAugment-like: `n` ops drawn at random from the photometric part of its list
    (the geometric ones are covered by the crop and Affine steps above)."""
    return A.SomeOf(
        [
            A.AutoContrast(p=1.0),
            A.Equalize(p=1.0),
            A.Posterize(num_bits=(4, 7), p=1.0),
            A.Solarize(threshold_range=(0.5, 1.0), p=1.0),
            A.Sharpen(alpha=(0.1, 0.4), p=1.0),
            A.RandomGamma(gamma_limit=(70, 140), p=1.0),
            A.HueSaturationValue(p=1.0),
            A.ToGray(p=1.0),
        ],
        n=n,
        replace=False,
        p=p,
    )
