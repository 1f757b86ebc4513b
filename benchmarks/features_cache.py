"""Frozen linear probe on digits: seconds per epoch with and without `train.cache_features`.

Both runs go through the real `train` stage (same config, tracking off) and read the
per-epoch time `fit` records (`epoch_seconds`: one training pass plus validation). The
one-off feature extraction of the cached run is timed separately and reported, as is the
test accuracy of both runs (they should agree: the same head is trained on the same features).

    python benchmarks/features_cache.py [--epochs 3] [--device cpu] [extra Hydra overrides]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from anywhere without installing

import pipeline.commands.train as train_stage  # noqa: E402
from benchmarks.report import emit  # noqa: E402
from pipeline.compose import compose  # noqa: E402
from pipeline.training.precision import resolve_device  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. backbone=resnet18")
    return p.parse_args(argv)


def timed_extraction(record: dict):
    """Wrap the stage's feature extraction (train and val, one call each) to time it
    (benchmark-only instrumentation). image_features returns CPU tensors: a CUDA pass has
    finished when it returns."""
    extract = train_stage.cached_image_features

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = extract(*args, **kwargs)
        record["extract_seconds"] = record.get("extract_seconds", 0.0) + (
            time.perf_counter() - start
        )
        return result

    return wrapper


def run(overrides: list[str], out_dir: Path) -> dict:
    record: dict = {}
    train_stage.cached_image_features = timed_extraction(record)
    start = time.perf_counter()
    result = train_stage.run_train(compose(overrides), out_dir)
    epochs = [m["epoch_seconds"] for m in result.fit.history]
    return {
        "epoch_seconds_median": round(statistics.median(epochs), 4),
        "epoch_seconds": [round(s, 4) for s in epochs],
        "stage_seconds": round(time.perf_counter() - start, 2),
        **{k: round(v, 3) for k, v in record.items()},
        "test_acc": round(result.test_metrics["test/acc"], 4),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    common = [
        "data=digits",
        "finetune=frozen",
        "augment=none",
        f"train.epochs={args.epochs}",
        f"train.device={args.device}",
        "train.early_stopping.enabled=false",
        "train.progress=false",
        "tracking.enabled=false",
        "data.feature_cache=null",  # the extraction itself, every time; nothing written
        *args.overrides,
    ]
    with tempfile.TemporaryDirectory() as tmp:
        uncached = run(common, Path(tmp) / "uncached")
        cached = run([*common, "train.cache_features=true"], Path(tmp) / "cached")
    cfg = compose(common)
    report = {
        "benchmark": "features_cache",
        "device": str(resolve_device(cfg.train.device)),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "backbone": cfg.backbone.name,
        "img_size": cfg.backbone.img_size,
        "epochs": args.epochs,
        "overrides": common,
        "uncached": uncached,
        "cached": cached,
        "speedup_per_epoch": round(
            uncached["epoch_seconds_median"] / cached["epoch_seconds_median"], 1
        ),
    }
    return emit(report, args.out)


if __name__ == "__main__":
    main()
