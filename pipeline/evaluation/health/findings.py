"""What stage=inspect found, in one object: the report, CSVs, grids and metrics read it."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from pipeline.data.health.duplicates import DuplicatePair, ImageRef
from pipeline.data.health.image_stats import ImageStats
from pipeline.evaluation.health.label_issues import LabelIssues


@dataclass
class Findings:
    title: str  # e.g. "folder (hymenoptera_data), seed 42"
    class_names: list[str]
    class_counts: dict[str, dict[str, int]]  # split -> class -> images
    refs: list[ImageRef]  # every image, in split order
    items: list  # its path or array, for the grids
    exact: list[DuplicatePair]
    exact_counts: dict[str, int]  # duplicate_counts: cross_split, within_split
    near: list[DuplicatePair]  # not identical in content; cross-split first
    threshold: float
    closest: float  # the highest cosine of any pair: how near the set came to the threshold
    labels: LabelIssues | None  # None: the label check could not run (see label_note)
    label_note: str
    stats: list[ImageStats]
    flags: list[list[str]]
    seconds: dict[str, float] = field(default_factory=dict)  # part -> wall seconds
    features_cached: int = 0  # of the images' features, read from data.feature_cache

    @property
    def prefix(self) -> str:
        """The folder every file path starts with, left out where paths are shown."""
        paths = [r.id for r in self.refs if os.path.isabs(r.id) or os.sep in r.id]
        if len(paths) != len(self.refs) or not paths:
            return ""
        common = os.path.commonpath(paths)
        return common + os.sep if common else ""

    def short(self, ref: ImageRef) -> str:
        return ref.id.removeprefix(self.prefix)

    def flagged(self) -> list[int]:
        return [i for i, f in enumerate(self.flags) if f]

    def flag_counts(self) -> Counter:
        return Counter(f.split(" ")[0] for flags in self.flags for f in flags)

    def metrics(self) -> dict[str, float]:
        metrics = {
            "inspect/images": len(self.refs),
            "inspect/exact_cross_split": self.exact_counts["cross_split"],
            "inspect/exact_within_split": self.exact_counts["within_split"],
            "inspect/exact_pairs": len(self.exact),
            "inspect/near_pairs": len(self.near),
            "inspect/closest_cosine": self.closest,
            "inspect/near_cross_split_pairs": sum(p.cross_split for p in self.near),
            "inspect/flagged_images": len(self.flagged()),
            **{f"inspect/flag_{k}": v for k, v in self.flag_counts().items()},
            **{f"inspect/seconds_{k}": v for k, v in self.seconds.items()},
        }
        if self.labels is not None:
            metrics["inspect/label_issues"] = len(self.labels.issues)
        return metrics
