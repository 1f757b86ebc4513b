"""Where one image's loader time goes at 224 px: JPEG decode vs augmentation, one core.

    python benchmarks/decode_breakdown.py ../shared/data/hymenoptera_data --out FILE

Prints JSON: milliseconds per image (mean over all JPEGs in root/train, `--passes` passes) for
  read_rgb          our decode (PIL, draft mode at the 256 px decode size),
  read_rgb_convert  the same plus the `convert("RGB")` copy read_rgb used to make,
  cv2_imdecode      OpenCV's decode of the same bytes (for comparison; not used),
  augment_light     the `augment=light` train transform on the decoded arrays.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's pipeline
from benchmarks.report import emit
from pipeline.data.augment import AugmentConfig, build_train_transform
from pipeline.data.decode import read_rgb

CROP_PCT = 0.875


def ms_per_item(fn: Callable, items: list, passes: int) -> float:
    for item in items[:10]:  # warm the file cache and the code paths
        fn(item)
    tic = time.perf_counter()
    for _ in range(passes):
        for item in items:
            fn(item)
    return round(1000 * (time.perf_counter() - tic) / (passes * len(items)), 3)


def read_rgb_with_convert(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as img:
        img.draft("RGB", (size, size))
        return np.asarray(img.convert("RGB"))


def cv2_decode(path: Path) -> np.ndarray:
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.fromfile(path, np.uint8), flags)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "root", type=Path, nargs="?", default=Path("../shared/data/hymenoptera_data")
    )
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = args.root / "train" if (args.root / "train").is_dir() else args.root
    files = sorted(folder.glob("*/*.jpg"))
    decode = round(args.size / CROP_PCT)
    transform = build_train_transform(AugmentConfig(preset="light"), args.size, CROP_PCT, "bicubic")
    arrays = [read_rgb(str(f), decode) for f in files]
    ms = {
        "read_rgb": ms_per_item(lambda f: read_rgb(str(f), decode), files, args.passes),
        "read_rgb_convert": ms_per_item(
            lambda f: read_rgb_with_convert(f, decode), files, args.passes
        ),
        "cv2_imdecode": ms_per_item(cv2_decode, files, args.passes),
        "augment_light": ms_per_item(lambda a: transform(image=a), arrays, args.passes),
    }
    report = {
        "benchmark": "decode breakdown",
        "folder": str(folder),
        "jpegs": len(files),
        "mean_hw": [round(float(x)) for x in np.mean([a.shape[:2] for a in arrays], axis=0)],
        "img_size": args.size,
        "ms_per_image": ms,
        "decode_share": round(ms["read_rgb"] / (ms["read_rgb"] + ms["augment_light"]), 3),
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
