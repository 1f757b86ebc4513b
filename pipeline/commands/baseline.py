"""stage=baseline: the trivial models a fine-tuned one has to beat, on its very split.

Fits each of baseline.kinds (majority class, logistic regression on raw pixels, a linear
probe on the frozen backbone's features) on the split a training run with this config uses,
picks C on val, scores test once, and logs one MLflow run per baseline with the test keys
training runs log (test/acc, test/f1_macro, test/loss), tagged stage=baseline and
baseline=<kind>: they sort next to the training runs, and a training run's report.md
compares itself with the best of them (`evaluation/baselines.py`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.commands.frozen_features import frozen_features
from pipeline.commands.train_outputs import test_metrics_of
from pipeline.config import RunConfig
from pipeline.data.decode import load_image
from pipeline.data.sources import ImageSet
from pipeline.data.splits import Splits, run_splits
from pipeline.evaluation.baselines import (
    SPLIT_DIGEST,
    BaselineFit,
    cross_entropy,
    logistic,
    majority,
    pixel_features,
)
from pipeline.models.classifier import build_model
from pipeline.repro import seed_everything
from pipeline.tracking.runs import flatten, start_run
from pipeline.tracking.store import check_store
from pipeline.training.precision import resolve_device

log = logging.getLogger(__name__)
PARTS = ("train", "val", "test")


@dataclass
class BaselineResult:
    kind: str
    run_id: str | None
    metrics: dict[str, float]  # test/acc, test/f1_macro, test/loss, val/acc
    choice: str


def _pixels(cfg: RunConfig, splits: Splits) -> BaselineFit:
    size, grey = cfg.baseline.pixels_size, cfg.baseline.pixels_grey

    def matrix(images: ImageSet) -> np.ndarray:
        # A file is decoded at the smallest JPEG draft scale that still covers `size`.
        return pixel_features(
            [
                item if not isinstance(item, str) else load_image(item, size)
                for item in images.items
            ],
            size,
            grey,
        )

    train, val, test = (getattr(splits, part) for part in PARTS)
    fit = logistic(
        "pixels",
        (matrix(train), train.labels),
        (matrix(val), val.labels),
        matrix(test),
        len(splits.class_names),
        cfg.baseline,
    )
    fit.choice += f", {size}x{size} {'grey' if grey else 'RGB'}"
    return fit


def _probe(cfg: RunConfig, splits: Splits) -> BaselineFit:
    """Logistic regression on the backbone's pooled features (eval transform, as
    train.cache_features computes them), the backbone as the config builds it."""
    device = resolve_device(cfg.train.device)
    model, spec, weights = build_model(cfg.backbone, cfg.head, len(splits.class_names))
    model.to(device).eval()
    # One pass over train+val+test, as stage=inspect reads them: the backbone's weights are
    # hashed and the cache file read and written once, not once per split.
    parts = [getattr(splits, part) for part in PARTS]
    everything = parts[0].concat(parts[1]).concat(parts[2])
    embedded = frozen_features(cfg, model.backbone, spec, everything, device)
    ends = np.cumsum([len(p) for p in parts])[:-1]
    train_x, val_x, test_x = np.split(embedded.features.numpy(), ends)
    train_y, val_y = splits.train.labels, splits.val.labels
    fit = logistic(
        "probe",
        (train_x, train_y),
        (val_x, val_y),
        test_x,
        len(splits.class_names),
        cfg.baseline,
    )
    fit.choice += f", {train_x.shape[1]} features of {cfg.backbone.name}"
    fit.params |= {
        "weights_source": weights.source,
        "baseline.features": train_x.shape[1],
        "features.cached": embedded.from_cache,  # of train+val+test
    }
    return fit


def _fit(kind: str, cfg: RunConfig, splits: Splits) -> BaselineFit:
    if kind == "majority":
        return majority(
            splits.train.labels, splits.val.labels, len(splits.test), len(splits.class_names)
        )
    return _pixels(cfg, splits) if kind == "pixels" else _probe(cfg, splits)


def run_name(cfg: RunConfig, kind: str) -> str:
    data = cfg.data.name if cfg.data.fold is None else f"{cfg.data.name}-fold{cfg.data.fold}"
    return f"baseline/{kind}-{data}-s{cfg.seed}"


def run_baseline(cfg: RunConfig, out_dir: Path) -> list[BaselineResult]:
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    check_store(cfg.tracking)  # a bad tracking.uri fails before the data and the fits
    seed_everything(cfg.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    splits = run_splits(cfg.data, cfg.seed)
    digest = splits.digest()
    log.info("data %s: %s, split %s", cfg.data.name, splits.sizes(), digest)
    # Every fit first: bad input (an unreadable image, an unknown backbone) fails before
    # any run is logged.
    fits = [_fit(kind, cfg, splits) for kind in cfg.baseline.kinds]

    params = {
        **flatten(cfg.to_dict()),
        **{f"data.n_{name}": n for name, n in splits.sizes().items()},
        SPLIT_DIGEST: digest,
    }
    results = []
    for fit in fits:
        test_labels = splits.test.labels
        metrics = {
            "test/loss": cross_entropy(fit.test_probs, test_labels),
            **test_metrics_of(splits.class_names, test_labels, fit.test_probs),
            "val/acc": fit.val_acc,
        }
        tags = {"stage": "baseline", "baseline": fit.kind}
        if fit.kind == "probe":
            tags["backbone"] = cfg.backbone.name
        with start_run(cfg.tracking, tags=tags, name=run_name(cfg, fit.kind)) as run:
            run.log_params({**params, "baseline.kind": fit.kind, **fit.params})
            run.log_metrics(metrics)
        results.append(BaselineResult(fit.kind, run.run_id, metrics, fit.choice))
    print(format_table(cfg, splits, digest, results))
    return results


def format_table(cfg: RunConfig, splits: Splits, digest: str, results: list[BaselineResult]) -> str:
    sizes = " / ".join(f"{name} {n}" for name, n in splits.sizes().items())
    lines = [
        f"baselines on {cfg.data.name} (seed {cfg.seed}, split {digest}: {sizes}); "
        "C chosen on val, test scored once",
        f"{'kind':<10} {'test/acc':>9} {'test/f1_macro':>14} {'test/loss':>10} {'val/acc':>8}"
        "  choice",
    ]
    for r in results:
        m = r.metrics
        lines.append(
            f"{r.kind:<10} {m['test/acc']:>9.4f} {m['test/f1_macro']:>14.4f} "
            f"{m['test/loss']:>10.4f} {m['val/acc']:>8.4f}  {r.choice}"
            + (f"  (run {r.run_id})" if r.run_id else "")
        )
    return "\n".join(lines)
