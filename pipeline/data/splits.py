"""Datasets, stratified splits and loaders.

Images travel as uint8 HWC tensors from the loader workers; conversion to float and
normalisation happen on the training device (see `DeviceNormalize`), which keeps worker
output small and lets a GPU do the arithmetic.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.data.cifar import load_cifar
from pipeline.data.config import SPLITS, DataConfig
from pipeline.data.decode import drop_unreadable
from pipeline.data.manifest import load_csv
from pipeline.data.sources import ImageSet, load_digits, scan_class_folders
from pipeline.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: ImageSet
    val: ImageSet
    test: ImageSet
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file left out, why)

    def check(self) -> Splits:
        """The splits one run trains, selects and tests on: each needs images, and the task
        two classes. (Not at construction: k-fold pools train+val first, so an empty val
        split is fine there.)"""
        names = self.class_names
        if len(names) < 2:
            raise DataError(f"data: found {len(names)} class {names}; a classifier needs 2 or more")
        empty = [name for name in SPLITS if len(getattr(self, name)) == 0]
        if empty:
            raise DataError(
                f"data: the {' and '.join(empty)} split is empty (sizes {self.sizes()}): add "
                "images, or raise data.val_fraction / data.test_fraction"
            )
        for name in ("val", "test"):
            missing = [c for c, n in getattr(self, name).class_counts().items() if n == 0]
            if missing:
                log.warning("no %s images of class(es) %s: too few images to split", name, missing)
        return self

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}

    def digest(self) -> str:
        """12 hex digits naming this exact split (every image's id, label and split): runs
        with equal digests trained, selected and tested on the same images."""
        rows = "\n".join("\t".join(row) for row in self.manifest_rows())
        return hashlib.sha1(rows.encode()).hexdigest()[:12]

    def manifest_rows(self) -> list[tuple[str, str, str]]:
        """(split, image id, class name) for every image: enough to rebuild the split."""
        return [
            (name, image_id, part.class_names[label])
            for name in SPLITS
            for part in (getattr(self, name),)
            for image_id, label in zip(part.ids, part.labels, strict=True)
        ]


# --- sources -----------------------------------------------------------------


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Split indices into len(fractions)+1 parts, stratified by label, deterministic in seed.

    The last part gets what the fractions leave. Parts are returned sorted.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for k, frac in enumerate(fractions):
            n = round(frac * len(idx))
            parts[k] += idx[start : start + n].tolist()
            start += n
        parts[-1] += idx[start:].tolist()
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def build_splits(cfg: DataConfig, seed: int) -> Splits:
    """Load the configured source and return train/val/test; the split is seeded."""
    if cfg.name == "digits":
        return _split_all(load_digits(), cfg, seed, skipped=[])
    if cfg.name in ("cifar10", "cifar100"):
        train, test = load_cifar(cfg.name, Path(cfg.root or "data").expanduser())
        return presplit({"train": train, "test": test}, cfg, seed, skipped=[])
    if cfg.name == "csv":
        if not cfg.root:
            raise ConfigError("data=csv needs data.root=<CSV file with path,label[,split] columns>")
        parts, skipped = load_csv(Path(cfg.root).expanduser())
        parts, bad = _drop_unreadable_parts(parts, cfg.on_bad_image)
        if "all" in parts:
            return _split_all(parts["all"], cfg, seed, skipped + bad)
        return presplit(parts, cfg, seed, skipped + bad)
    if not cfg.root:
        raise ConfigError("data=folder needs data.root=<folder with class sub-folders>")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder (data=csv reads a CSV)" if root.is_file() else "not found"
        raise DataError(f"data.root {what}: {root}")
    if not (root / "train").is_dir():
        images, skipped = scan_class_folders(root)
        images, bad = drop_unreadable(images, cfg.on_bad_image)
        return _split_all(images, cfg, seed, skipped + bad)

    train, skipped = scan_class_folders(root / "train")
    parts = {"train": train}
    for name in ("val", "test"):
        if (root / name).is_dir():
            parts[name], extra = scan_class_folders(root / name, train.class_names)
            skipped += extra
    parts, bad = _drop_unreadable_parts(parts, cfg.on_bad_image)
    return presplit(parts, cfg, seed, skipped + bad)


def _drop_unreadable_parts(
    parts: dict[str, ImageSet], on_bad_image: str
) -> tuple[dict[str, ImageSet], list[tuple[str, str]]]:
    kept, bad = {}, []
    for name, images in parts.items():
        kept[name], dropped = drop_unreadable(images, on_bad_image)
        bad += dropped
    return kept, bad


def presplit(
    parts: dict[str, ImageSet], cfg: DataConfig, seed: int, skipped: list[tuple[str, str]]
) -> Splits:
    """Complete a given train (+ val) (+ test) split.

    A val part without a test part is held out as the test set (as in the classic ants/bees
    layout); whatever is still missing is carved out of train, stratified and seeded.
    """
    parts = dict(parts)
    train = parts.pop("train")
    if "test" not in parts and "val" in parts:
        parts["test"] = parts.pop("val")
    if "val" not in parts:
        train_idx, val_idx = stratified_split(train.labels, [1 - cfg.val_fraction], seed)
        train, parts["val"] = train.subset(train_idx), train.subset(val_idx)
    if "test" not in parts:
        train_idx, test_idx = stratified_split(train.labels, [1 - cfg.test_fraction], seed)
        train, parts["test"] = train.subset(train_idx), train.subset(test_idx)
    return Splits(train, parts["val"], parts["test"], skipped)


def _split_all(
    images: ImageSet, cfg: DataConfig, seed: int, skipped: list[tuple[str, str]]
) -> Splits:
    test_idx, val_idx, train_idx = stratified_split(
        images.labels, [cfg.test_fraction, cfg.val_fraction], seed
    )
    return Splits(
        images.subset(train_idx), images.subset(val_idx), images.subset(test_idx), skipped
    )


# --- torch side ----------------------------------------------------------------


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per sample; each class is dealt round-robin after a seeded
    shuffle, continuing where the previous class stopped so remainders spread out."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(labels), dtype=np.int64)
    dealt = 0
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == label))
        folds[idx] = (np.arange(len(idx)) + dealt) % k
        dealt += len(idx)
    return folds


def kfold_splits(splits: Splits, k: int, seed: int) -> tuple[list[Splits], np.ndarray]:
    """K Splits over train+val (fold i is validation in split i) and the fold per image."""
    pool = splits.train.concat(splits.val)
    if len(pool) < 2 * k:
        raise DataError(f"data.kfold={k} needs at least {2 * k} train+val images, got {len(pool)}")
    folds = stratified_folds(pool.labels, k, seed)
    return [
        Splits(
            pool.subset(np.flatnonzero(folds != i)),
            pool.subset(np.flatnonzero(folds == i)),
            splits.test,
            splits.skipped,
        )
        for i in range(k)
    ], folds


def run_splits(cfg: DataConfig, seed: int) -> Splits:
    """The splits one training run sees: the data's, or with data.fold=I that fold's."""
    splits = build_splits(cfg, seed)
    if cfg.kfold and cfg.fold is not None:
        splits = kfold_splits(splits, cfg.kfold, seed)[0][cfg.fold]
    return splits.check()
