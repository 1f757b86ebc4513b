"""Where images come from: `ImageSet`, the embedded digits, class folders, files to predict on."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """Images (uint8 HWC arrays or file paths) with integer labels."""

    items: Sequence[np.ndarray | str]
    labels: np.ndarray
    class_names: list[str]
    ids: list[str] = field(default_factory=list)  # names for the split manifest; empty: the paths

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = [
                item if isinstance(item, str) else str(i) for i, item in enumerate(self.items)
            ]

    def subset(self, indices: np.ndarray) -> ImageSet:
        return ImageSet(
            [self.items[i] for i in indices],
            self.labels[indices],
            self.class_names,
            [self.ids[i] for i in indices],
        )

    def __len__(self) -> int:
        return len(self.labels)

    def concat(self, other: ImageSet) -> ImageSet:
        return ImageSet(
            [*self.items, *other.items],
            np.concatenate([self.labels, other.labels]),
            self.class_names,
            [*self.ids, *other.ids],
        )

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts, strict=True)}


def load_digits() -> ImageSet:
    """scikit-learn's 1,797 8x8 grey digits as uint8 RGB images (ink bright on black)."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    grey = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)  # values are 0..16
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    ids = [f"sklearn-digits/{i}" for i in range(len(rgb))]
    return ImageSet(list(rgb), bunch.target.astype(np.int64), [str(c) for c in range(10)], ids)


def walk_files(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files under `folder`, sorted, and (path, reason) for links that lead nowhere.

    Symlinks to files and folders are followed (each folder once, so a link loop ends).
    Hidden files and folders are left out: `.ipynb_checkpoints` holds copies of images,
    and macOS's `._*` files are metadata with an image's extension.
    """
    files, broken, seen = [], [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # reached again through a link: listed once already
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for name in filenames:
            path = Path(dirpath, name)
            if name.startswith("."):
                continue
            if path.is_file():
                files.append(path)
            elif path.is_symlink():
                broken.append((str(path), f"broken link to {os.readlink(path)}"))
    return sorted(files), sorted(broken)


def not_an_image(path: Path) -> str | None:
    """Why a file is no image to decode, from its name; None for an image."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return None
    return f"not an image ({path.suffix or 'no extension'})"


def scan_class_folders(
    root: Path, class_names: list[str] | None = None
) -> tuple[ImageSet, list[tuple[str, str]]]:
    """`root/<class>/*` -> ImageSet of paths. Returns the set and (file, reason) for the files
    left out. With `class_names` (train's, for val/ and test/), any other folder is an error."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [name for name in found if class_names and name not in class_names]
    if class_names and unknown:  # its images would silently go unscored
        raise DataError(
            f"class folder {root / unknown[0]} has no counterpart in the train split "
            f"(classes: {', '.join(class_names)}); rename or remove it"
        )
    class_names = class_names or found
    if not class_names:
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    items: list[str] = []
    labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for label, name in enumerate(class_names):
        folder = root / name
        files, broken = walk_files(folder) if folder.is_dir() else ([], [])
        images = [p for p in files if not_an_image(p) is None]
        skipped += broken + [(str(p), reason) for p in files if (reason := not_an_image(p))]
        if not images:
            raise DataError(f"class folder has no images: {folder}")
        items += [str(p) for p in images]
        labels += [label] * len(images)
    return ImageSet(items, np.asarray(labels, dtype=np.int64), class_names), skipped


def list_images(path: str | Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Images under a file or folder (recursive, sorted), and (file, reason) for the rest.
    A folder is listed as training scans one: hidden files and folders left out, links
    followed, broken ones reported."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"input not found: {path}")
    files, broken = ([path], []) if path.is_file() else walk_files(path)
    images = [file for file in files if not_an_image(file) is None]
    skipped = [(Path(link), reason) for link, reason in broken]
    skipped += [(file, reason) for file in files if (reason := not_an_image(file))]
    return images, skipped
