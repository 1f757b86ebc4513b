"""Datasets, stratified splits and loaders.

Images travel as uint8 HWC tensors from the loader workers; conversion to float and
normalisation happen on the training device (see `DeviceNormalize`), which keeps worker
output small and lets a GPU do the arithmetic.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from pipeline.errors import ConfigError, DataError, first_line
from pipeline.repro import epoch_seed, seed_transform

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
# What PIL raises on a file it cannot decode: unknown format, truncated or corrupt data,
# an image too large to be anything but a decompression bomb.
BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


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

    def __post_init__(self) -> None:
        if self.root == "???":  # Hydra's mark for a value the config leaves to the command line
            self.root = None
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


@dataclass
class ImageSet:
    """Images (uint8 HWC arrays or file paths) with integer labels."""

    items: Sequence[np.ndarray | str]
    labels: np.ndarray
    class_names: list[str]
    ids: list[str] | None = None  # stable names for the split manifest; default: the paths

    def __post_init__(self) -> None:
        if self.ids is None:
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

    def manifest_rows(self) -> list[tuple[str, str, str]]:
        """(split, image id, class name) for every image: enough to rebuild the split."""
        return [
            (name, image_id, part.class_names[label])
            for name in SPLITS
            for part in (getattr(self, name),)
            for image_id, label in zip(part.ids, part.labels, strict=True)
        ]


# --- sources -----------------------------------------------------------------


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
    if unknown:  # its images would silently go unscored
        raise DataError(
            f"class folder {root / unknown[0]} has no counterpart in the train split "
            f"(classes: {', '.join(class_names)}); rename or remove it"
        )
    class_names = class_names or found
    if not class_names:
        raise DataError(f"no class folders in {root} (expected {root}/<class>/<image>)")
    items, labels, skipped = [], [], []
    for label, name in enumerate(class_names):
        folder = root / name
        files, broken = walk_files(folder) if folder.is_dir() else ([], [])
        images = [p for p in files if not_an_image(p) is None]
        skipped += broken + [(str(p), not_an_image(p)) for p in files if not_an_image(p)]
        if not images:
            raise DataError(f"class folder has no images: {folder}")
        items += [str(p) for p in images]
        labels += [label] * len(images)
    return ImageSet(items, np.asarray(labels, dtype=np.int64), class_names), skipped


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
        from pipeline.cifar import load_cifar

        train, test = load_cifar(cfg.name, Path(cfg.root or "data").expanduser())
        return presplit({"train": train, "test": test}, cfg, seed, skipped=[])
    if cfg.name == "csv":
        from pipeline.manifest import load_csv

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


class ImageDataset(Dataset):
    """Applies an albumentations transform per sample; yields (uint8 HWC tensor, label)."""

    def __init__(self, images: ImageSet, transform: Callable, decode_size: int | None = None):
        self.images = images
        self.transform = transform
        self.decode_size = decode_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        return self.__getitems__([item])[0]

    def __getitems__(self, items: list) -> list[tuple[torch.Tensor, int]]:
        """One batch (the DataLoader hands a worker whole batches). From an `EpochSampler`
        the items are (index, epoch seed, position), and the batch's augmentations are
        seeded from its first item: the same batch is augmented the same way in whichever
        worker builds it, or in none."""
        if items and isinstance(items[0], tuple):
            _, key, position = items[0]
            seed_transform(self.transform, epoch_seed(key, position))
            items = [item[0] for item in items]
        return [self._sample(index) for index in items]

    def _sample(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.images.items[index]
        image = load_image(item, self.decode_size) if isinstance(item, str) else item
        image = self.transform(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), int(self.images.labels[index])


class EpochSampler(Sampler):
    """A training sampler whose randomness is a function of (seed, epoch) alone.

    Each epoch reseeds `generator` (the one the wrapped sampler shuffles or draws with) and
    yields (index, epoch seed, position); `ImageDataset` seeds each batch's augmentations
    from that. Nothing carries over from epoch to epoch, so a resumed run and a run with
    another `data.num_workers` see the very same batches. Epochs count up from 0 by
    themselves; `set_epoch` (called by `fit`) sets the next one, e.g. on resume.
    """

    def __init__(
        self,
        sampler: Sampler,
        seed: int,
        generator: torch.Generator | None = None,
        *,
        with_seeds: bool = True,  # False: plain indices, for a dataset that does not augment
    ):
        self.sampler, self.seed, self.generator = sampler, seed, generator
        self.with_seeds = with_seeds
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        epoch, key = self.epoch, epoch_seed(self.seed, self.epoch)
        self.epoch = epoch + 1  # the next pass, unless set_epoch says otherwise
        if hasattr(self.sampler, "set_epoch"):  # a DistributedSampler shuffles by its epoch
            self.sampler.set_epoch(epoch)
        if self.generator is not None:
            self.generator.manual_seed(key)
        if not self.with_seeds:
            yield from self.sampler
            return
        for position, index in enumerate(self.sampler):
            yield index, key, position


def default_num_workers() -> int:
    """Leave one core to the training process; a small box is better off without workers."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus - 1)


def _seed_worker(worker_id: int) -> None:
    # Each worker gets a distinct, reproducible seed for the global generators, derived from
    # the loader's base seed. (Augmentations are seeded per batch: see EpochSampler.)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    import random

    random.seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    num_workers: int | None,
    seed: int,
    pin_memory: bool = False,
    sample_weights: np.ndarray | None = None,
    sampler: Sampler | None = None,  # e.g. a DistributedSampler; replaces shuffling
) -> DataLoader:
    """Train: shuffled (or drawn by `sample_weights`, with replacement) and augmented as a
    function of (seed, epoch) through an `EpochSampler`. Eval: in order.
    A weighted sampler under DDP is not sharded: each rank draws its own weighted sample."""
    workers = default_num_workers() if num_workers is None else num_workers
    # What this process draws: a DDP rank's shard, not the whole set.
    drawn = len(sampler) if sampler is not None else len(dataset)
    if train:
        order = torch.Generator()  # reseeded each epoch by EpochSampler
        if sample_weights is not None:
            sampler = WeightedRandomSampler(
                torch.as_tensor(sample_weights, dtype=torch.double),
                num_samples=len(dataset),
                replacement=True,
                generator=order,
            )
        sampler = EpochSampler(
            sampler if sampler is not None else RandomSampler(dataset, generator=order),
            seed,
            order,
            # ImageDataset seeds its augmentations from the items; a wrapper (Subset) would
            # need to pass them on, or all loader workers would draw the same augmentations.
            with_seeds=isinstance(dataset, ImageDataset),
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and drawn > batch_size,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        # Its own generator for the workers' base seed: without one the DataLoader draws it
        # from the global torch RNG, and dropout would depend on how loaders were made.
        generator=torch.Generator().manual_seed(seed),
    )


class DeviceNormalize(torch.nn.Module):
    """uint8 NHWC batch -> normalised float NCHW (channels_last strides), on the device."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        std_t = torch.tensor(std, dtype=torch.float32)
        # (x/255 - mean) / std == x * scale + shift: one fused multiply-add per pixel.
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1), persistent=False)
        shift = -torch.tensor(mean, dtype=torch.float32) / std_t
        self.register_buffer("shift", shift.view(1, -1, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # NHWC storage is NCHW channels_last: no copy
        return torch.addcmul(self.shift, x, self.scale)
