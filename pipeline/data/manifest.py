"""`data=csv`: a CSV manifest with `path,label` and an optional `split` column.

Paths are relative to the CSV's folder (absolute paths work too). Labels are class names;
classes are sorted by name, as for image folders. A `split` column (train/val/test) fixes
the split (rows left empty join train; a missing val or test part is carved from train);
a manifest without one is split by the pipeline from the configured fractions.
UTF-8 and UTF-16 with a byte-order mark are read; other encodings stop with the line.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import numpy as np

from pipeline.data.config import SPLITS
from pipeline.data.sources import ImageSet
from pipeline.errors import DataError

MAX_LISTED = 5  # missing files named in the error message


def read_text(path: Path) -> str:
    """The manifest's text: UTF-8, or UTF-16 with a byte-order mark (Excel's "Unicode text").
    A UTF-8 byte-order mark (Excel's "CSV UTF-8") is dropped."""
    data = path.read_bytes()
    utf16 = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    encoding, name = ("utf-16", "UTF-16") if utf16 else ("utf-8-sig", "UTF-8")
    if not utf16 and b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise DataError(
            f"{path} line {line}: NUL bytes, as in UTF-16 without a byte-order mark; "
            "save it as UTF-8"
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        raise DataError(
            f"{path} line {line}: byte 0x{data[exc.start]:02x} is not {name}; save it as UTF-8 "
            "(or UTF-16 with a byte-order mark)"
        ) from exc


def load_csv(path: Path) -> tuple[dict[str, ImageSet], list[tuple[str, str]]]:
    """Returns {'all': set} or {'train': ..., 'val': ..., 'test': ...} and no skipped files."""
    if not path.is_file():
        raise DataError(f"CSV manifest not found: {path}")
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    try:
        columns = [c.strip().lower() for c in reader.fieldnames or []]
        if not {"path", "label"} <= set(columns):
            raise DataError(f"{path} needs a header with path and label columns, got {columns}")
        twice = next((c for i, c in enumerate(columns) if c and c in columns[:i]), None)
        if twice:  # DictReader would keep the last one's values without a word
            raise DataError(f"{path}: column {twice!r} appears twice in the header; keep one")
        rows = [
            {k.strip().lower(): (v or "").strip() for k, v in row.items() if k} for row in reader
        ]
    except csv.Error as exc:  # e.g. a field over csv's size limit, as an unclosed quote makes
        # reader.reader's line_num: DictReader's own lags a line behind on an error
        raise DataError(f"{path} line {reader.reader.line_num}: {exc}") from exc
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
    if not any(s in ("", "train") for s in splits):  # empty cells join train
        raise DataError(f"{path}: the split column names no train rows")
    parts = {}
    for name in SPLITS:
        idx = np.asarray(
            [i for i, s in enumerate(splits) if s == name or (not s and name == "train")]
        )
        if len(idx):
            parts[name] = images.subset(idx)
    return parts, []
