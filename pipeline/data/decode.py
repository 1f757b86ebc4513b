"""Decoding images, and what to do with the ones that do not decode; the in-memory image cache."""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pipeline.data.sources import ImageSet
from pipeline.errors import DataError, first_line

log = logging.getLogger(__name__)


# What PIL raises on a file it cannot decode: unknown format, truncated or corrupt data,
# an image too large to be anything but a decompression bomb.
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def _draft(img: Image.Image, min_size: int | None) -> None:
    """JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale while both sides stay >= min_size
    (sets img.size now, before any decoding)."""
    if min_size and img.format == "JPEG":
        img.draft("RGB", (min_size, min_size))


@contextmanager
def open_image(path: str, *, report_large: bool = False) -> Iterator[Image.Image]:
    """Image.open without PIL's raw DecompressionBombWarning (a bare pixel count, once per
    process and loader worker): with `report_large` a large image gets one line naming it.
    Past twice the limit PIL raises DecompressionBombError, which makes a bad image."""
    # catch_warnings swaps the process's filter list: the scan's threads may restore each
    # other's copy, but every copy differs only by this same "ignore".
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            limit = Image.MAX_IMAGE_PIXELS
            if report_large and limit and img.width * img.height > limit:
                size = f"{img.width}x{img.height}"
                log.warning(
                    "large image %s: %s pixels, over PIL's limit of %d; a resized copy would "
                    "load faster",
                    path,
                    size,
                    limit,
                )
            yield img


def bad_image_reason(exc: Exception) -> str:
    """What skipped.txt and messages say about a file that did not decode."""
    size = re.search(r"\((\d+) pixels\)", str(exc))  # PIL: "Image size (N pixels) exceeds ..."
    if isinstance(exc, Image.DecompressionBombError) and size and Image.MAX_IMAGE_PIXELS:
        limit = 2 * Image.MAX_IMAGE_PIXELS
        return f"unreadable: too large ({size[1]} pixels; PIL stops at {limit})"
    return f"unreadable: {first_line(exc)}"


def read_rgb(path: str, min_size: int | None = None, *, report_large: bool = False) -> np.ndarray:
    """Decode any PIL-readable image to uint8 RGB (grey, RGBA, palette, 16-bit, float, GIF frame 0),
    turned upright as its EXIF orientation says (phone photos are stored sideways).

    `min_size` lets JPEG decoding downscale by 2/4/8 inside libjpeg (PIL's draft mode),
    which is several times faster than decoding full size and resizing afterwards.
    Every decode of a file goes through here: training, the image cache, evaluate, predict.
    """
    with open_image(path, report_large=report_large) as img:
        _draft(img, min_size)
        # In place: no copy for the usual image without an orientation tag.
        ImageOps.exif_transpose(img, in_place=True)
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # F: float, often in [0, 1]
            arr = np.asarray(img, dtype=np.float32)
            arr = np.clip(np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0), 0, None)
            scale = 255.0 / max(float(arr.max()), 1.0)
            return np.repeat((arr * scale).astype(np.uint8)[..., None], 3, axis=-1)
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        # convert() on an image that is already RGB would copy it once more: ~9 % of the
        # decode time of a 500x375 JPEG (benchmarks/decode_breakdown.py).
        return np.asarray(img)


def check_decodes(path: str) -> None:
    """Decode the whole file, so truncated data fails now and not mid-epoch.

    `Image.verify()` reads only headers and passes a truncated JPEG; a full decode catches
    it. JPEGs decode in draft mode at 1/8 scale, which still reads every byte but costs
    about a millisecond per photo.
    """
    with open_image(path, report_large=True) as img:
        if img.format == "JPEG":
            img.draft("RGB", (1, 1))
        img.load()


def _decode_error(item: np.ndarray | str) -> str | None:
    """Why the file does not decode; None when it does (or is an array already)."""
    if not isinstance(item, str):
        return None
    try:
        check_decodes(item)
    except BAD_IMAGE_ERRORS as exc:
        return bad_image_reason(exc)
    return None


