"""Settings of the data source, split and loading (conf/data): `DataConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError

SPLITS = ("train", "val", "test")


SOURCES = ("digits", "folder", "csv", "cifar10", "cifar100")


SAMPLERS = ("shuffle", "weighted")


@dataclass
class DataConfig:
    name: str = "digits"  # digits | folder | csv | cifar10 | cifar100
    root: str | None = None  # folder: the image folder; csv: the CSV; cifar*: archive folder
    val_fraction: float = 0.2  # of all labelled images, carved out for early stopping
    test_fraction: float = 0.2  # held out; never seen in training or model selection
    batch_size: int = 64
    eval_batch_size: int | None = None  # None: 2 x batch_size
    num_workers: int | None = None  # None: chosen from the CPU count
    on_bad_image: str = "skip"  # skip | error
    kfold: int = 0  # K >= 2: K-fold cross-validation over train+val; the test split stays out
    fold: int | None = None  # with kfold: this one fold (0..K-1); the k-fold job sets it per fold
    sampler: str = "shuffle"  # shuffle | weighted (classes drawn equally often, with replacement)
    # Decode every image file once and keep the uint8 arrays in RAM: later epochs skip JPEG
    # decoding, which is most of the loader's work. For datasets that fit in memory.
    cache_images: bool = False
    # Frozen-backbone features kept on disk per image, shared by stage=inspect, baseline, screen,
    # finetune=auto's probe and train.cache_features (pipeline/training/feature_cache.py).
    # Relative to the working directory, like mlruns/; null: off.
    feature_cache: str | None = ".cache/features"
    # Val/test images that duplicate other splits' images (same file bytes): warn, or error
    # to stop the run before it trains (every run checks; stage=inspect lists them).
    on_leak: str = "warn"  # warn | error

    def __post_init__(self) -> None:
        if self.name not in SOURCES:
            raise ConfigError(f"data.name={self.name!r} is not one of: {', '.join(SOURCES)}")
        if self.kfold < 0 or self.kfold == 1:
            raise ConfigError(f"data.kfold must be 0 (off) or >= 2, got {self.kfold}")
        if self.fold is not None and not (self.kfold >= 2 and 0 <= self.fold < self.kfold):
            raise ConfigError(
                f"data.fold={self.fold} needs data.kfold=K >= 2 and 0 <= data.fold < K"
                f" (data.kfold={self.kfold})"
            )
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"data.sampler must be one of: {', '.join(SAMPLERS)}")
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1):
            raise ConfigError("data.val_fraction and data.test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                "data.val_fraction + data.test_fraction must leave images to train on"
            )
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ConfigError(f"data.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")
        if self.on_bad_image not in ("skip", "error"):
            raise ConfigError("data.on_bad_image must be 'skip' or 'error'")
        if self.on_leak not in ("warn", "error"):
            raise ConfigError(f"data.on_leak must be 'warn' or 'error', got {self.on_leak!r}")


# --- conf/augment: the transforms are built in pipeline/data/augment.py -------------

PRESETS = ("none", "light", "strong")


@dataclass
class AugmentConfig:
    preset: str = "light"  # none | light | strong
    scale: tuple[float, float] = (0.6, 1.0)  # random-resized-crop area range
    hflip: float = 0.5  # probability; 0 for images whose mirror is another class (digits)
    crop_pct: float | None = None  # eval centre-crop fraction; None: the backbone's own
    # Per-batch mixing on the device (pipeline/data/mix.py); 0 turns each off.
    mixup_alpha: float = 0.0  # Beta(alpha, alpha) mixing factor; 0.2 to 0.4 is usual
    cutmix_alpha: float = 0.0  # 1.0 is usual; with both on, each batch picks one at random
    mix_prob: float = 1.0  # chance that a batch is mixed at all
    # Random erasing (cutout): after every preset's steps, one rectangle of random pixels.
    random_erasing: float = 0.0  # probability per image; 0.25 is usual
    random_erasing_scale: tuple[float, float] = (0.02, 0.33)  # its area, as a fraction

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"augment.preset={self.preset!r} is not one of: {', '.join(PRESETS)}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ConfigError(
                f"augment.scale must be [low, high] with 0 < low <= high <= 1, got {list(self.scale)}"
            )
        self.scale = (self.scale[0], self.scale[1])  # Hydra passes a list
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"augment.hflip is a probability, got {self.hflip}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ConfigError("augment.mixup_alpha and augment.cutmix_alpha must be >= 0")
        if not 0 <= self.mix_prob <= 1:
            raise ConfigError(f"augment.mix_prob is a probability, got {self.mix_prob}")
        if not 0 <= self.random_erasing <= 1:
            raise ConfigError(f"augment.random_erasing is a probability, got {self.random_erasing}")
        erase = self.random_erasing_scale
        if len(erase) != 2 or not 0 < erase[0] <= erase[1] < 1:
            raise ConfigError(
                "augment.random_erasing_scale must be [low, high] with 0 < low <= high < 1, "
                f"got {list(erase)}"
            )
        self.random_erasing_scale = (erase[0], erase[1])  # Hydra passes a list
