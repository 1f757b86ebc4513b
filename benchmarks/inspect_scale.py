"""stage=inspect at scale: seconds per part on generated image folders, projected to 1M.

Writes `--sizes` folders of random 64 px PNG scenes (10 classes) to a temporary directory,
runs stage=inspect's checks on each (`pipeline.commands.inspect.inspect_splits`: the stage
less its MLflow run and files) and reports each part's wall seconds. The projection to
`--project` images is linear for hashing, image statistics, embedding and the label probe,
and quadratic for the near-duplicate search (every pair, a block of rows at a time):
t(N) = t(n) * (N/n)^2 from the largest measured size.

    python benchmarks/inspect_scale.py --sizes 2000 20000 [--img-size 64] [--out FILE]
        [--warm] [extra Hydra overrides, e.g. train.device=cuda]

The features go to a feature cache (`data.feature_cache`) in the temporary directory, empty
at first; `--warm` inspects each folder a second time, as a user rerunning stage=inspect
would, and reports those seconds too (`warm_seconds`: the embedding part read from the cache).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

from benchmarks.report import emit  # noqa: E402
from pipeline.commands.inspect import inspect_splits  # noqa: E402
from pipeline.compose import compose  # noqa: E402
from pipeline.data.splits import run_splits  # noqa: E402

QUADRATIC = {"near_dup_search"}
CLASSES = 10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--img-size", type=int, default=64, help="side of the generated PNGs")
    p.add_argument("--project", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--warm", action="store_true", help="inspect each folder twice")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    return p.parse_args(argv)


def write_folder(root: Path, n: int, size: int, seed: int = 0) -> None:
    """n random scenes: a colour per class plus blocks and grain, so no two are alike."""
    rng = np.random.default_rng(seed)
    for c in range(CLASSES):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (CLASSES, 3))
    for i in range(n):
        c = i % CLASSES
        image = np.empty((size, size, 3), np.uint8)
        image[:] = base[c]
        for _ in range(3):
            y, x = rng.integers(0, size - 8, 2)
            h, w = rng.integers(4, size // 2, 2)
            image[y : y + h, x : x + w] = rng.integers(0, 256, 3)
        noise = rng.integers(-16, 16, image.shape)
        image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"class{c}" / f"{i}.png")


def measure(root: Path, overrides: list[str]) -> dict[str, float]:
    cfg = compose(["data=folder", f"data.root={root}", "tracking.enabled=false", *overrides])
    splits = run_splits(cfg.data, cfg.seed)
    start = time.perf_counter()
    findings = inspect_splits(cfg, splits)
    return {**findings.seconds, "total": time.perf_counter() - start}


def project(seconds: dict[str, float], n: int, target: int) -> dict[str, float]:
    out = {}
    for part, t in seconds.items():
        if part == "total":
            continue
        out[part] = t * (target / n) ** (2 if part in QUADRATIC else 1)
    out["total"] = sum(out.values())
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [f"train.threads={args.threads}", "data.num_workers=0", *args.overrides]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = [f"data.feature_cache={Path(tmp) / 'features'}"]  # never .cache/ in the cwd
        for n in args.sizes:
            root = Path(tmp) / str(n)
            start = time.perf_counter()
            write_folder(root, n, args.img_size)
            generate = time.perf_counter() - start
            seconds = measure(root, [*overrides, *cache])
            results[str(n)] = {
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "images_per_s": {
                    k: round(n / v, 1) for k, v in seconds.items() if v > 0 and k not in QUADRATIC
                },
                "generate_seconds": round(generate, 1),
            }
            if args.warm:
                warm = measure(root, [*overrides, *cache])
                results[str(n)]["warm_seconds"] = {k: round(v, 3) for k, v in warm.items()}
    largest = max(args.sizes)
    projected = project(results[str(largest)]["seconds"], largest, args.project)
    return emit(
        {
            "benchmark": "inspect_scale",
            "sizes": args.sizes,
            "img_size": args.img_size,
            "overrides": overrides,
            "results": results,
            f"projected_{args.project}": {k: round(v) for k, v in projected.items()},
            "projection": "linear in N, near_dup_search quadratic (N^2 / block rows)",
            "machine": {
                "cpus": os.cpu_count(),
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "python": platform.python_version(),
                "torch": torch.__version__,
                "loadavg": os.getloadavg(),
            },
        },
        args.out,
    )


if __name__ == "__main__":
    main()
