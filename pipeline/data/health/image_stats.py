"""Per-image statistics (CleanVision-style, written small): size, aspect, mode, format,
frames, brightness and sharpness, and the flags drawn from them."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from pipeline.data.decode import open_image

STATS_SIDE = 256  # brightness and sharpness on a copy this size: comparable across sizes


@dataclass(frozen=True)
class ImageStats:
    width: int
    height: int
    mode: str  # PIL's: RGB, L (grey), RGBA, P (palette), ...; arrays: RGB or L (equal channels)
    format: str  # JPEG, PNG, GIF, ...; "array" for embedded sources
    frames: int  # > 1: an animated GIF/WebP, of which training sees frame 0
    brightness: float  # mean grey level, 0..255
    sharpness: float  # variance of the Laplacian of the grey image: low is blurred (or flat)

    @property
    def aspect(self) -> float:
        return self.width / self.height


def _grey_stats(grey: np.ndarray) -> tuple[float, float]:
    scale = STATS_SIDE / max(grey.shape)
    if scale < 1:
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    laplacian = cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F)
    return float(grey.mean()), float(laplacian.var())


def image_stats(item: np.ndarray | str) -> ImageStats:
    if not isinstance(item, str):
        grey_only = item.ndim == 2 or bool((item == item[..., :1]).all())
        grey = (
            item if item.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(item), cv2.COLOR_RGB2GRAY)
        )
        h, w = item.shape[:2]
        return ImageStats(w, h, "L" if grey_only else "RGB", "array", 1, *_grey_stats(grey))
    with open_image(item) as img:
        width, height, mode = img.width, img.height, img.mode
        fmt, frames = img.format or "?", getattr(img, "n_frames", 1)
        if img.format == "JPEG":
            img.draft("L", (STATS_SIDE, STATS_SIDE))  # decode at 1/2..1/8 scale: fast
        img.thumbnail((STATS_SIDE, STATS_SIDE), Image.Resampling.BILINEAR)
        grey = np.asarray(img.convert("L"))
    return ImageStats(width, height, mode, fmt, frames, *_grey_stats(grey))


def stats_of(items: Sequence[np.ndarray | str], workers: int | None = None) -> list[ImageStats]:
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL and cv2 release the GIL
        return list(pool.map(image_stats, items, chunksize=32))


def flags_of(
    stats: ImageStats, common: ImageStats, min_side: int, dark: float, blur: float
) -> list[str]:
    """What is odd about one image; [] for an ordinary one. `common` holds the data set's
    most common mode and format: a grey or palette image among RGB photos is odd, a grey
    digit among grey digits is not."""
    flags = []
    if min(stats.width, stats.height) < min_side:
        flags.append("small")
    if stats.brightness < dark:
        flags.append("dark")
    if stats.sharpness < blur:
        flags.append("blurred")
    if stats.mode != common.mode:
        flags.append(f"mode {stats.mode}")
    if stats.format != common.format:
        flags.append(f"format {stats.format}")
    if stats.frames > 1:
        flags.append(f"animated ({stats.frames} frames)")
    return flags


def most_common(stats: Sequence[ImageStats]) -> ImageStats:
    """An ImageStats holding the most common mode and format (the other fields unused)."""
    modes = Counter(s.mode for s in stats)
    formats = Counter(s.format for s in stats)
    return ImageStats(0, 0, modes.most_common(1)[0][0], formats.most_common(1)[0][0], 1, 0, 0)
