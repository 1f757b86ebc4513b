"""Exact duplicates by content hash, within a split and across splits."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.data.config import SPLITS
from pipeline.data.splits import Splits

MAX_PAIRS_PER_GROUP = 50  # a file copied 100 times is one finding, not 4,950 pairs


@dataclass(frozen=True)
class ImageRef:
    """One image of the run's splits: where it is (split, index) and what it is."""

    split: str
    index: int
    id: str  # the path, or the source's name for an array
    label: str


@dataclass(frozen=True)
class DuplicatePair:
    a: ImageRef  # the one in the earlier split (train before val before test)
    b: ImageRef
    similarity: float = 1.0  # cosine for near-duplicates; 1 for identical content

    @property
    def cross_split(self) -> bool:
        return self.a.split != self.b.split


def exact_duplicates(refs: Sequence[ImageRef], hashes: Sequence[str]) -> list[DuplicatePair]:
    """Pairs of images with the same content hash, cross-split pairs first."""
    groups: dict[str, list[ImageRef]] = defaultdict(list)
    for ref, digest in zip(refs, hashes, strict=True):
        groups[digest].append(ref)
    pairs = []
    for members in groups.values():
        members.sort(key=lambda r: (SPLITS.index(r.split), r.index))
        combos = itertools.islice(itertools.combinations(members, 2), MAX_PAIRS_PER_GROUP)
        pairs += [DuplicatePair(a, b) for a, b in combos]
    return sorted(pairs, key=lambda p: (not p.cross_split, SPLITS.index(p.b.split), p.b.id))


def duplicate_counts(refs: Sequence[ImageRef], hashes: Sequence[str]) -> dict[str, int]:
    """Images that repeat content seen before them, in split order (train, val, test):
    `cross_split` counts val/test images whose content an earlier split holds (what leaks
    into the scores), `within_split` the extra copies inside one split."""
    per_hash: dict[str, list[str]] = defaultdict(list)
    for ref, digest in sorted(
        zip(refs, hashes, strict=True), key=lambda rh: SPLITS.index(rh[0].split)
    ):
        per_hash[digest].append(ref.split)
    cross = within = 0
    for splits in per_hash.values():
        first = splits[0]
        cross += sum(1 for s in splits if s != first)
        within += sum(1 for s in splits if s == first) - 1
    return {"cross_split": cross, "within_split": within}


def split_refs(splits: Splits) -> tuple[list[ImageRef], list[np.ndarray | str]]:
    """Every image of the run's splits, in split order, and its item (path or array)."""
    refs, items = [], []
    for name in SPLITS:
        part = getattr(splits, name)
        for i, (item, image_id, label) in enumerate(
            zip(part.items, part.ids, part.labels, strict=True)
        ):
            refs.append(ImageRef(name, i, image_id, part.class_names[label]))
            items.append(item)
    return refs, items