def drop_unreadable(images: ImageSet, on_bad_image: str) -> tuple[ImageSet, list[tuple[str, str]]]:
    """Decode every file once: with on_bad_image=skip bad ones are left out and returned
    with their reason. A class left without images stops the run, as an empty folder does."""
    # PIL releases the GIL while decoding, so threads spread the check over the cores.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        reasons = list(pool.map(_decode_error, images.items, chunksize=64))
    keep, bad = [], []
    for i, (item, reason) in enumerate(zip(images.items, reasons, strict=True)):
        if reason is None:
            keep.append(i)
        elif on_bad_image == "error":
            raise DataError(f"unreadable image: {item} ({reason.removeprefix('unreadable: ')})")
        else:
            assert isinstance(item, str)  # only files fail to decode, arrays are decoded already
            log.warning("skipping %s (%s)", item, reason)
            bad.append((item, reason))
    if bad and not keep:
        raise DataError(f"none of {len(bad)} image(s) can be decoded, e.g. {bad[0][0]}")
    kept = images.subset(np.asarray(keep, dtype=np.int64))
    _check_no_class_emptied(images, kept)
    if bad:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(bad), bad[0][0])
    return kept, bad


def _check_no_class_emptied(before: ImageSet, after: ImageSet) -> None:
    """A class whose every image was unreadable: training on would leave it unlearnt."""
    counts = after.class_counts()
    for name, n in before.class_counts().items():
        if n and not counts[name]:
            label = before.class_names.index(name)
            example = next(
                i for i, y in zip(before.items, before.labels, strict=True) if y == label
            )
            raise DataError(
                f"no readable images of class {name!r}: all {n} are unreadable, e.g. {example}"
            )


def _decoded_bytes(path: str, min_size: int | None) -> int:
    """What read_rgb(path, min_size) will hold, from the header alone (draft sets the size)."""
    with open_image(path) as img:
        _draft(img, min_size)  # the very scale read_rgb will decode at
        return img.width * img.height * 3


def available_memory_bytes() -> int | None:
    """Linux's MemAvailable (free memory plus the page cache it can drop); None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_image(path: str, decode_size: int | None) -> np.ndarray:
    try:
        return read_rgb(path, decode_size)
    except BAD_IMAGE_ERRORS as exc:  # changed on disk after the scan
        raise DataError(f"cannot decode image {path}: {bad_image_reason(exc)}") from exc


def cache_in_memory(
    images: ImageSet, decode_size: int | None, available_bytes: int | None = None
) -> ImageSet:
    """The same images with every file decoded once into a uint8 array (ids keep the paths).

    The arrays are exactly what ImageDataset decodes each epoch (same draft scale), so
    training sees the same pixels, minus the decoding. Loader workers forked afterwards share
    them copy-on-write. Refuses, before decoding, when they would need more than half of the
    available memory.
    """
    paths = [item for item in images.items if isinstance(item, str)]
    if not paths:
        return images
    # Threads: PIL releases the GIL while it reads headers and decodes.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        needed = sum(pool.map(lambda p: _decoded_bytes(p, decode_size), paths, chunksize=64))
        available = available_memory_bytes() if available_bytes is None else available_bytes
        if available is not None and needed > available // 2:
            raise DataError(
                f"data.cache_images=true needs {needed / 2**30:.1f} GiB for {len(paths)} images "
                f"but {available / 2**30:.1f} GiB is free: set data.cache_images=false"
            )
        arrays = iter(pool.map(lambda p: load_image(p, decode_size), paths, chunksize=16))
        items = [next(arrays) if isinstance(item, str) else item for item in images.items]
    log.info("cached %d decoded images in memory (%.0f MiB)", len(paths), needed / 2**20)
    return ImageSet(items, images.labels, images.class_names, images.ids)


def read_images(paths: list[Path], decode_size: int | None) -> tuple[list, list]:
    """(path, uint8 RGB array) for the readable ones, and (path, reason) for the others."""
    good, bad = [], []
    for path in paths:
        try:
            good.append((path, read_rgb(str(path), decode_size, report_large=True)))
        except BAD_IMAGE_ERRORS as exc:
            bad.append((path, bad_image_reason(exc)))
        except Exception as exc:  # PIL raises many types for a broken file
            bad.append((path, f"unreadable ({type(exc).__name__})"))
    return good, bad
