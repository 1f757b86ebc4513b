"""`data=csv`: a CSV manifest with `path,label` and an optional `split` column.

Paths are relative to the CSV's folder (absolute paths work too). Labels are class names;
classes are sorted by name, as for image folders. A `split` column (train/val/test) fixes
the split (rows left empty join train; a missing val or test part is carved from train);
a manifest without one is split by the pipeline from the configured fractions.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.data import SPLITS, ImageSet
from pipeline.errors import DataError

MAX_LISTED = 5  # missing files named in the error message


def load_csv(path: Path) -> tuple[dict[str, ImageSet], list[str]]:
    """Returns {'all': set} or {'train': ..., 'val': ..., 'test': ...} and no skipped files."""
    if not path.is_file():
        raise DataError(f"CSV manifest not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's byte-order mark
        reader = csv.DictReader(f)
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if not {"path", "label"} <= set(columns):
            raise DataError(f"{path} needs a header with path and label columns, got {columns}")
        rows = [
            {k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader
        ]
    if not rows:
        raise DataError(f"CSV manifest has no rows: {path}")

    if any(not row["path"] for row in rows):
        line = next(i for i, row in enumerate(rows) if not row["path"]) + 2
        raise DataError(f"{path} line {line}: empty path")
    base = path.parent
    files = [str(base / row["path"]) for row in rows]  # an absolute path replaces base
    missing = [
        f"{row['path']}" for row, file in zip(rows, files, strict=True) if not Path(file).is_file()
    ]
    if missing:
        listed = ", ".join(missing[:MAX_LISTED])
        more = f" (and {len(missing) - MAX_LISTED} more)" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{len(missing)} file(s) in {path} not found: {listed}{more}")
    if any(not row["label"] for row in rows):
        line = next(i for i, row in enumerate(rows) if not row["label"]) + 2
        raise DataError(f"{path} line {line}: empty label")
    listed_on: dict[str, int] = {}  # resolved file -> the CSV line that first lists it
    for line, file in enumerate(files, start=2):
        resolved = str(Path(file).resolve())
        if resolved in listed_on:  # it could land in train and test both
            raise DataError(
                f"{path} line {line}: {rows[line - 2]['path']} is listed again "
                f"(first on line {listed_on[resolved]}); list each image once"
            )
        listed_on[resolved] = line

    class_names = sorted({row["label"] for row in rows})
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.asarray([index[row["label"]] for row in rows], dtype=np.int64)
    images = ImageSet(files, labels, class_names, [row["path"] for row in rows])

    splits = [row.get("split", "").lower() for row in rows]
    unknown = sorted({s for s in splits if s and s not in SPLITS})
    if unknown:
        raise DataError(f"{path}: split column values must be train, val or test, got {unknown}")
    if not any(splits):
        return {"all": images}, []
    if "train" not in splits:
        raise DataError(f"{path}: the split column names no train rows")
    parts = {}
    for name in SPLITS:
        idx = np.asarray(
            [i for i, s in enumerate(splits) if s == name or (not s and name == "train")]
        )
        if len(idx):
            parts[name] = images.subset(idx)
    return parts, []
