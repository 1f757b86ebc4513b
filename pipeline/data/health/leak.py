"""The cheap health check every training run makes: exact duplicates across its splits.

A val or test image that is also a training image scores what the model memorised, not what
it learnt: the test score is inflated. Hashing file bytes costs milliseconds per hundred
images (benchmarks/inspect_scale.py), so every run checks, and `data.on_leak` says whether a
leak warns or stops the run before it trains.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from pipeline.data.health.duplicates import (
    DuplicatePair,
    duplicate_counts,
    exact_duplicates,
    split_refs,
)
from pipeline.data.health.hashing import content_hashes
from pipeline.data.splits import Splits
from pipeline.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class LeakCheck:
    cross_split: int  # val/test images whose exact content an earlier split holds
    within_split: int  # extra copies inside one split
    pairs: list[DuplicatePair]
    train_imbalance: float  # largest / smallest class count in train
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {
            "data/cross_split_duplicates": self.cross_split,
            "data/within_split_duplicates": self.within_split,
            "data/train_imbalance": self.train_imbalance,
            "data/hash_seconds": self.seconds,
        }


def imbalance(labels: np.ndarray, num_classes: int) -> float:
    """Largest over smallest class count (inf when a class has none)."""
    counts = np.bincount(labels, minlength=num_classes)
    return float(counts.max() / counts.min()) if counts.min() else float("inf")


def check_leakage(splits: Splits, on_leak: str) -> LeakCheck:
    """Hash every image, count the duplicates; warn in one line, or with on_leak=error
    raise before anything trains."""
    start = time.perf_counter()
    refs, items = split_refs(splits)
    hashes = content_hashes(items)
    counts = duplicate_counts(refs, hashes)
    pairs = [p for p in exact_duplicates(refs, hashes) if p.cross_split]
    check = LeakCheck(
        counts["cross_split"],
        counts["within_split"],
        pairs,
        imbalance(splits.train.labels, len(splits.class_names)),
        time.perf_counter() - start,
    )
    if check.cross_split:
        first = pairs[0]
        message = (
            f"{check.cross_split} val/test image(s) duplicate other splits' images, e.g. "
            f"{first.b.id} ({first.b.split}) = {first.a.id} ({first.a.split}): the test "
            "score counts memorised images; stage=inspect lists them all"
        )
        if on_leak == "error":
            raise DataError(f"data leak: {message} (data.on_leak=error)")
        log.warning("data leak: %s", message)
    return check
