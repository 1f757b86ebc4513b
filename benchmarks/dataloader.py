"""Decode + augment throughput at 224 px: our loader against timm's, same files, same run.

    python benchmarks/dataloader.py ../shared/data/hymenoptera_data --workers 0 1 2

Prints JSON: images/s per loader and num_workers, over the same files (root/train when
there is one; timm's folder reader skips the one GIF in ants/bees, ours converts it). Both
do comparable work per image: decode, random-resized-crop to 224 (bicubic), horizontal
flip, brightness/contrast jitter with probability 0.5, and normalisation to float on the
"device" (the CPU here). Ours: PIL draft-mode decode (libjpeg downscales by 2/4/8 while
decoding when the photo is large enough), albumentations on uint8 numpy, uint8 tensors out
of the workers, `DeviceNormalize` in the main process. timm's: `create_dataset` +
`create_loader` (PIL decode at full size, torchvision ops) with its prefetcher, which also
ships uint8 out of the workers and normalises on the device. `pipeline_cached` is ours with
`data.cache_images=true`: files decoded once up front (not timed), then only augmentation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pipeline
from benchmarks.report import emit
from pipeline.data.augment import AugmentConfig, build_train_transform
from pipeline.data.decode import cache_in_memory
from pipeline.data.loader import DeviceNormalize, ImageDataset, build_loader, default_num_workers
from pipeline.data.sources import scan_class_folders

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP_PCT = 0.875


def image_folder(root: Path) -> Path:
    """The folder both loaders read: root/train when there is one (timm reads one split)."""
    return root / "train" if (root / "train").is_dir() else root


def time_loader(loader, normalize, passes: int) -> dict[str, float]:
    """One untimed pass (worker start-up, file cache), then `passes` timed ones."""
    for images, _ in loader:
        normalize(images)
    seen, tic = 0, time.perf_counter()
    for _ in range(passes):
        for images, _ in loader:
            x = normalize(images)
            seen += x.shape[0]
    seconds = time.perf_counter() - tic
    return {"images_per_s": round(seen / seconds, 1), "images": seen, "seconds": round(seconds, 2)}


def ours(
    root: Path,
    size: int,
    batch_size: int,
    workers: int,
    passes: int,
    draft: bool = True,
    cache: bool = False,
) -> dict:
    transform = build_train_transform(AugmentConfig(preset="light"), size, CROP_PCT, "bicubic")
    images, _ = scan_class_folders(image_folder(root))
    decode_size = round(size / CROP_PCT) if draft else None
    if cache:  # data.cache_images=true: decoded once, before the loader (not timed)
        images = cache_in_memory(images, decode_size)
    dataset = ImageDataset(images, transform, decode_size=decode_size)
    loader = build_loader(dataset, batch_size, train=True, num_workers=workers, seed=0)
    normalize = DeviceNormalize(MEAN, STD)
    result = time_loader(loader, normalize, passes)
    del loader
    return result


def timm_loader(root: Path, size: int, batch_size: int, workers: int, passes: int) -> dict:
    from timm.data import create_dataset, create_loader

    dataset = create_dataset("", root=str(image_folder(root)), is_training=True)
    loader = create_loader(
        dataset,
        input_size=(3, size, size),
        batch_size=batch_size,
        is_training=True,
        interpolation="bicubic",
        crop_pct=CROP_PCT,
        color_jitter=(0.2, 0.2, 0.0),  # brightness, contrast: as our light preset
        color_jitter_prob=0.5,
        mean=MEAN,
        std=STD,
        num_workers=workers,
        device=torch.device("cpu"),
        use_prefetcher=True,  # uint8 out of the workers, normalised on the device, like ours
        persistent_workers=workers > 0,
    )
    result = time_loader(loader, lambda x: x, passes)  # the prefetcher already normalised
    del loader
    return result


LOADERS = {
    "pipeline": ours,
    "pipeline_no_draft": partial(ours, draft=False),  # what draft decoding buys
    "pipeline_cached": partial(ours, cache=True),  # data.cache_images=true
    "timm": timm_loader,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "root", type=Path, nargs="?", default=Path("../shared/data/hymenoptera_data")
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--loaders", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--passes", type=int, default=2, help="timed passes over all images")
    parser.add_argument(
        "--repeats", type=int, default=1, help="interleaved runs of each row; the median counts"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the main process")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    # Interleave the rows (a, b, c, a, b, c, ...) so drift on a shared machine hits all alike.
    runs: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeats):
        for workers in args.workers:
            for name in args.loaders:
                row = LOADERS[name](args.root, args.size, args.batch_size, workers, args.passes)
                runs.setdefault((name, workers), []).append(row)
                print(json.dumps({"loader": name, "num_workers": workers, **row}), file=sys.stderr)
    results = []
    for (name, workers), rows in runs.items():
        rates = [row["images_per_s"] for row in rows]
        results.append(
            {
                "loader": name,
                "num_workers": workers,
                "images_per_s": statistics.median(rates),
                "runs_images_per_s": rates,
            }
        )
    import timm

    report = {
        "benchmark": "dataloader decode+augment",
        "folder": str(image_folder(args.root)),
        "images": len(scan_class_folders(image_folder(args.root))[0]),
        "img_size": args.size,
        "batch_size": args.batch_size,
        "passes": args.passes,
        "repeats": args.repeats,
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "default_num_workers": default_num_workers(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "results": results,
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
